"""``botkit export`` and the ``botkit finetune`` group (``review list|approve|reject|correct``, ``deploy``).

The finetune plugin (``finetune/plugin.py``) adds both to the ``botkit`` group; the
training commands (``finetune/cli_train.py``, ``finetune/cli_dpo.py``) join the ``finetune`` group here. Heavy
modules (numpy, rich) are imported when a command runs, not when ``botkit`` starts.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import click

from botkit import NO_LORA, BotkitError
from botkit.ops import Context, config_option, fail, run_with_database

from .cli_canary import canary
from .cli_dpo import dpo
from .cli_runs import exports, rollback, runs
from .cli_train import convert, evaluate, train
from .examples import FORMATS, FeedbackPolicy, FeedbackSelection, PiiPolicy, PreferencePrompt
from .mixing import mix_option
from .progress import progress_bars
from .synth_cli import synth

LICENSE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+\-]{0,63}$")


class WhenType(click.ParamType):
    """A date (``2026-11-01``) or date and time (``2026-11-01T12:30``, with an offset or UTC)."""

    name = "DATE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            when = datetime.fromisoformat(str(value).strip())
        except ValueError:
            self.fail(
                f"{value!r} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC unless an offset is given)"
            )
        return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _fraction(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise click.BadParameter("must be at least 0 and below 1, e.g. 0.1")
    return value


def _threshold(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not 0.0 < value < 1.0:
        raise click.BadParameter("must be between 0 and 1 (exclusive), e.g. 0.8")
    return value


def _base_model_licence(settings: Any, flag: str | None) -> str | None:
    """The licence the base model declares: ``--base-model`` when it names a model file or folder,
    else the default backend's model; None when it cannot be read (a name, a model on a server)."""
    from .base_model import base_model, target_from_config

    try:
        if flag is not None:
            path = Path(flag).expanduser()
            return base_model(path).provenance.license if path.exists() else None
        return target_from_config(settings, "default", None).base.provenance.license
    except BotkitError:
        return None


