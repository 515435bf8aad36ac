"""``botkit redteam``: run the probe suites against the configured bot in this process, or a running one (``--live``)."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from botkit import NO_LORA, BotkitError, ConfigError, ControlError, NoRunningBot
from botkit.ops import (
    Context,
    ProbeSuite,
    config_option,
    control_request,
    control_socket_path,
    fail,
    load_bot,
    probe_suites,
)

from . import report as reports
from .runner import InProcessTarget, LiveTarget, Run, Target
from .scoring import CHECKS, plugin_check
from .suites import Probe, read_suite


@click.command()
@config_option
@click.option(
    "--suite", "suite_names", multiple=True, metavar="NAME", help="run this suite (repeat; default: all)"
)
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="PATH",
    help="also run the probes of this JSON Lines file, as a suite named after it (repeat)",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="run the first N probes of each suite"
)
@click.option(
    "--live", is_flag=True, help="probe the bot running with this config, through its control socket"
)
@click.option(
    "--lora",
    metavar="ADAPTER",
    help="answer with this LoRA adapter: a GGUF file, a name in the backend's loras, or 'none' (not with --live)",
)
@click.option(
    "--baseline",
    is_flag=True,
    help="run the probes with the base model (no LoRA adapter) first, and report both (not with --live)",
)
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=4, show_default=True, help="probes at a time"
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="--live: seconds one probe may take",
)
@click.option(
    "--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), help="write the report as JSON"
)
@click.option(
    "--markdown",
    "markdown_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="write the report as Markdown",
)
@click.option(
    "--fail-under",
    "thresholds",
    multiple=True,
    metavar="[SUITE=]RATE",
    help="exit 1 when a suite's pass rate (0 to 1) is under RATE (repeat)",
)
@click.option(
    "--compare",
    "compare_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="print the difference from an earlier --json report",
)
@click.option("--list", "list_only", is_flag=True, help="list the suites and stop")
@click.pass_obj
def redteam(
    ctx: Context,
    suite_names: tuple[str, ...],
    files: tuple[Path, ...],
    limit: int | None,
    live: bool,
    lora: str | None,
    baseline: bool,
    concurrency: int,
    timeout: float,
    json_path: Path | None,
    markdown_path: Path | None,
    thresholds: tuple[str, ...],
    compare_path: Path | None,
    list_only: bool,
) -> None:
    """Probe the bot as users reach it: system-prompt extraction, injection, leaks, PII, pings, toxicity, bias.

    Without --live the whole pipeline runs here (moderation, mentions, memory, the
    configured backend and LoRA adapter) on a throwaway database. See docs/safety.md.
    """
    if live and (lora is not None or baseline):
        raise click.UsageError(
            "--lora and --baseline switch the adapter of a bot in this process; not with --live"
        )
    try:
        settings = ctx.settings()
        limits = [reports.parse_threshold(text) for text in thresholds]
        old = reports.load(compare_path) if compare_path is not None else None
        if live:
            report = asyncio.run(
                run_live(settings, suite_names, files, limit, concurrency, timeout, list_only)
            )
        else:
            adapters = Adapters(lora, baseline)
            report = asyncio.run(
                run_here(settings, suite_names, files, limit, concurrency, list_only, adapters)
            )
    except BotkitError as error:
        fail(error)
    if report is None:  # --list
        return
    text = reports.markdown(report)
    try:
        if json_path is not None:
            json_path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        if markdown_path is not None:
            markdown_path.write_text(text, encoding="utf-8")
    except OSError as error:
        fail(reports.ReportError(f"cannot write the report: {error}"))
    click.echo(text, nl=False)
    if old is not None:
        click.echo("")
        click.echo(reports.compare(old, report), nl=False)
    problems = reports.below(report, limits)
    for problem in problems:
        click.echo(f"botkit redteam: {problem}", err=True)
    if problems:
        sys.exit(1)


def choose(
    registered: Mapping[str, ProbeSuite], names: Sequence[str], files: Sequence[Path], limit: int | None
) -> tuple[list[Probe], dict[str, Any], dict[str, str]]:
    """The probes to run (each file read and checked), the suites' own scorers, and the descriptions."""
    unknown = [name for name in names if name not in registered]
    if unknown:
        known = ", ".join(sorted(registered)) or "none"
        raise ConfigError(f"--suite {unknown[0]}: no such suite; the suites are: {known}")
    if names:
        chosen = [registered[name] for name in dict.fromkeys(names)]
    else:  # every suite, unless only files were named
        chosen = [] if files else [registered[name] for name in sorted(registered)]
    probes: list[Probe] = []
    scorers: dict[str, Any] = {}
    descriptions: dict[str, str] = {}
    for suite in chosen:
        probes += read_suite(suite.name, suite.path, kinds_of(suite))[:limit]
        scorers[suite.name] = dict(suite.scorers)
        descriptions[suite.name] = suite.description
    for path in files:
        name = path.stem
        if name in descriptions:
            raise ConfigError(f"--file {path}: a suite named {name!r} runs already; rename the file")
        probes += read_suite(name, path, CHECKS)[:limit]
        descriptions[name] = f"from {path}"
    return probes, scorers, descriptions


