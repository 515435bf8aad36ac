"""``botkit finetune dpo``: Direct Preference Optimization of a LoRA adapter on exported preference pairs.

The policy is the base model with LoRA layers: new ones, or the adapter of an
SFT run (``--from RUN``) trained further. The reference it is measured against
is not a second model in memory: its log-probabilities of every pair's answers
are computed once, before the first step, with the adapter as it starts
(``[finetune.dpo] reference = "start"``) or switched off (``"base"``). The loss
is DPO's sigmoid loss (Rafailov et al. 2023) over the summed log-probabilities
of the answer tokens; the prompt carries none. The run folder, its checkpoints,
``--resume`` and ``training.json`` are those of ``botkit finetune train``, so
``eval``, ``convert`` and ``deploy`` take a DPO run as they take an SFT run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, astuple, dataclass
from pathlib import Path
from typing import Any

from .model_card import write_model_card
from .scores import ADVICE, warnings_for
from .settings import FinetuneSettings
from .train import (
    ADAPTER_FOLDER,
    RUN_FILE,
    Encoded,
    TrainingError,
    TrainOptions,
    TrainReport,
    _data_hash,
    _prepare_folder,
    _read_json,
    _run_record,
    _save_checkpoint,
    _tensors,
    _write_json,
    bos_prefix,
    import_torch,
    load_base,
    lora_model,
    prompt_style,
    read_run,
    start_schedule,
)
from .training_data import PreferenceText, ReadReport, find_preference_files, read_preferences

# The LoRA settings an adapter trained further with --from keeps: its shape is the SFT run's.
ADAPTER_KEYS = ("rank", "alpha", "dropout", "target_modules")


@dataclass(frozen=True)
class EncodedPair:
    """A preference pair as token ids: the prompt followed by each answer."""

    chosen: Encoded
    rejected: Encoded


@dataclass(frozen=True)
class PreferenceScores:
    """How a model ranks a set of pairs, against the reference.

    ``accuracy``: the share of pairs whose chosen answer gained more log-probability over the
    reference than the rejected one; ``margin``: the mean reward margin, beta times that gain
    difference; ``logp_margin``: the mean log-probability of chosen minus rejected answers.
    """

    loss: float
    accuracy: float
    margin: float
    logp_margin: float

    def shown(self) -> str:
        return (
            f"loss {self.loss:.4f}, reward accuracy {self.accuracy:.2f}, reward margin {self.margin:.4f}, "
            f"log-probability margin {self.logp_margin:.3f}"
        )


@dataclass
class DpoReport(TrainReport):
    """A DPO run: a training report whose losses are DPO losses, with the pairs' scores."""

    start: Path | None = None
    before: PreferenceScores | None = None
    after: PreferenceScores | None = None
    last: PreferenceScores | None = None  # the mean of the last 10 steps

    def lines(self) -> list[str]:
        lines = [line for read in self.reads for line in read.lines()]
        rate = (self.steps - self.started_at_step) / self.seconds if self.seconds else 0.0
        resumed = f", resumed at step {self.started_at_step}" if self.started_at_step else ""
        origin = f" from {self.start}" if self.start else ""
        lines.append(f"trained {self.steps} DPO steps{origin} on {self.device}{resumed} ({rate:.2f} steps/s)")
        if self.last is not None:
            lines.append(f"training: {self.last.shown()} (mean of the last 10 steps)")
        if self.before is None or self.after is None:
            reason = (
                "no usable validation pair" if len(self.reads) > 1 else "the data has no validation split"
            )
            return [*lines, f"no validation scores: {reason}"]
        lines += [
            f"validation before: {self.before.shown()}",
            f"validation after:  {self.after.shown()} ({self.validation_examples} pairs)",
        ]
        worse = warnings_for(self.before.loss, self.after.loss)
        return [*lines, *worse, f"  {ADVICE}"] if worse else lines


