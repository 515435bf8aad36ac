"""``botkit finetune train``: a peft LoRA fine-tune of the bot's own base model, the loss on the answers only.

The run folder gets ``adapter/`` (peft's adapter_config.json and
adapter_model.safetensors), ``training.json`` (the settings, the base model,
the data, the losses) and ``checkpoints/step-N/`` to resume from. torch,
transformers and peft are imported when training starts (``botkit[finetune]``).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botkit import BotkitError, ModelLoadError
from botkit.ops import read_gguf_header, transformers_engine

from .base_model import AdapterTarget
from .mixing import Source, source_files, weighted
from .model_card import dataset_record, write_model_card
from .scores import ADVICE, warnings_for
from .settings import FinetuneSettings
from .training_data import (
    DataFiles,
    PromptStyle,
    ReadReport,
    TrainingFormat,
    TrainingText,
    find_files,
    read_examples,
)

INSTALL_HINT = "pip install 'botkit[finetune]'"
RUN_FILE = "training.json"
CONVERTED_FILE = "adapter.gguf"  # what `botkit finetune convert RUN` writes by default
ADAPTER_FOLDER = "adapter"
CHECKPOINTS = "checkpoints"
STATE_FILE = "state.pt"
# Settings that must match for --resume to continue a run: they shape the steps already taken.
RESUME_KEYS = (
    "rank", "alpha", "dropout", "target_modules", "learning_rate", "epochs", "max_steps",
    "batch_size", "gradient_accumulation", "warmup_ratio", "max_length", "seed", "group_by_length",
)  # fmt: skip
# With group_by_length, each epoch's shuffled examples are sorted by length within
# windows of this many batches (as transformers' LengthGroupedSampler does).
GROUP_BATCHES = 50
# Losses stay on the device and are read (one host sync) this often, and at checkpoints.
LOSS_READ_EVERY = 10


class TrainingError(BotkitError):
    """A fine-tune that cannot start or continue: its folder, data, base model or settings."""


@dataclass(frozen=True)
class TrainOptions:
    data: Path
    out: Path
    target: AdapterTarget
    hyper: FinetuneSettings = field(default_factory=FinetuneSettings)
    data_format: TrainingFormat | None = None
    mix: tuple[Source, ...] = ()  # more sources beside ``data``, with their weights (finetune/mixing.py)
    overwrite: bool = False
    resume: bool = False


@dataclass(frozen=True)
class Encoded:
    """An example as token ids; the first ``prompt_tokens`` carry no loss."""

    ids: list[int]
    prompt_tokens: int
    source: int  # its index in the texts it was encoded from


@dataclass
class TrainReport:
    out: Path
    device: str
    steps: int = 0
    started_at_step: int = 0
    seconds: float = 0.0
    examples: int = 0
    validation_examples: int = 0
    validation_before: float | None = None
    validation_after: float | None = None
    last_train_loss: float | None = None
    reads: list[ReadReport] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)  # training.json's data.sources

    @property
    def adapter(self) -> Path:
        return self.out / ADAPTER_FOLDER

    def lines(self) -> list[str]:
        lines = [line for read in self.reads for line in read.lines()]
        rate = (self.steps - self.started_at_step) / self.seconds if self.seconds else 0.0
        resumed = f", resumed at step {self.started_at_step}" if self.started_at_step else ""
        lines.append(
            f"trained {self.steps} steps on {self.device}{resumed} ({rate:.2f} steps/s); "
            f"training loss {_shown(self.last_train_loss)} (mean of the last 10 steps)"
        )
        if self.validation_examples:
            lines.append(
                f"validation loss {_shown(self.validation_before)} before, {_shown(self.validation_after)} after "
                f"(perplexity {_perplexity(self.validation_before)} -> {_perplexity(self.validation_after)}; "
                f"{self.validation_examples} examples)"
            )
            worse = warnings_for(self.validation_before, self.validation_after)
            lines += [*worse, f"  {ADVICE}"] if worse else []
        else:
            lines.append(
                "no validation loss: "
                + (
                    "no usable validation example"
                    if len(self.reads) > 1
                    else "the data has no validation split"
                )
            )
        return lines


def _shown(loss: float | None) -> str:
    return "n/a" if loss is None else f"{loss:.4f}"


def _perplexity(loss: float | None) -> str:
    return "n/a" if loss is None else f"{math.exp(min(loss, 50.0)):.2f}"


def train(
    options: TrainOptions, progress: Any = None, on_start: Callable[[], None] | None = None
) -> TrainReport:
    """Fine-tune a LoRA adapter as ``options`` say; ``progress`` is a rich ``Progress`` (or None).

    ``on_start`` is called once the run folder and the data are checked, before the model loads.
    """
    checkpoint = _prepare_folder(options)
    files = find_files(options.data, options.data_format)
    mixed = [(source, source_files(source.path)) for source in options.mix]
    if on_start is not None:
        on_start()
    torch, engine = import_torch()
    loaded = load_base(options.target, options.hyper, engine, progress)
    style = prompt_style(options.target, loaded)
    report = TrainReport(options.out, loaded.device)
    train_texts, read = read_examples(files.train, files.format, style)
    report.reads.append(read)
    prefix = bos_prefix(options.target, loaded)
    train_set = encode(loaded, train_texts, options.hyper.max_length, read, prefix)
    validation_set: list[Encoded] = []
    if files.validation is not None:
        texts, read = read_examples(files.validation, files.format, style)
        report.reads.append(read)
        validation_set = encode(loaded, texts, options.hyper.max_length, read, prefix)
    report.sources.append(_source_record(options.data, files, 1.0, len(train_set), len(train_set)))
    for number, (source, source_data) in enumerate(mixed, start=1):
        texts, read = read_examples(source_data.train, source_data.format, style)
        report.reads.append(read)
        examples = encode(loaded, texts, options.hyper.max_length, read, prefix)
        used = weighted(examples, source.weight, options.hyper.seed + number)
        train_set += used
        report.sources.append(
            _source_record(source.path, source_data, source.weight, len(examples), len(used))
        )
    if not train_set:
        raise TrainingError(
            "no usable training example:\n" + "\n".join(line for r in report.reads for line in r.lines())
        )
    report.examples, report.validation_examples = len(train_set), len(validation_set)
    hyper = options.hyper
    model, parameters, optimizer = lora_model(loaded.model, hyper)
    model.peft_config["default"].base_model_name_or_path = str(options.target.base.path)
    data_hash = _data_hash(train_set)
    scheduler, steps_per_epoch, total_steps, step = start_schedule(
        options, checkpoint, model, optimizer, len(train_set), data_hash, torch
    )
    report.started_at_step = step

    record = _run_record(options, report, data_hash, total_steps)
    if validation_set and record["validation_before"] is None:
        record["validation_before"] = mean_loss(model, validation_set, loaded, hyper.batch_size, progress)
    report.validation_before = record["validation_before"]
    started = time.monotonic()
    task = progress.add_task("training", total=total_steps, completed=step, loss="") if progress else None
    window: list[float] = []
    pending: list[tuple[int, float, Any]] = []  # (step, lr, loss on the device) not read yet

    def read_losses() -> None:
        for done, rate, value in pending:
            loss = float(value)
            window[:] = [*window[-9:], loss]
            record["losses"].append({"step": done, "loss": round(loss, 5), "lr": rate})
        pending.clear()
        report.last_train_loss = sum(window) / len(window) if window else None
        if progress and window:
            progress.update(task, loss=f"loss {report.last_train_loss:.4f}")

    lengths = [len(example.ids) for example in train_set]
    model.train()
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        batches = epoch_batches(lengths, hyper.batch_size, hyper.seed + epoch, hyper.group_by_length)
        groups = [
            batches[i : i + hyper.gradient_accumulation]
            for i in range(0, len(batches), hyper.gradient_accumulation)
        ]
        for group in groups[offset:]:
            loss = optimizer_step(
                model, [[train_set[i] for i in b] for b in group], loaded, parameters, torch
            )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            pending.append((step, scheduler.get_last_lr()[0], loss))
            end_of_epoch = step % steps_per_epoch == 0
            checkpoint_now = step < total_steps and (
                step % hyper.save_every == 0 if hyper.save_every else end_of_epoch
            )
            if checkpoint_now or step % LOSS_READ_EVERY == 0 or step >= total_steps:
                read_losses()
            if progress:
                progress.update(task, completed=step)
            if checkpoint_now:
                _save_checkpoint(options.out, step, model, optimizer, scheduler, record, torch, hyper)
            if step >= total_steps:
                break
    read_losses()
    report.seconds = time.monotonic() - started
    report.steps = step
    model.save_pretrained(options.out / ADAPTER_FOLDER, save_embedding_layers=False)
    if validation_set:
        report.validation_after = mean_loss(model, validation_set, loaded, hyper.batch_size, progress)
    record.update(
        steps=step,
        validation_after=report.validation_after,
        train_loss=report.last_train_loss,
        seconds=round(report.seconds, 2),
    )
    _write_json(options.out / RUN_FILE, record)
    write_model_card(options.out, record)
    return report


def start_schedule(
    options: Any,
    checkpoint: Path | None,
    model: Any,
    optimizer: Any,
    examples: int,
    data_hash: str,
    torch: Any,
) -> tuple[Any, int, int, int]:
    """Ready the run folder, the learning-rate schedule and, resuming, the checkpoint's state.

    Returns the scheduler, the optimizer steps per epoch over ``examples``, the total steps
    and the step training starts at. ``options`` is a ``TrainOptions`` or a DPO run's options.
    """
    hyper = options.hyper
    if options.overwrite and checkpoint is None and options.out.exists():
        shutil.rmtree(options.out)  # only now that the data, the model and its LoRA layers are ready
    options.out.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = math.ceil(math.ceil(examples / hyper.batch_size) / hyper.gradient_accumulation)
    total_steps = hyper.max_steps or hyper.epochs * steps_per_epoch
    warmup = math.ceil(hyper.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, warmup, total_steps))
    step = 0
    if checkpoint is not None:
        from peft import set_peft_model_state_dict

        step = _restore(
            checkpoint, model, optimizer, scheduler, hyper, data_hash, torch, set_peft_model_state_dict
        )
    return scheduler, steps_per_epoch, total_steps, step


def lora_model(model: Any, hyper: FinetuneSettings) -> tuple[Any, list[Any], Any]:
    """``model`` with peft LoRA layers as ``hyper`` says (seeded), its trainable parameters, and their AdamW."""
    import torch
    from peft import LoraConfig, get_peft_model

    # peft only refuses a list when no name matches; a misspelled one beside good ones would be ignored.
    linear = {
        name.rpartition(".")[2]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    unknown = [name for name in hyper.target_modules if name not in linear]
    if unknown:
        raise TrainingError(
            f"[finetune] target_modules: the model has no {', '.join(unknown)} projection; "
            f"its linear layers are {', '.join(sorted(linear))}"
        )
    torch.manual_seed(hyper.seed)
    config = LoraConfig(
        r=hyper.rank,
        lora_alpha=hyper.alpha,
        lora_dropout=hyper.dropout,
        target_modules=list(hyper.target_modules),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    parameters = [p for p in model.parameters() if p.requires_grad]
    return model, parameters, torch.optim.AdamW(parameters, lr=hyper.learning_rate, weight_decay=0.0)


def import_torch() -> tuple[Any, Any]:
    try:
        import peft  # noqa: F401 - needed by train, checked before the model loads
        import torch
        from transformers.utils import logging as transformers_logging

        engine = transformers_engine()
    except ImportError as error:
        raise TrainingError(f"training needs {error.name or 'torch'}: run `{INSTALL_HINT}`") from None
    transformers_logging.disable_progress_bar()  # the commands show their own progress
    return torch, engine


def load_base(
    target: AdapterTarget, hyper: FinetuneSettings, engine: Any = None, progress: Any = None
) -> Any:
    """The base model and tokenizer on the chosen device (a GGUF is dequantized to the chosen dtype)."""
    if engine is None:
        engine = import_torch()[1]
    base = target.base
    task = progress.add_task(f"loading {base.path.name}", total=None, loss="") if progress else None
    try:
        return engine.load(
            base.folder,
            base.gguf_file,
            device=hyper.device,
            dtype=hyper.dtype,
            table="finetune",
            context_window=None,
            chat_template=target.chat_template,
        )
    except ModelLoadError as error:
        raise TrainingError(f"base model {base.describe()}: {error}") from None
    finally:
        if progress:
            progress.remove_task(task)


def prompt_style(target: AdapterTarget, loaded: Any) -> PromptStyle:
    return PromptStyle(
        target.prompt_format, loaded.chat_template, loaded.bos_text, loaded.eos_text, target.alpaca_variant
    )


def bos_prefix(target: AdapterTarget, loaded: Any) -> list[int]:
    """The BOS token the bot's tokenizer puts before a prompt (as llama.cpp decides for a GGUF), or none."""
    if target.base.gguf_file:
        metadata = read_gguf_header(target.base.path).metadata
        adds = metadata.get("tokenizer.ggml.add_bos_token", True) in (True, "true")
    else:
        adds = bool(getattr(loaded.tokenizer, "add_bos_token", False))
    bos = loaded.tokenizer.bos_token_id
    return [bos] if adds and bos is not None else []


