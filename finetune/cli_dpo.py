"""``botkit finetune dpo``: Direct Preference Optimization of a LoRA adapter on exported preference pairs.

``finetune/cli.py`` adds the command to its ``finetune`` group. It takes the
flags of ``botkit finetune train`` that mean the same here (the very option
objects, so the two never drift apart) and its own: ``--from``, ``--beta``,
``--reference``, and ``--lr`` and ``--epochs`` with DPO's defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from botkit import BotkitError
from botkit.ops import Context, config_option, config_table, fail

from .cli_train import _hyper
from .cli_train import train as train_command
from .progress import progress_bars
from .settings import FinetuneSettings

# train's flags that DPO takes as they are; learning_rate and epochs have DPO's own defaults.
SHARED_FLAGS = (
    "out", "backend", "base_model", "rank", "alpha", "dropout", "target_modules", "max_steps", "batch_size",
    "gradient_accumulation", "warmup_ratio", "max_length", "save_every", "keep_checkpoints", "seed", "device",
    "dtype", "overwrite", "resume",
)  # fmt: skip
# What an adapter trained further keeps from its SFT run.
SHAPE_FLAGS = ("rank", "alpha", "dropout", "target_modules")


@click.command()
@config_option
@click.argument("data", type=click.Path(path_type=Path))
@click.option(
    "--from",
    "start",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="an SFT run folder (`botkit finetune train --out`) whose adapter DPO trains further",
)
@click.option(
    "--beta", type=click.FloatRange(0, 10, min_open=True), help="how far the adapter may move (default 0.1)"
)
@click.option(
    "--reference",
    type=click.Choice(["start", "base"]),
    help="what the adapter is measured against: the model training starts from, or the base (default start)",
)
@click.option(
    "--learning-rate", "--lr", "learning_rate", type=float, help="peak learning rate (default 5e-5)"
)
@click.option("--epochs", type=int, help="passes over the pairs (default 1)")
@click.pass_obj
def dpo(ctx: Context, data: Path, start: Path | None, **flags: Any) -> None:
    """Train a LoRA adapter with DPO on DATA's preference pairs (`botkit export --format preference`).

    The adapter learns to prefer each pair's chosen answer to its rejected one,
    measured against a reference: the base model, or with --from the SFT run's
    adapter it trains further. Writes OUT/adapter, OUT/training.json and
    checkpoints, as `botkit finetune train` does.
    """
    from .base_model import target_from_config, target_from_run
    from .dpo import dpo as run_dpo
    from .dpo import dpo_settings
    from .train import TrainOptions, read_run

    out = flags["out"]
    if flags["overwrite"] and flags["resume"]:
        raise click.UsageError("--overwrite and --resume exclude each other")
    if start is not None:
        given = [
            f"--{name.replace('_', '-')}" for name in (*SHAPE_FLAGS, "base_model") if flags[name] is not None
        ]
        if given:
            raise click.UsageError(
                f"{', '.join(given)}: with --from, the adapter keeps the base model and LoRA shape of {start}"
            )
    try:
        settings = ctx.settings()
        table = config_table(settings, "finetune", FinetuneSettings)
        dpo_table = table.dpo.model_copy(
            update={key: flags[key] for key in ("beta", "reference") if flags[key] is not None}
        )
        defaults = table.model_copy(
            update={"learning_rate": table.dpo.learning_rate, "epochs": table.dpo.epochs}
        )
        hyper = _hyper(defaults, flags).model_copy(update={"dpo": dpo_table})
        hyper = dpo_settings(hyper, start)
        target = (
            target_from_run(read_run(start))
            if start is not None
            else target_from_config(settings, flags["backend"], flags["base_model"])
        )
        options = TrainOptions(
            data=data,
            out=out,
            target=target,
            hyper=hyper,
            overwrite=flags["overwrite"],
            resume=flags["resume"],
        )
        from rich.progress import TextColumn, TimeRemainingColumn

        def announce() -> None:  # once the data and the run folder are checked
            origin = f"the adapter of {start}" if start else "a new LoRA adapter"
            click.echo(f"DPO of {origin} for {target.base.describe()} on {data}", err=True)

        with progress_bars(TimeRemainingColumn(), TextColumn("{task.fields[loss]}")) as progress:
            report = run_dpo(options, start, progress, on_start=announce)
    except BotkitError as error:
        fail(error)
    click.echo("\n".join(report.lines()))
    click.echo(f"adapter: {report.adapter}; next: botkit finetune convert {out}", err=True)


_shared = {param.name: param for param in train_command.params}
dpo.params[1:1] = [_shared[name] for name in SHARED_FLAGS]  # after DATA, before --from