def dpo(
    options: TrainOptions,
    start: Path | None = None,
    progress: Any = None,
    on_start: Callable[[], None] | None = None,
) -> DpoReport:
    """Train a LoRA adapter with DPO on the preference pairs in ``options.data``.

    ``options.hyper`` holds the settings with ``[finetune.dpo]`` applied (its learning rate and
    epochs); ``start`` is an SFT run folder whose adapter is trained further.
    """
    hyper = options.hyper
    checkpoint = _prepare_folder(options)
    files = find_preference_files(options.data)
    if checkpoint is not None:
        _check_resumable(options.out, hyper, start)
    if on_start is not None:
        on_start()
    torch, engine = import_torch()
    loaded = load_base(options.target, hyper, engine, progress)
    style, prefix = prompt_style(options.target, loaded), bos_prefix(options.target, loaded)
    report = DpoReport(options.out, loaded.device, start=start)
    train_set = _read_pairs(files.train, style, loaded, hyper.max_length, prefix, report)
    validation_set = (
        _read_pairs(files.validation, style, loaded, hyper.max_length, prefix, report)
        if files.validation is not None
        else []
    )
    if not train_set:
        raise TrainingError(
            "no usable preference pair:\n" + "\n".join(line for r in report.reads for line in r.lines())
        )
    report.examples, report.validation_examples = len(train_set), len(validation_set)
    model, parameters, optimizer = policy_model(loaded.model, hyper, start)
    model.peft_config["default"].base_model_name_or_path = str(options.target.base.path)
    # Before any step (and before a checkpoint is restored): the reference is the model as it starts.
    use_base = hyper.dpo.reference == "base"
    references = reference_logps(model, train_set, loaded, hyper.batch_size, use_base, progress)
    validation_references = reference_logps(
        model, validation_set, loaded, hyper.batch_size, use_base, progress
    )
    data_hash = _data_hash([e for pair in train_set for e in (pair.chosen, pair.rejected)])
    scheduler, steps_per_epoch, total_steps, step = start_schedule(
        options, checkpoint, model, optimizer, len(train_set), data_hash, torch
    )
    report.started_at_step = step

    record = _run_record(options, report, data_hash, total_steps)
    record["command"] = "dpo"
    previous = _read_json(options.out / RUN_FILE).get("dpo", {}) if options.resume else {}
    record["dpo"] = {
        "from": str(start) if start else None,
        "beta": hyper.dpo.beta,
        "reference": hyper.dpo.reference,
        "validation_before": previous.get("validation_before"),
    }
    if validation_set and record["dpo"]["validation_before"] is None:
        before = score(model, validation_set, validation_references, loaded, hyper, progress)
        record["dpo"]["validation_before"], record["validation_before"] = asdict(before), before.loss
    if record["dpo"]["validation_before"] is not None:
        report.before = PreferenceScores(**record["dpo"]["validation_before"])
        report.validation_before = report.before.loss
    started = time.monotonic()
    task = progress.add_task("DPO", total=total_steps, completed=step, loss="") if progress else None
    window: list[PreferenceScores] = []
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        for group in step_groups(len(train_set), hyper, epoch, torch)[offset:]:
            model.train()
            scores = dpo_step(model, [[train_set[i] for i in b] for b in group],
                              [references[b] for b in group], loaded, hyper.dpo.beta, parameters)  # fmt: skip
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window = [*window[-9:], scores]
            report.last = _mean(window)
            report.last_train_loss = report.last.loss
            record["losses"].append(
                {"step": step, **{k: round(v, 5) for k, v in asdict(scores).items()},
                 "lr": scheduler.get_last_lr()[0]}
            )  # fmt: skip
            if progress:
                progress.update(
                    task, completed=step, loss=f"loss {report.last.loss:.4f}, acc {report.last.accuracy:.2f}"
                )
            if step < total_steps and (
                step % hyper.save_every == 0 if hyper.save_every else step % steps_per_epoch == 0
            ):
                _save_checkpoint(options.out, step, model, optimizer, scheduler, record, torch, hyper)
            if step >= total_steps:
                break
    report.seconds = time.monotonic() - started
    report.steps = step
    model.save_pretrained(options.out / ADAPTER_FOLDER, save_embedding_layers=False)
    if validation_set:
        report.after = score(model, validation_set, validation_references, loaded, hyper, progress)
        report.validation_after = report.after.loss
        record["dpo"]["validation_after"] = asdict(report.after)
    record.update(
        steps=step,
        validation_after=report.validation_after,
        train_loss=report.last_train_loss,
        seconds=round(report.seconds, 2),
    )
    _write_json(options.out / RUN_FILE, record)
    write_model_card(options.out, record)
    return report