def encode(
    loaded: Any, texts: Sequence[TrainingText], max_length: int, read: ReadReport, prefix: list[int]
) -> list[Encoded]:
    """Token ids of each example, prompt and answer tokenized apart as the bot's generation sees them."""
    tokenizer = loaded.tokenizer
    encoded = []
    for index, text in enumerate(texts):
        prompt = prefix + tokenizer.encode(text.prompt, add_special_tokens=False)
        answer = tokenizer.encode(text.answer, add_special_tokens=False)
        if len(prompt) + len(answer) > max_length:
            read.skipped[f"longer than max_length ({max_length} tokens)"] += 1
            read.kept -= 1
            continue
        encoded.append(Encoded(prompt + answer, len(prompt), index))
    return encoded


def epoch_batches(
    lengths: Sequence[int], batch_size: int, seed: int, group_by_length: bool
) -> list[list[int]]:
    """One epoch's batches of example indices: every example once, in an order fixed by ``seed``.

    Without grouping, the batches are a seeded shuffle cut in ``batch_size`` pieces. With it,
    the same shuffle is sorted by length (longest first) within windows of ``GROUP_BATCHES``
    batches, so a batch pads to a similar length; the batches are then shuffled with the same
    seed, and the one holding the longest example goes first, so a batch that does not fit in
    memory fails at the first step rather than hours in.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    window = batch_size * GROUP_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
    return [batches[longest], *batches[:longest], *batches[longest + 1 :]]


def _tensors(batch: Sequence[Encoded], pad_id: int, device: str, torch: Any) -> tuple[Any, Any, Any, Any]:
    """Input ids, attention mask, labels and the positions that predict an answer token, on ``device``.

    They are built on the host: the positions are known from the examples, so finding them
    costs no device round trip.
    """
    width = max(len(e.ids) for e in batch)
    ids = torch.tensor([e.ids + [pad_id] * (width - len(e.ids)) for e in batch])
    mask = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in batch])
    labels = torch.tensor(
        [[-100] * e.prompt_tokens + e.ids[e.prompt_tokens :] + [-100] * (width - len(e.ids)) for e in batch]
    )
    # Position p predicts token p + 1: an answer token when prompt_tokens <= p + 1 < len(ids).
    positions = torch.tensor(
        sorted(set().union(*(range(e.prompt_tokens - 1, len(e.ids) - 1) for e in batch)))
    )
    if not str(device).startswith("cuda"):
        return ids, mask, labels, positions
    # A copy from pageable memory makes the host wait for every kernel queued before it;
    # from pinned memory it is queued like a kernel.
    ids, mask, labels, positions = (
        t.pin_memory().to(device, non_blocking=True) for t in (ids, mask, labels, positions)
    )
    return ids, mask, labels, positions


def batch_loss(model: Any, batch: Sequence[Encoded], loaded: Any) -> tuple[Any, int]:
    """The summed loss of the answer tokens of ``batch`` and their number.

    Only the positions where some row of the batch predicts an answer token go through
    the output layer (transformers' ``logits_to_keep``), whose cost with SmolLM2's 49K-token
    vocabulary is about a fifth of a forward pass over the whole sequence.
    """
    import torch
    import torch.nn.functional as functional

    ids, mask, labels, positions = _tensors(batch, loaded.pad_token_id or 0, loaded.device, torch)
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=positions).logits
    wanted = labels[:, 1:][:, positions]
    loss = functional.cross_entropy(
        logits.float().flatten(0, 1), wanted.flatten(), ignore_index=-100, reduction="sum"
    )
    return loss, sum(len(e.ids) - e.prompt_tokens for e in batch)


def optimizer_step(
    model: Any, group: list[list[Encoded]], loaded: Any, parameters: list[Any], torch: Any
) -> Any:
    """Forward and backward passes over ``group``'s batches; their loss per answer token.

    The loss is returned as a tensor on the device: reading it (``float``) waits for the
    device, so the training loop reads a few steps' losses at once.
    """
    tokens = sum(len(e.ids) - e.prompt_tokens for batch in group for e in batch)
    total = None
    for batch in group:
        loss, _ = batch_loss(model, batch, loaded)
        (loss / tokens).backward()
        total = loss.detach() if total is None else total + loss.detach()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    return total / tokens


def mean_loss(
    model: Any, examples: Sequence[Encoded], loaded: Any, batch_size: int, progress: Any = None
) -> float:
    """The mean loss per answer token over ``examples`` (no dropout, no gradients)."""
    import torch

    model.eval()
    examples = sorted(examples, key=lambda e: len(e.ids))  # batches of similar length pad little
    total, tokens = torch.zeros((), device=loaded.device), 0
    task = progress.add_task("validation", total=len(examples), loss="") if progress else None
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            loss, count = batch_loss(model, batch, loaded)
            total, tokens = total + loss.float(), tokens + count
            if progress:
                progress.update(task, advance=len(batch))
    if progress:
        progress.remove_task(task)
    return float(total) / tokens


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to the peak, then linear decay towards zero at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _data_hash(examples: Sequence[Encoded]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.prompt_tokens, example.ids]).encode())
    return digest.hexdigest()[:16]


def _run_record(
    options: TrainOptions, report: TrainReport, data_hash: str, total_steps: int
) -> dict[str, Any]:
    previous = _read_json(options.out / RUN_FILE) if options.resume else {}
    target = options.target
    return {
        "command": "train",
        "base_model": target.base.record(),
        "backend": target.backend,
        "prompt_format": target.prompt_format,
        "alpaca_variant": target.alpaca_variant,
        "chat_template": target.chat_template,
        "data": {
            "source": str(options.data),
            "files": [str(r.path) for r in report.reads],
            "examples": report.examples,
            "validation_examples": report.validation_examples,
            "skipped": {str(r.path): dict(r.skipped) for r in report.reads if r.skipped},
            "hash": data_hash,
            "dataset_card": dataset_record(options.data),
            "sources": report.sources,
        },
        "settings": options.hyper.model_dump(),
        "device": report.device,
        "total_steps": total_steps,
        "validation_before": previous.get("validation_before"),
        "losses": previous.get("losses", [])[: report.started_at_step],
    }


def _source_record(path: Path, files: DataFiles, weight: float, examples: int, used: int) -> dict[str, Any]:
    """One data source of a run as ``training.json`` keeps it (``data.sources``)."""
    return {
        "path": str(path),
        "file": str(files.train),
        "format": files.format,
        "weight": weight,
        "examples": examples,
        "used": used,
        "dataset_card": dataset_record(path),
    }


def _prepare_folder(options: TrainOptions) -> Path | None:
    """Check the run folder; with ``resume``, the newest checkpoint to continue from."""
    out = options.out
    if options.resume:
        newest = newest_checkpoint(out)
        if newest is None:
            raise TrainingError(f"{out} has no checkpoint to resume from ({out}/{CHECKPOINTS}/step-N)")
        return newest
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not options.overwrite:
        raise TrainingError(
            f"{out} exists: pass --overwrite to replace it, or --resume to continue from its newest checkpoint"
        )
    return None


def newest_checkpoint(out: Path) -> Path | None:
    found = sorted((out / CHECKPOINTS).glob("step-*/" + STATE_FILE)) if (out / CHECKPOINTS).is_dir() else []
    return found[-1].parent if found else None


def _save_checkpoint(
    out: Path, step: int, model: Any, optimizer: Any, scheduler: Any, record: dict[str, Any], torch: Any,
    hyper: FinetuneSettings,
) -> None:  # fmt: skip
    folder = out / CHECKPOINTS / f"step-{step:06d}"
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial / ADAPTER_FOLDER, save_embedding_layers=False)
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "settings": {key: getattr(hyper, key) for key in RESUME_KEYS},
            "data_hash": record["data"]["hash"],
            "rng": torch.get_rng_state(),
            # Dropout on a GPU draws from its own generators.
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        partial / STATE_FILE,
    )
    partial.rename(folder)
    _write_json(out / RUN_FILE, record)  # the losses so far, for a resumed run to carry on
    kept = sorted(p for p in (out / CHECKPOINTS).glob("step-*") if not p.name.endswith(".partial"))
    for old in kept[: -hyper.keep_checkpoints]:
        shutil.rmtree(old)


def _restore(
    folder: Path, model: Any, optimizer: Any, scheduler: Any, hyper: FinetuneSettings, data_hash: str, torch: Any,
    set_state: Any,
) -> int:  # fmt: skip
    from safetensors.torch import load_file

    state = torch.load(folder / STATE_FILE, weights_only=False)
    changed = [key for key in RESUME_KEYS if state["settings"].get(key) != getattr(hyper, key)]
    if changed:
        details = ", ".join(f"{k} {state['settings'].get(k)!r} -> {getattr(hyper, k)!r}" for k in changed)
        raise TrainingError(f"cannot resume {folder}: settings changed since it was saved ({details})")
    if state["data_hash"] != data_hash:
        raise TrainingError(f"cannot resume {folder}: the training data changed since it was saved")
    set_state(model, load_file(str(folder / ADAPTER_FOLDER / "adapter_model.safetensors")))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"])


def read_run(out: Path) -> dict[str, Any]:
    """The ``training.json`` of a finished run folder."""
    record = _read_json(out / RUN_FILE)
    if not record:
        raise TrainingError(f"{out} is not a training run folder: it has no {RUN_FILE}")
    return record


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise TrainingError(f"{path}: cannot read it ({error})") from None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)
