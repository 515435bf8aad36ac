"""``botkit finetune runs``, ``exports`` and ``rollback``: the catalogue of past exports and runs, and undoing a deploy.

``runs`` and ``exports`` print ``finetune/catalog.py``'s catalogue, as the console's
Exports and runs page shows it; ``rollback`` deploys the adapter the newest recorded
deploy replaced (``finetune/rollback.py``), through ``finetune deploy``'s code.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from botkit import BotkitError
from botkit.ops import Context, config_option, fail

from .catalog import AdapterInUse, Catalogue, ExportEntry, RunEntry, catalogue

folders_argument = click.argument("folders", nargs=-1, type=click.Path(path_type=Path), metavar="[FOLDER]...")
json_option = click.option("--json", "as_json", is_flag=True, help="print the catalogue as JSON")


def _catalogue(ctx: Context, folders: tuple[Path, ...]) -> Catalogue:
    try:
        return catalogue(ctx.settings(), [Path(folder).absolute() for folder in folders] or None)
    except BotkitError as error:
        fail(error)


def when(entry: ExportEntry | RunEntry) -> str:
    return entry.date.strftime("%Y-%m-%d %H:%M") if entry.date else "-"


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def in_use_lines(uses: list[AdapterInUse]) -> list[str]:
    """The adapter each llama.cpp backend answers with: the config's, and the running bot's."""
    if not uses:
        return ["adapter in use: the config has no llamacpp backend"]
    lines = []
    for use in uses:
        configured = use.lora_path or "none (the base model)"
        scale = f" (scale {use.lora_scale:g})" if use.lora_path and use.lora_scale != 1.0 else ""
        running = use.running_note or f"the running bot uses {use.running or 'none (the base model)'}"
        rollback = f"; rollback: back to {use.rollback_to}" if use.rollback_to else ""
        lines.append(f"adapter in use, backend {use.backend} ([{use.table}]): {configured}{scale}; {running}{rollback}")
    return lines


def loss_change(before: float | None, after: float | None) -> str:
    return "-" if before is None and after is None else f"{number(before)} -> {number(after)}"


def run_lines(found: Catalogue) -> list[str]:
    """The runs as a table, newest first; each problem on a line of its own below its run."""
    header = ("RUN", "KIND", "STATUS", "STEPS", "LOSS", "BEST", "VALIDATION", "ADAPTER", "DATE", "IN USE")
    rows = [header]
    notes: dict[int, list[str]] = {}
    for run in found.runs:
        steps = f"{run.steps if run.steps is not None else '-'}/{run.total_steps or '-'}"
        adapter = "gguf" if run.adapter else ("peft" if "adapter" in run.files else "-")
        rows.append(
            (str(run.folder), run.kind, run.status, steps, number(run.final_loss), number(run.best_loss),
             loss_change(run.validation_before, run.validation_after), adapter, when(run),
             ", ".join(found.users_of(run)) or "-")
        )  # fmt: skip
        extra = []
        if run.evaluation:
            e = run.evaluation
            extra.append(
                f"eval ({e.get('split', 'validation')}): loss {number(e.get('base_loss'))} -> "
                f"{number(e.get('adapter_loss'))}, token F1 {number(e.get('base_f1'))} -> {number(e.get('adapter_f1'))}"
            )
        extra += [f"problem: {problem}" for problem in run.problems]
        notes[len(rows) - 1] = extra
    return _table(rows, notes) if found.runs else ["no training runs found"]


def export_lines(found: Catalogue) -> list[str]:
    header = ("EXPORT", "DATE", "FORMATS", "RECORDS")
    rows = [header]
    notes: dict[int, list[str]] = {}
    for entry in found.exports:
        records = ", ".join(f"{path} {count:,}" for path, count in entry.records.items()) or "-"
        rows.append((str(entry.folder), when(entry), ", ".join(entry.formats) or "-", records))
        notes[len(rows) - 1] = [f"problem: {problem}" for problem in entry.problems]
    return _table(rows, notes) if found.exports else ["no exports found"]


def _table(rows: list[tuple[str, ...]], notes: dict[int, list[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        lines += [f"  {note}" for note in notes.get(index, [])]
    return lines


def footer(found: Catalogue) -> list[str]:
    looked = ", ".join(str(folder) for folder in found.folders) or "no folder"
    return [f"looked in: {looked} ([finetune] folders)", *(f"problem: {problem}" for problem in found.problems)]


@click.command()
@config_option
@folders_argument
@json_option
@click.pass_obj
def runs(ctx: Context, folders: tuple[Path, ...], as_json: bool) -> None:
    """List the training runs (train and dpo) in FOLDERs (default: [finetune] folders) and the adapter in use.

    Each run: its kind, status (complete, or interrupted and how to resume it), steps,
    final and best training loss, validation loss before and after, eval results,
    its adapter files, and which backend uses its adapter. The exports are `botkit finetune exports`.
    """
    found = _catalogue(ctx, folders)
    if as_json:
        data = found.as_json()
        click.echo(json.dumps({key: data[key] for key in ("folders", "in_use", "runs", "problems")}, indent=2))
        return
    click.echo("\n".join([*in_use_lines(found.in_use), "", *run_lines(found), "", *footer(found)]))


@click.command()
@config_option
@folders_argument
@json_option
@click.option("--card", is_flag=True, help="also print each export's dataset card")
@click.pass_obj
def exports(ctx: Context, folders: tuple[Path, ...], as_json: bool, card: bool) -> None:
    """List the exports of `botkit export` in FOLDERs (default: [finetune] folders): date, formats, records."""
    found = _catalogue(ctx, folders)
    if as_json:
        data = found.as_json()
        click.echo(json.dumps({key: data[key] for key in ("folders", "exports", "problems")}, indent=2))
        return
    lines = export_lines(found)
    if card:
        for entry in found.exports:
            lines += ["", f"== {entry.folder / 'README.md'}", entry.card or "(no dataset card)"]
    click.echo("\n".join([*lines, "", *footer(found)]))


@click.command()
@config_option
@click.option(
    "--backend",
    default="default",
    show_default=True,
    help="the llamacpp backend: 'default' ([backend]) or a [backends.<name>] name",
)
@click.option("--no-reload", is_flag=True, help="only write the config; do not ask the running bot to reload")
@click.option("--accept-license", is_flag=True, help="as deploy's: the adapter's licence is outside allowed_licenses")
@click.option("--force", is_flag=True, help="as deploy's: the adapter's red-team results miss [finetune.gate]")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="seconds to wait for the running bot",
)
@click.pass_obj
def rollback(
    ctx: Context, backend: str, no_reload: bool, accept_license: bool, force: bool, timeout: float
) -> None:
    """Deploy again the adapter (or the base model) that the newest `botkit finetune deploy` replaced.

    Deploys record each change of a backend's lora_path in [storage] data_dir/deploys.jsonl;
    rollback takes the newest one back with deploy's checks, and the running bot switches
    without a restart, as with deploy. Rolling back again goes one more deploy back.
    """
    from .deploy import deploy, plan_rollback

    try:
        settings = ctx.settings()
        options = {"reload": not no_reload, "timeout": timeout, "accept_license": accept_license, "force": force}
        target, deployment = plan_rollback(settings, backend, **options)
        click.echo(target.describe())
        deploy(settings, deployment, click.echo, lambda line: click.echo(line, err=True))
    except BotkitError as error:
        fail(error)