def dpo_settings(hyper: FinetuneSettings, start: Path | None) -> FinetuneSettings:
    """``hyper`` with the LoRA shape of the adapter DPO continues (``start``'s), checked for a run folder."""
    if start is None:
        return hyper
    if not (start / ADAPTER_FOLDER / "adapter_config.json").is_file():
        raise TrainingError(
            f"--from {start}: not a finished `botkit finetune train` run (no {ADAPTER_FOLDER}/adapter_config.json)"
        )
    trained = read_run(start).get("settings", {})
    return hyper.model_copy(update={key: trained[key] for key in ADAPTER_KEYS if key in trained})


def policy_model(model: Any, hyper: FinetuneSettings, start: Path | None) -> tuple[Any, list[Any], Any]:
    """The model DPO trains: new LoRA layers, or ``start``'s adapter made trainable; its parameters, AdamW."""
    if start is None:
        return lora_model(model, hyper)
    import torch
    from peft import PeftModel

    torch.manual_seed(hyper.seed)  # the LoRA dropout draws as a new adapter's would
    model = PeftModel.from_pretrained(model, str(start / ADAPTER_FOLDER), is_trainable=True)
    parameters = [p for p in model.parameters() if p.requires_grad]
    return model, parameters, torch.optim.AdamW(parameters, lr=hyper.learning_rate, weight_decay=0.0)


def _read_pairs(
    path: Path, style: Any, loaded: Any, max_length: int, prefix: list[int], report: DpoReport
) -> list[EncodedPair]:
    texts, read = read_preferences(path, style)
    report.reads.append(read)
    return encode_pairs(loaded, texts, max_length, read, prefix)


def encode_pairs(
    loaded: Any, texts: Sequence[PreferenceText], max_length: int, read: ReadReport, prefix: list[int]
) -> list[EncodedPair]:
    """Token ids of each pair: the prompt tokenized apart from the answers, as ``train`` encodes examples."""
    tokenizer = loaded.tokenizer
    pairs = []
    for index, text in enumerate(texts):
        prompt = prefix + tokenizer.encode(text.prompt, add_special_tokens=False)
        chosen = tokenizer.encode(text.chosen, add_special_tokens=False)
        rejected = tokenizer.encode(text.rejected, add_special_tokens=False)
        if len(prompt) + max(len(chosen), len(rejected)) > max_length:
            read.skipped[f"longer than max_length ({max_length} tokens)"] += 1
            read.kept -= 1
            continue
        pairs.append(
            EncodedPair(
                Encoded(prompt + chosen, len(prompt), index), Encoded(prompt + rejected, len(prompt), index)
            )
        )
    return pairs


def answer_logps(model: Any, batch: Sequence[Encoded], loaded: Any) -> Any:
    """The summed log-probability of each example's answer tokens (a tensor, one value per example).

    As ``train.batch_loss``, only the positions that predict an answer token go through the output layer.
    """
    import torch
    import torch.nn.functional as functional

    ids, mask, labels, positions = _tensors(batch, loaded.pad_token_id or 0, loaded.device, torch)
    targets = labels[:, 1:]
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=positions).logits
    wanted = targets[:, positions]
    losses = functional.cross_entropy(
        logits.float().transpose(1, 2), wanted, ignore_index=-100, reduction="none"
    )
    return -losses.sum(dim=1)


def pair_logps(model: Any, pairs: Sequence[EncodedPair], loaded: Any) -> tuple[Any, Any]:
    """The answers' log-probabilities of each pair, chosen and rejected, from one forward pass."""
    logps = answer_logps(model, [p.chosen for p in pairs] + [p.rejected for p in pairs], loaded)
    return logps[: len(pairs)], logps[len(pairs) :]


def dpo_loss(chosen: Any, rejected: Any, reference: Any, beta: float) -> tuple[Any, Any]:
    """DPO's sigmoid loss of each pair and its reward margin.

    ``chosen`` and ``rejected`` are the policy's log-probabilities of the answers, ``reference``
    the reference's (a pair per row: chosen, rejected). The reward of an answer is beta times
    the log-probability the policy gained on it over the reference.
    """
    import torch.nn.functional as functional

    margin = beta * ((chosen - reference[:, 0]) - (rejected - reference[:, 1]))
    return -functional.logsigmoid(margin), margin


