"""``botkit finetune train|convert|eval``: a LoRA fine-tune on exported data, its GGUF adapter, how it does.

``finetune/cli.py`` adds the commands to its ``finetune`` group. torch,
transformers and peft are imported when a command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import click
from pydantic import ValidationError

from botkit import BotkitError, ConfigError
from botkit.ops import Context, LoraError, config_option, config_table, fail

from .examples import TrainingFormat
from .mixing import mix_option
from .progress import progress_bars
from .settings import FinetuneSettings

# Flags that override a [finetune] key of the same name (dashes for underscores).
HYPER_FLAGS = tuple(FinetuneSettings.model_fields)


def _hyper(settings: FinetuneSettings, flags: dict[str, Any]) -> FinetuneSettings:
    """``[finetune]`` from the config with the flags given on the command line on top."""
    values = settings.model_dump()
    values.update({key: flags[key] for key in HYPER_FLAGS if flags.get(key) is not None})
    if isinstance(values["target_modules"], str):
        values["target_modules"] = [
            name.strip() for name in values["target_modules"].split(",") if name.strip()
        ]
    try:
        return FinetuneSettings.model_validate(values)
    except ValidationError as error:
        problem = error.errors()[0]
        name = str(problem["loc"][0]) if problem["loc"] else ""
        raise click.BadParameter(problem["msg"], param_hint=f"'--{name.replace('_', '-')}'") from None


def _format_option(command: Any) -> Any:
    return click.option(
        "--format",
        "data_format",
        type=click.Choice(get_args(TrainingFormat)),
        default=None,
        help="which exported format to read (default: chat, else sharegpt, alpaca-jsonl, alpaca)",
    )(command)


@click.command()
@config_option
@click.argument("data", type=click.Path(path_type=Path))
@click.option(
    "--out", "-o", type=click.Path(path_type=Path, file_okay=False), required=True, help="run folder"
)
@_format_option
@mix_option("a run uses")
@click.option("--backend", default="default", show_default=True, help="the backend the adapter is for")
@click.option(
    "--base-model",
    type=click.Path(path_type=Path),
    default=None,
    help="model to train: a .gguf file or a Hugging Face folder (default: the backend's model)",
)
@click.option("--rank", "-r", type=int, help="LoRA rank (default 8)")
@click.option("--alpha", type=float, help="LoRA alpha (default 16)")
@click.option("--dropout", type=float, help="LoRA dropout (default 0.05)")
@click.option("--target-modules", help="comma-separated projections (default q_proj,k_proj,v_proj,o_proj)")
@click.option(
    "--learning-rate", "--lr", "learning_rate", type=float, help="peak learning rate (default 3e-4)"
)
@click.option("--epochs", type=int, help="passes over the data (default 3)")
@click.option("--max-steps", type=int, help="stop after this many optimizer steps")
@click.option("--batch-size", type=int, help="examples per forward pass (default 4)")
@click.option("--gradient-accumulation", type=int, help="forward passes per optimizer step (default 1)")
@click.option(
    "--warmup-ratio", type=float, help="share of steps the learning rate warms up in (default 0.03)"
)
@click.option(
    "--max-length", type=int, help="longest example in tokens; longer ones are skipped (default 1024)"
)
@click.option("--save-every", type=int, help="steps between checkpoints (default: each epoch)")
@click.option("--keep-checkpoints", type=int, help="newest checkpoints kept (default 2)")
@click.option("--seed", type=int, help="seed of initialisation, dropout and data order (default 0)")
@click.option("--device", help="auto, cpu, cuda or cuda:N (default auto: the GPU when there is one)")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), help="base precision")
@click.option(
    "--group-by-length/--no-group-by-length",
    default=None,
    help="batch examples of similar length together (default: on)",
)
@click.option("--overwrite", is_flag=True, help="replace --out if it exists")
@click.option("--resume", is_flag=True, help="continue from the newest checkpoint in --out")
@click.pass_obj
def train(ctx: Context, data: Path, out: Path, **flags: Any) -> None:
    """Fine-tune a LoRA adapter on DATA, a folder `botkit export` wrote (or one of its files).

    Prompts are rendered as the backend renders them, and only the answers
    count in the loss. Writes OUT/adapter (peft), OUT/training.json and
    checkpoints; `botkit finetune convert OUT` makes the llama.cpp adapter.
    """
    from .base_model import target_from_config
    from .train import TrainOptions
    from .train import train as run_training

    if flags["overwrite"] and flags["resume"]:
        raise click.UsageError("--overwrite and --resume exclude each other")
    try:
        settings = ctx.settings()
        hyper = _hyper(config_table(settings, "finetune", FinetuneSettings), flags)
        target = target_from_config(settings, flags["backend"], flags["base_model"])
        options = TrainOptions(
            data=data,
            out=out,
            target=target,
            hyper=hyper,
            data_format=flags["data_format"],
            mix=flags["mix"],
            overwrite=flags["overwrite"],
            resume=flags["resume"],
        )
        from rich.progress import TextColumn, TimeRemainingColumn

        def announce() -> None:  # once the data and the run folder are checked
            click.echo(f"training a LoRA adapter for {target.base.describe()} on {data}", err=True)

        with progress_bars(TimeRemainingColumn(), TextColumn("{task.fields[loss]}")) as progress:
            report = run_training(options, progress, on_start=announce)
    except BotkitError as error:
        fail(error)
    click.echo("\n".join(report.lines()))
    click.echo(f"adapter: {report.adapter}; next: botkit finetune convert {out}", err=True)


@click.command()
@config_option
@click.argument("run", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--out", "-o", type=click.Path(path_type=Path, dir_okay=False), help="default: RUN/adapter.gguf"
)
@click.option(
    "--base-model",
    type=click.Path(path_type=Path, dir_okay=False),
    help="the base model's .gguf (default: the one the run trained on)",
)
@click.option(
    "--tensor-type",
    type=click.Choice(["f32", "f16", "bf16"]),
    default="f32",
    show_default=True,
    help="precision of the LoRA tensors",
)
@click.option("--overwrite", is_flag=True, help="replace --out if it exists")
@click.pass_obj
def convert(ctx: Context, run: Path, out: Path | None, base_model: Path | None, **flags: Any) -> None:
    """Convert the peft adapter of RUN into a GGUF LoRA adapter that llama.cpp loads.

    RUN is a run folder of `botkit finetune train` or any peft LoRA folder of a
    llama-architecture model (then --base-model, or the config's backend model, names the base).
    """
    from .base_model import BaseModelError, base_model_named, target_from_config
    from .gguf_adapter import convert_peft_adapter
    from .train import ADAPTER_FOLDER, CONVERTED_FILE, RUN_FILE, read_run

    try:
        if (run / RUN_FILE).is_file():
            record = read_run(run)
            peft_folder = run / ADAPTER_FOLDER
            trained_on = record.get("base_model", {})
            base = base_model_named(base_model or Path(trained_on.get("path", "")), trained_on.get("name"))
        else:
            record, peft_folder = {}, run
            base = (
                base_model_named(base_model, None)
                if base_model
                else target_from_config(ctx.settings(), "default", None).base
            )
        if base.gguf_file is None:
            raise BaseModelError(
                f"{base.describe()} is not a GGUF file: give the base model's .gguf with --base-model"
            )
        target = out or run / CONVERTED_FILE
        if target.exists() and not flags["overwrite"]:
            raise LoraError(f"{target} exists: pass --overwrite to replace it")
        written = convert_peft_adapter(peft_folder, target, base.path, tensor_type=flags["tensor_type"])
    except BotkitError as error:
        fail(error)
    click.echo(f"wrote {written} for {base.describe()}")
    click.echo(f"deploy it with: botkit finetune deploy {written}", err=True)


@click.command("eval")
@config_option
@click.argument("run", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--data", type=click.Path(path_type=Path), help="exported data (default: what the run trained on)"
)
@_format_option
@click.option("--split", type=click.Choice(["validation", "train"]), default="validation", show_default=True)
@click.option("--samples", type=click.IntRange(min=0), default=3, show_default=True, help="answers to show")
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True, help="per answer")
@click.option("--device", help="auto, cpu, cuda or cuda:N (default: [finetune] device)")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@click.option(
    "--redteam",
    is_flag=True,
    help="then run `botkit redteam` on RUN's GGUF adapter and the base model, into RUN/redteam.json (deploy's gate)",
)
@click.option(
    "--redteam-suite",
    "redteam_suites",
    multiple=True,
    metavar="NAME",
    help="--redteam: only this suite (repeat)",
)
@click.option(
    "--redteam-limit", type=click.IntRange(min=1), help="--redteam: the first N probes of each suite"
)
@click.pass_obj
def evaluate(ctx: Context, run: Path, data: Path | None, **flags: Any) -> None:
    """Compare RUN's adapter with its base model: loss and perplexity, and answers to the first examples.

    With --redteam, the red-team suites then run on the adapter `convert` wrote into RUN and on the
    base model, through the configured backend's whole pipeline (docs/safety.md); the results go to
    RUN/redteam.json, which `botkit finetune deploy` holds to [finetune.gate].
    """
    from .base_model import target_from_run
    from .evaluate import evaluate as run_eval
    from .model_card import write_model_card
    from .scores import EVAL_FILE
    from .train import CONVERTED_FILE, read_run

    redteam = None
    if flags["redteam"]:  # before the model loads: what --redteam needs is there
        redteam = redteam_command()
        if not (run / CONVERTED_FILE).is_file():
            fail(
                LoraError(
                    f"{run} has no {CONVERTED_FILE}: --redteam probes the GGUF adapter that deploy would "
                    f"deploy; run `botkit finetune convert {run}` first"
                )
            )
    try:
        settings = ctx.settings()
        record = read_run(run)
        hyper = _hyper(
            config_table(settings, "finetune", FinetuneSettings),
            {**record.get("settings", {}), "device": flags["device"]},
        )
        source = data or Path(record.get("data", {}).get("source", ""))
        with progress_bars() as progress:
            report = run_eval(
                run,
                target_from_run(record),
                source,
                split=flags["split"],
                data_format=flags["data_format"],
                samples=flags["samples"],
                max_tokens=flags["max_tokens"],
                hyper=hyper,
                progress=progress,
            )
    except BotkitError as error:
        fail(error)
    results = report.as_dict()
    # deploy reads it back: it warns before deploying an adapter that scored worse than its base
    (run / EVAL_FILE).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write_model_card(run, record)  # with the eval's numbers
    if flags["as_json"]:
        click.echo(json.dumps(results, indent=2))
    else:
        click.echo("\n".join(report.lines()))
    if redteam is not None:
        from .gate import REPORT_FILE

        click.echo(f"\nred-team suites on {run / CONVERTED_FILE} and on the base model:")
        click.get_current_context().invoke(
            redteam,
            lora=str(run / CONVERTED_FILE),
            baseline=True,
            json_path=run / REPORT_FILE,
            suite_names=flags["redteam_suites"],
            limit=flags["redteam_limit"],
        )


def redteam_command() -> click.Command:
    """``botkit redteam``, which the redteam plugin adds to the command line (finetune never imports it)."""
    root = click.get_current_context().find_root()
    command = root.command.get_command(root, "redteam") if isinstance(root.command, click.Group) else None
    if command is None:
        fail(
            ConfigError(
                "--redteam runs `botkit redteam`, which the redteam plugin adds, and it is off "
                "([plugins.redteam] enabled = false, or BOTKIT_LOAD_PLUGINS)"
            )
        )
    return command