def _licence(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not LICENSE.match(value):
        raise click.BadParameter("use a licence identifier such as apache-2.0, cc-by-4.0 or other")
    return value


def _formats(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    """``--format a --format b`` and ``--format a,b`` both work; each name is checked."""
    names: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name not in FORMATS:
                raise click.BadParameter(f"unknown format {name!r}; choose from {', '.join(FORMATS)}")
            if name not in names:
                names.append(name)
    return tuple(names) or ("chat",)


def _values(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


def run_with_bot(ctx: Context, action: Any) -> Any:
    """Run ``action(bot)`` with the database connected and its schema current (no model is loaded)."""
    try:
        return run_with_database(ctx, action)
    except BotkitError as error:
        report = getattr(error, "report", None)
        if report is not None:  # an empty export: say where everything went first
            click.echo("\n".join(report.lines()))
        fail(error)


@click.command()
@config_option
@click.option(
    "--out", "-o", type=click.Path(path_type=Path, file_okay=False), help="folder to write the dataset to"
)
@click.option(
    "--format",
    "formats",
    multiple=True,
    callback=_formats,
    help=f"output format, repeatable or comma-separated: {', '.join(FORMATS)} (default: chat)",
)
@click.option("--overwrite", is_flag=True, help="replace --out if it exists")
@click.option("--dry-run", is_flag=True, help="print the counts per filter; write nothing")
@mix_option("go into train")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the train/validation split")
@click.option(
    "--validation-fraction",
    type=float,
    default=0.1,
    show_default=True,
    callback=_fraction,
    help="share of conversations in the validation split",
)
@click.option("--since", type=WhenType(), help="only messages from this date/time on (UTC)")
@click.option("--until", type=WhenType(), help="only messages before this date/time (UTC, exclusive)")
@click.option("--platform", "platforms", multiple=True, help="only these platforms (repeatable)")
@click.option("--channel", "channels", multiple=True, help="only these channel ids (repeatable)")
@click.option("--backend", "backends", multiple=True, help="only replies by these backends (repeatable)")
@click.option("--model", "models", multiple=True, help="only replies by these models (repeatable)")
@click.option(
    "--adapter", "adapters", multiple=True, help="only replies with these LoRA adapters; 'none' for without"
)
@click.option(
    "--select-feedback",
    type=click.Choice(get_args(FeedbackSelection)),
    default="any",
    show_default=True,
    help="only replies with feedback (rated) or without (unrated)",
)
@click.option(
    "--moderation-clean/--no-moderation-clean",
    default=True,
    show_default=True,
    help="leave out exchanges with any moderation event",
)
@click.option(
    "--corrections/--no-corrections", default=True, show_default=True, help="a correction replaces the answer"
)
@click.option(
    "--pii",
    type=click.Choice(get_args(PiiPolicy)),
    default="scrub",
    show_default=True,
    help="PII and secrets: replace by placeholders, drop the example, or leave",
)
@click.option(
    "--feedback-policy",
    type=click.Choice(get_args(FeedbackPolicy)),
    default="weighted",
    show_default=True,
    help="approved: only approved replies; weighted: drop voted-down, repeat voted-up in train",
)
@click.option(
    "--max-weight",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="most copies of one example",
)
@click.option(
    "--min-chars", type=click.IntRange(min=0), default=1, show_default=True, help="shortest answer kept"
)
@click.option(
    "--max-chars",
    type=click.IntRange(min=1),
    default=16_000,
    show_default=True,
    help="longest example kept (history, message and answer)",
)
@click.option(
    "--language", "languages", multiple=True, help="keep only these languages, e.g. en (repeatable)"
)
@click.option(
    "--exact-dedup/--no-exact-dedup", default=True, show_default=True, help="remove exact duplicates"
)
@click.option(
    "--near-dedup",
    type=float,
    default=0.8,
    show_default=True,
    callback=_threshold,
    help="remove near duplicates at this MinHash similarity",
)
@click.option("--no-near-dedup", is_flag=True, help="keep near duplicates")
@click.option(
    "--keep-truncated",
    is_flag=True,
    help='keep answers cut at max_tokens, labelled "truncated": true (default: drop them)',
)
@click.option(
    "--history",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="earlier exchanges put before each example",
)
@click.option("--system-prompt", default=None, help="system prompt for every example (default: the config's)")
@click.option(
    "--preference-prompt",
    type=click.Choice(get_args(PreferencePrompt)),
    default="chat",
    show_default=True,
    help="preference prompts as chat messages or Alpaca text",
)
@click.option(
    "--base-model", default=None, help="the model to fine-tune, for the card (default: the config's)"
)
@click.option(
    "--license",
    "licence",
    default="other",
    show_default=True,
    callback=_licence,
    help="licence of the dataset",
)
@click.pass_obj
def export(ctx: Context, **flags: Any) -> None:
    """Export curated conversations as training data: select, curate, format, split, write.

    Writes one folder per format (train and validation files) and a dataset
    card, README.md. See docs/finetune.md.
    """
    from .curate import Curation
    from .export import ExportOptions, SystemPrompts, run_export
    from .select import Selection

    if flags["since"] and flags["until"] and flags["since"] >= flags["until"]:
        raise click.BadParameter("must be later than --since", param_hint="'--until'")
    if not flags["dry_run"] and flags["out"] is None:
        raise click.UsageError("Missing option '--out' (or pass --dry-run).")
    selection = Selection(
        since=flags["since"],
        until=flags["until"],
        platforms=_values(flags["platforms"]),
        channels=_values(flags["channels"]),
        backends=_values(flags["backends"]),
        models=_values(flags["models"]),
        adapters=_values(flags["adapters"]),
        feedback=flags["select_feedback"],
    )
    curation = Curation(
        moderation_clean=flags["moderation_clean"],
        corrections=flags["corrections"],
        pii=flags["pii"],
        feedback=flags["feedback_policy"],
        max_weight=flags["max_weight"],
        min_chars=flags["min_chars"],
        max_chars=flags["max_chars"],
        languages=_values(flags["languages"]),
        exact_duplicates=flags["exact_dedup"],
        near_duplicates=None if flags["no_near_dedup"] else flags["near_dedup"],
        history=flags["history"],
        keep_truncated=flags["keep_truncated"],
    )

    async def action(bot: Any) -> Any:
        options = ExportOptions(
            out=flags["out"],
            formats=flags["formats"],
            selection=selection,
            curation=curation,
            seed=flags["seed"],
            validation_fraction=flags["validation_fraction"],
            overwrite=flags["overwrite"],
            dry_run=flags["dry_run"],
            preference_prompt=flags["preference_prompt"],
            alpaca_variant=bot.default_backend.settings.alpaca_variant,
            system_prompt=flags["system_prompt"],
            base_model=flags["base_model"] or bot.default_backend.backend.model_name,
            base_model_license=_base_model_licence(bot.settings, flags["base_model"]),
            license=flags["licence"],
            mix=flags["mix"],
        )
        with progress_bars() as progress:
            return await run_export(
                bot.db, options, SystemPrompts(bot.settings, flags["system_prompt"]), progress
            )

    report = run_with_bot(ctx, action)
    click.echo("\n".join(report.lines()))
    if report.folder is None:
        click.echo("dry run: nothing written", err=True)
    else:
        click.echo(f"wrote {report.total_written:,} records and README.md to {report.folder}", err=True)


@click.group()
def finetune() -> None:
    """Fine-tuning: review candidates, train a LoRA adapter on an export, convert, deploy and evaluate it."""


@finetune.group()
def review() -> None:
    """The admin review queue: approve, reject or correct candidate pairs before export."""


@review.command("list")
@config_option
@click.option(
    "--state",
    type=click.Choice(["pending", "approved", "rejected", "corrected", "all"]),
    default="pending",
    show_default=True,
    help="which pairs to show",
)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="most pairs shown")
@click.option(
    "--votes",
    type=click.Choice(["any", "up", "down", "none"]),
    default="any",
    show_default=True,
    help="only pairs voted up (more up than down), down, or not at all",
)
@click.option(
    "--moderation",
    type=click.Choice(["any", "with", "without"]),
    default="any",
    show_default=True,
    help="only pairs with (or without) a moderation event on the question or the answer",
)
@click.option(
    "--truncated",
    type=click.Choice(["any", "with", "without"]),
    default="any",
    show_default=True,
    help="only pairs whose answer was (or was not) cut at max_tokens",
)
@click.pass_obj
def review_list(ctx: Context, state: str, limit: int, votes: str, moderation: str, truncated: str) -> None:
    """List candidate pairs, newest first (texts shown with PII scrubbed)."""
    from .review import CandidateFilter, list_candidates

    only = CandidateFilter(votes, moderation, truncated)  # type: ignore[arg-type]
    found = run_with_bot(ctx, lambda bot: list_candidates(bot.db, state, limit, only))  # type: ignore[arg-type]
    if not found:
        click.echo(f"no {state} pairs" if state != "all" else "no pairs")
        return
    for pair in found:
        when = pair.created_at.strftime("%Y-%m-%d %H:%M")
        votes_given = f"  +{pair.up} -{pair.down}" if pair.up or pair.down else ""
        click.echo(f"#{pair.reply_id}  {when}  {pair.platform}:{pair.channel_id}  {pair.state}{votes_given}")
        click.echo(f"  user: {pair.question}")
        cut = "  [cut at max_tokens: the export drops it unless corrected]" if pair.truncated else ""
        click.echo(f"  bot:  {pair.answer}{cut}")
        if pair.correction:
            click.echo(f"  correction: {pair.correction}")
        if pair.moderation:
            click.echo(f"  moderation: {'; '.join(pair.moderation)}")


def _decide(ctx: Context, reply_id: int, decision: str) -> None:
    from .review import decide

    run_with_bot(ctx, lambda bot: decide(bot.db, reply_id, decision))  # type: ignore[arg-type]
    click.echo(f"#{reply_id} {decision}")


@review.command("approve")
@config_option
@click.argument("reply_id", metavar="ID", type=int)
@click.pass_obj
def review_approve(ctx: Context, reply_id: int) -> None:
    """Approve pair ID: it counts as approved feedback in the export."""
    _decide(ctx, reply_id, "approved")


@review.command("reject")
@config_option
@click.argument("reply_id", metavar="ID", type=int)
@click.pass_obj
def review_reject(ctx: Context, reply_id: int) -> None:
    """Reject pair ID: the export leaves it out."""
    _decide(ctx, reply_id, "rejected")


@review.command("correct")
@config_option
@click.argument("reply_id", metavar="ID", type=int)
@click.argument("text")
@click.pass_obj
def review_correct(ctx: Context, reply_id: int, text: str) -> None:
    """Store TEXT as the right answer of pair ID; the export uses it instead of the bot's."""
    from .review import correct

    run_with_bot(ctx, lambda bot: correct(bot.db, reply_id, text))
    click.echo(f"#{reply_id} corrected")


def _scale(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise click.BadParameter("must be a number, e.g. 1.0 (as trained) or 0.5")
    return value


@finetune.command("deploy")
@config_option
@click.argument("adapter", metavar="ADAPTER")
@click.option(
    "--backend",
    default="default",
    show_default=True,
    help="the llamacpp backend to deploy to: 'default' ([backend]) or a [backends.<name>] name",
)
@click.option("--scale", type=float, callback=_scale, help="also set lora_scale (1.0: as trained)")
@click.option("--no-reload", is_flag=True, help="only write the config; do not ask the running bot to reload")
@click.option(
    "--accept-license",
    is_flag=True,
    help="deploy even when [finetune] allowed_licenses does not list the adapter's licence",
)
@click.option(
    "--force",
    is_flag=True,
    help="deploy even when the adapter's red-team results (redteam.json beside it) miss [finetune.gate]",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="seconds to wait for the running bot (a reload waits for the generation in progress)",
)
@click.option(
    "--canary",
    type=click.FloatRange(0, 100, min_open=True, max_open=True),
    default=None,
    metavar="PERCENT",
    help="try the adapter (one of the backend's loras) on this share of conversations first; see "
    "`botkit finetune canary`",
)
@click.pass_obj
def deploy(
    ctx: Context,
    adapter: str,
    backend: str,
    scale: float | None,
    no_reload: bool,
    accept_license: bool,
    force: bool,
    timeout: float,
    canary: float | None,
) -> None:
    """Deploy a GGUF LoRA adapter to a llama.cpp backend of the running bot, without a restart.

    ADAPTER is a llama.cpp GGUF LoRA adapter file, a run folder of `botkit finetune train`
    that `convert` wrote one into, or 'none' for the base model. It is
    checked against the backend's model (an adapter for another base model is refused),
    its licence shown and checked against [finetune] allowed_licenses (--accept-license
    deploys one outside it), its red-team results (redteam.json beside it, from `botkit redteam --lora
    ADAPTER --baseline --json ...`) held to [finetune.gate] (--force deploys one that misses it), written
    into the config file as lora_path, and the bot running with this config is
    asked over its control socket to reload. With --canary PERCENT nothing is written: the adapter,
    already one of the backend's loras, answers that share of conversations (sticky per conversation)
    until `botkit finetune canary promote` or `rollback`. See docs/finetune.md and docs/safety.md.
    """
    from .deploy import Deployment, adapter_argument
    from .deploy import deploy as run_deploy

    if adapter == NO_LORA and scale is not None:
        raise click.UsageError("--scale applies to an adapter; with 'none' there is none to scale")
    try:
        deployment = Deployment(
            backend,
            adapter_argument(adapter),
            scale,
            reload=not no_reload,
            timeout=timeout,
            accept_license=accept_license,
            force=force,
        )
        warn = lambda line: click.echo(line, err=True)  # noqa: E731
        if canary is not None:
            from .cli_canary import deploy_canary

            deploy_canary(ctx.settings(), deployment, canary, click.echo, warn)
        else:
            run_deploy(ctx.settings(), deployment, click.echo, warn)
    except BotkitError as error:
        fail(error)


finetune.add_command(train)
finetune.add_command(canary)
finetune.add_command(dpo)
finetune.add_command(convert)
finetune.add_command(evaluate)
finetune.add_command(synth)
for command in (runs, exports, rollback):
    finetune.add_command(command)
