"""``botkit finetune synth``: the command line of the synthetic instruction generator (``synth.py``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from botkit import BotkitError
from botkit.ops import Context, config_option, fail, load_bot

from .progress import progress_bars


def _licence(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from .cli import _licence as check  # late: cli.py imports this module

    return check(ctx, param, value)


def _threshold(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not 0.0 < value <= 1.0:
        raise click.BadParameter("must be above 0 and at most 1, e.g. 0.7")
    return value


@click.command("synth")
@config_option
@click.option(
    "--out", "-o", required=True, type=click.Path(path_type=Path), help="folder to write the data to"
)
@click.option(
    "--seeds",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="seed tasks, JSONL: instruction/input/output, or Alpaca's seed_tasks.jsonl (default: botkit's own)",
)
@click.option(
    "--teacher",
    default="default",
    show_default=True,
    help="the backend that writes the tasks: 'default' ([backend]) or a [backends.<name>] name",
)
@click.option(
    "--num-instructions", type=click.IntRange(min=1), default=100, show_default=True, help="tasks to keep"
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=2),
    default=10,
    show_default=True,
    help="tasks asked for a request",
)
@click.option(
    "--seed-examples",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="seed tasks shown a request",
)
@click.option(
    "--generated-examples",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="earlier tasks shown a request",
)
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=4, show_default=True, help="requests at once"
)
@click.option(
    "--max-failures",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="stop after this many failed requests in a row (unreachable, no task, refused)",
)
@click.option(
    "--retry-backoff",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="most seconds before a failed request is retried (random wait up to it, doubled each failure)",
)
@click.option(
    "--max-tokens", type=click.IntRange(min=16), default=2048, show_default=True, help="tokens a request"
)
@click.option("--temperature", type=click.FloatRange(0.0, 5.0), default=1.0, show_default=True)
@click.option(
    "--seed", type=int, default=None, help="seed of the example sampling and of the teacher's sampling"
)
@click.option("--resume", is_flag=True, help="go on with the run in --out")
@click.option("--overwrite", is_flag=True, help="start over in a non-empty --out")
@click.option(
    "--rouge-threshold", type=float, default=0.7, show_default=True, callback=_threshold,
    help="reject an instruction whose ROUGE-L with a kept one is at least this",
)  # fmt: skip
@click.option(
    "--near-dedup", type=float, default=0.8, show_default=True, callback=_threshold,
    help="reject near duplicates at this MinHash similarity",
)  # fmt: skip
@click.option("--no-near-dedup", is_flag=True, help="no near-duplicate filter")
@click.option(
    "--min-words", type=click.IntRange(min=1), default=3, show_default=True, help="shortest instruction"
)
@click.option(
    "--max-words", type=click.IntRange(min=1), default=150, show_default=True, help="longest instruction"
)
@click.option("--teacher-terms", default=None, help="the teacher's terms of use, for the card")
@click.option(
    "--license",
    "licence",
    default="other",
    show_default=True,
    callback=_licence,
    help="licence of the dataset",
)
@click.pass_obj
def synth(ctx: Context, **flags: Any) -> None:
    """Write synthetic instruction data with a teacher model (Self-Instruct, as Alpaca did).

    Asks the teacher backend for new tasks, shown a few seed tasks and earlier ones;
    keeps those that pass the filters (length, unsuitable, duplicates, ROUGE-L), and
    writes train.json (Alpaca) and README.md (dataset card) into --out. See docs/finetune.md.
    """
    from .synth import SynthOptions, Teacher
    from .synth_prompt import read_seeds

    if flags["min_words"] > flags["max_words"]:
        raise click.BadParameter("must not be above --max-words", param_hint="'--min-words'")
    if flags["resume"] and flags["overwrite"]:
        raise click.UsageError("--resume goes on with a run, --overwrite starts over: pass one of them")
    options = SynthOptions(
        out=flags["out"],
        num_instructions=flags["num_instructions"],
        batch_size=flags["batch_size"],
        seed_examples=flags["seed_examples"],
        generated_examples=flags["generated_examples"],
        concurrency=flags["concurrency"],
        max_failures=flags["max_failures"],
        retry_backoff=flags["retry_backoff"],
        max_tokens=flags["max_tokens"],
        temperature=flags["temperature"],
        seed=flags["seed"],
        resume=flags["resume"],
        overwrite=flags["overwrite"],
        rouge_threshold=flags["rouge_threshold"],
        near_duplicate=None if flags["no_near_dedup"] else flags["near_dedup"],
        min_words=flags["min_words"],
        max_words=flags["max_words"],
        teacher_terms=flags["teacher_terms"],
        license=flags["licence"],
    )
    try:
        seeds, seed_source = read_seeds(flags["seeds"])
        bot = load_bot(ctx.settings())
        slot = bot.backends.get(flags["teacher"])
        if slot is None:
            known = ", ".join(sorted(bot.backends))
            raise click.BadParameter(
                f"no backend {flags['teacher']!r}; configured: {known}", param_hint="'--teacher'"
            )
        counts = asyncio.run(_run(options, seeds, seed_source, Teacher(slot)))
    except BotkitError as error:
        fail(error)
    click.echo("\n".join(counts.lines()))
    click.echo(
        f"wrote {min(counts.kept, options.num_instructions):,} tasks to {options.out / 'train.json'}",
        err=True,
    )


async def _run(options: Any, seeds: Any, seed_source: str, teacher: Any) -> Any:
    from .synth import SynthRun

    await teacher.slot.backend.start()
    try:
        with progress_bars() as progress:
            bar = progress.add_task("synth", total=options.num_instructions)

            def show(counts: Any) -> None:
                rejected = sum(counts.rejected.values()) + counts.malformed
                failed = sum(counts.failed.values())
                progress.update(
                    bar,
                    completed=counts.kept,
                    description=f"synth: kept {counts.kept:,}, rejected {rejected:,}, failed requests {failed:,}",
                )

            run = SynthRun(options, seeds, seed_source, teacher, show)
            show(run.counts)
            return await run.run()
    finally:
        await teacher.slot.backend.close()