def reference_logps(
    model: Any,
    pairs: Sequence[EncodedPair],
    loaded: Any,
    batch_size: int,
    use_base: bool,
    progress: Any = None,
) -> Any:
    """The reference's log-probabilities of each pair's answers (N rows: chosen, rejected).

    The reference is ``model`` as it is now (``use_base``: with its adapter switched off), in
    evaluation mode, so dropout does not move it.
    """
    import contextlib

    import torch

    model.eval()
    rows = []
    task = progress.add_task("reference", total=len(pairs), loss="") if progress and pairs else None
    adapter_off = model.disable_adapter() if use_base else contextlib.nullcontext()
    with torch.no_grad(), adapter_off:
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start : start + batch_size]
            rows.append(torch.stack(pair_logps(model, batch, loaded), dim=1))
            if task is not None:
                progress.update(task, advance=len(batch))
    if task is not None:
        progress.remove_task(task)
    return torch.cat(rows) if rows else torch.empty((0, 2))


def step_groups(count: int, hyper: FinetuneSettings, epoch: int, torch: Any) -> list[list[list[int]]]:
    """The pairs of each optimizer step of ``epoch``: shuffled by the seed, in batches per forward pass."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(hyper.seed + epoch)).tolist()
    batches = [order[i : i + hyper.batch_size] for i in range(0, count, hyper.batch_size)]
    step = hyper.gradient_accumulation
    return [batches[i : i + step] for i in range(0, len(batches), step)]


def dpo_step(
    model: Any, group: list[list[EncodedPair]], references: list[Any], loaded: Any, beta: float,
    parameters: list[Any],
) -> PreferenceScores:  # fmt: skip
    """Forward and backward passes over ``group``'s batches, the loss averaged over all their pairs."""
    import torch

    count = sum(len(batch) for batch in group)
    totals = [0.0, 0.0, 0.0, 0.0]
    for batch, reference in zip(group, references, strict=True):
        chosen, rejected = pair_logps(model, batch, loaded)
        losses, margins = dpo_loss(chosen, rejected, reference, beta)
        (losses.sum() / count).backward()
        for index, value in enumerate((losses, (margins > 0).float(), margins, chosen - rejected)):
            totals[index] += float(value.detach().sum())
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    return PreferenceScores(*(total / count for total in totals))


def score(
    model: Any, pairs: Sequence[EncodedPair], references: Any, loaded: Any, hyper: FinetuneSettings,
    progress: Any = None,
) -> PreferenceScores:  # fmt: skip
    """How ``model`` ranks ``pairs`` against their reference log-probabilities (no dropout, no gradients)."""
    import torch

    model.eval()
    totals = [0.0, 0.0, 0.0, 0.0]
    task = progress.add_task("validation", total=len(pairs), loss="") if progress else None
    with torch.no_grad():
        for start in range(0, len(pairs), hyper.batch_size):
            batch = pairs[start : start + hyper.batch_size]
            chosen, rejected = pair_logps(model, batch, loaded)
            losses, margins = dpo_loss(
                chosen, rejected, references[start : start + len(batch)], hyper.dpo.beta
            )
            for index, value in enumerate((losses, (margins > 0).float(), margins, chosen - rejected)):
                totals[index] += float(value.sum())
            if progress:
                progress.update(task, advance=len(batch))
    if progress:
        progress.remove_task(task)
    return PreferenceScores(*(total / len(pairs) for total in totals))


def _mean(window: Sequence[PreferenceScores]) -> PreferenceScores:
    columns = zip(*(astuple(scores) for scores in window), strict=True)
    return PreferenceScores(*(sum(column) / len(window) for column in columns))


def _check_resumable(out: Path, hyper: FinetuneSettings, start: Path | None) -> None:
    """A DPO run resumes only with the beta, reference and starting adapter it was begun with."""
    recorded = _read_json(out / RUN_FILE).get("dpo")
    if recorded is None:
        raise TrainingError(f"cannot resume {out} with `botkit finetune dpo`: it is not a DPO run")
    now = {"from": str(start) if start else None, "beta": hyper.dpo.beta, "reference": hyper.dpo.reference}
    changed = [
        f"{key} {recorded.get(key)!r} -> {value!r}"
        for key, value in now.items()
        if recorded.get(key) != value
    ]
    if changed:
        raise TrainingError(
            f"cannot resume {out}: DPO settings changed since it began ({', '.join(changed)})"
        )