def kinds_of(suite: ProbeSuite) -> dict[str, Any]:
    """The score kinds a probe of ``suite`` may name: the built-in ones and its plugin's scorers."""
    return {**CHECKS, **{kind: plugin_check for kind in suite.scorers}}


def listing(registered: Mapping[str, ProbeSuite]) -> None:
    for name, suite in sorted(registered.items()):
        count = len(read_suite(name, suite.path, kinds_of(suite)))
        click.echo(f"{name}: {count} probes, from plugin {suite.plugin}. {suite.description}")


class Adapters:
    """Which LoRA adapter answers (``--lora``; unset: the configured one) and whether the base model runs too."""

    def __init__(self, lora: str | None = None, baseline: bool = False) -> None:
        self.switch = lora is not None
        self.lora = None if lora == NO_LORA else lora
        self.baseline = baseline


async def execute(
    target: Target,
    probes: list[Probe],
    scorers: dict[str, Any],
    descriptions: dict[str, str],
    concurrency: int,
    mode: str,
) -> dict[str, Any]:
    run = Run(target, scorers)
    results = await run.all(probes, concurrency)
    date = datetime.now(UTC).isoformat(timespec="seconds")
    return reports.build(
        results, date=date, mode=mode, backend=run.backend, run_id=run.id, descriptions=descriptions
    )


async def run_here(
    settings: Any,
    names: Sequence[str],
    files: Sequence[Path],
    limit: int | None,
    concurrency: int,
    list_only: bool,
    adapters: Adapters | None = None,
) -> dict[str, Any] | None:
    adapters = adapters or Adapters()
    with tempfile.TemporaryDirectory(prefix="botkit-redteam-") as folder:
        # The bot as configured, on a database of its own that goes away with the run: probes
        # never reach the real one, and a cluster's locks and the metrics port are left alone.
        isolated = settings.model_copy(
            update={
                "storage": settings.storage.model_copy(
                    update={"data_dir": Path(folder), "url": None, "auto_upgrade": True}
                ),
                "cluster": settings.cluster.model_copy(update={"enabled": False}),
                "metrics": settings.metrics.model_copy(update={"enabled": False}),
            }
        )
        bot = load_bot(isolated)
        registered = probe_suites(bot)
        if list_only:
            listing(registered)
            return None
        probes, scorers, descriptions = choose(registered, names, files, limit)
        await bot.start()
        try:
            target = InProcessTarget(bot)
            base = None
            if adapters.baseline:
                # The default backend's adapter, to come back to after the base model's run.
                configured = next(b.lora for b in bot.status().backends if b.name == "default")
                await bot.switch_lora("default", None)
                base = await execute(target, probes, scorers, descriptions, concurrency, "in-process")
                await bot.switch_lora("default", configured)
            if adapters.switch:
                await bot.switch_lora("default", adapters.lora)
            report = await execute(target, probes, scorers, descriptions, concurrency, "in-process")
        finally:
            await bot.stop()
    if base is not None:
        report["baseline"] = reports.summary(base)
    return report


async def run_live(
    settings: Any,
    names: Sequence[str],
    files: Sequence[Path],
    limit: int | None,
    concurrency: int,
    timeout: float,
    list_only: bool,
) -> dict[str, Any] | None:
    registered = probe_suites(load_bot(settings))
    if list_only:
        listing(registered)
        return None
    probes, scorers, descriptions = choose(registered, names, files, limit)
    path = control_socket_path(settings)
    if path is None:
        raise ConfigError(
            f'{settings.source_name}: [bot] control_socket is "off": --live reaches a running bot only '
            "through it; run without --live to probe the bot in this process"
        )
    try:
        await control_request(path, {"command": "status"}, timeout=10)
    except NoRunningBot:
        raise ControlError(
            f"--live: no running bot answers at {path}: start it with `botkit run` on this config "
            "(or `botkit chat`), or run without --live to probe the bot in this process"
        ) from None
    return await execute(LiveTarget(path, timeout), probes, scorers, descriptions, concurrency, "live")
