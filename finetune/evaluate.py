"""``botkit finetune eval``: how a trained adapter does on held-out data, against the base model it was trained on.

For the base model and the adapter: the mean loss per answer token and its
perplexity, and for the first examples the answers each writes (greedy) with
their token F1 against the reference answer (as SQuAD scores answers).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base_model import AdapterTarget
from .scores import ADVICE, warnings_for
from .settings import FinetuneSettings
from .train import (
    ADAPTER_FOLDER,
    Encoded,
    TrainingError,
    bos_prefix,
    encode,
    load_base,
    mean_loss,
    prompt_style,
)
from .training_data import ReadReport, TrainingFormat, find_files, read_examples

WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Sample:
    question: str
    reference: str
    base: str
    adapter: str

    @property
    def base_f1(self) -> float:
        return token_f1(self.base, self.reference)

    @property
    def adapter_f1(self) -> float:
        return token_f1(self.adapter, self.reference)


@dataclass
class EvalReport:
    data: Path
    split: str = "validation"
    examples: int = 0
    base_loss: float = 0.0
    adapter_loss: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    read: ReadReport | None = None

    def lines(self) -> list[str]:
        import math

        lines = self.read.lines() if self.read else []
        lines.append(f"{'':10}{'loss':>10}{'perplexity':>12}")
        for label, loss in (("base", self.base_loss), ("adapter", self.adapter_loss)):
            lines.append(f"{label:10}{loss:>10.4f}{math.exp(min(loss, 50.0)):>12.2f}")
        for number, sample in enumerate(self.samples, 1):
            lines += [
                f"\n#{number} {sample.question}",
                f"  reference: {sample.reference}",
                f"  base     : {sample.base}  (F1 {sample.base_f1:.2f})",
                f"  adapter  : {sample.adapter}  (F1 {sample.adapter_f1:.2f})",
            ]
        base_f1, adapter_f1 = self.mean_f1
        if base_f1 is not None and adapter_f1 is not None:
            lines.append(
                f"\nmean token F1 over {len(self.samples)} answers: base {base_f1:.2f}, adapter {adapter_f1:.2f}"
            )
        worse = warnings_for(self.base_loss, self.adapter_loss, base_f1, adapter_f1, split=self.split)
        return [*lines, *worse, f"  {ADVICE}"] if worse else lines

    @property
    def mean_f1(self) -> tuple[float | None, float | None]:
        """The mean token F1 of the base model's and the adapter's sample answers (None without samples)."""
        if not self.samples:
            return None, None
        count = len(self.samples)
        return (
            sum(s.base_f1 for s in self.samples) / count,
            sum(s.adapter_f1 for s in self.samples) / count,
        )

    def as_dict(self) -> dict[str, Any]:
        base_f1, adapter_f1 = self.mean_f1
        return {
            "data": str(self.data),
            "split": self.split,
            "examples": self.examples,
            "base_loss": self.base_loss,
            "adapter_loss": self.adapter_loss,
            "base_f1": base_f1,
            "adapter_f1": adapter_f1,
            "samples": [
                {**sample.__dict__, "base_f1": sample.base_f1, "adapter_f1": sample.adapter_f1}
                for sample in self.samples
            ],
        }


def token_f1(answer: str, reference: str) -> float:
    """Overlap of the lower-cased words of two answers: the harmonic mean of precision and recall."""
    got, wanted = Counter(WORD.findall(answer.lower())), Counter(WORD.findall(reference.lower()))
    common = sum((got & wanted).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(got.values()), common / sum(wanted.values())
    return 2 * precision * recall / (precision + recall)


def evaluate(
    run: Path,
    target: AdapterTarget,
    data: Path,
    *,
    split: str = "validation",
    data_format: TrainingFormat | None = None,
    samples: int = 3,
    max_tokens: int = 64,
    hyper: FinetuneSettings | None = None,
    progress: Any = None,
) -> EvalReport:
    """Compare the base model and the adapter in ``run`` on ``split`` of ``data``."""
    from peft import PeftModel

    hyper = hyper or FinetuneSettings()
    adapter = run / ADAPTER_FOLDER
    if not (adapter / "adapter_config.json").is_file():
        raise TrainingError(f"{run} has no trained adapter ({adapter}/adapter_config.json): train first")
    files = find_files(data, data_format)
    path = files.validation if split == "validation" else files.train
    if path is None:
        raise TrainingError(
            f"{data} has no validation split ({files.train.name} only): evaluate with --split train"
        )
    loaded = load_base(target, hyper, progress=progress)
    style = prompt_style(target, loaded)
    texts, read = read_examples(path, files.format, style)
    encoded = encode(loaded, texts, hyper.max_length, read, bos_prefix(target, loaded))
    if not encoded:
        raise TrainingError("no usable example to evaluate:\n" + "\n".join(read.lines()))
    model = PeftModel.from_pretrained(loaded.model, str(adapter))
    report = EvalReport(path, split, examples=len(encoded), read=read)
    with model.disable_adapter():
        report.base_loss = mean_loss(model, encoded, loaded, hyper.batch_size, progress)
    report.adapter_loss = mean_loss(model, encoded, loaded, hyper.batch_size, progress)
    for example in encoded[:samples]:
        text = texts[example.source]
        with model.disable_adapter():
            base = _generate(model, loaded, example, max_tokens, target)
        adapter_answer = _generate(model, loaded, example, max_tokens, target)
        report.samples.append(Sample(text.question, text.reference, base, adapter_answer))
    return report


def _generate(model: Any, loaded: Any, example: Encoded, max_tokens: int, target: AdapterTarget) -> str:
    import torch

    inputs = torch.tensor([example.ids[: example.prompt_tokens]], device=loaded.device)
    with torch.no_grad():
        output = model.generate(
            input_ids=inputs,
            attention_mask=torch.ones_like(inputs),
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=loaded.eos_token_ids or None,
            pad_token_id=loaded.pad_token_id,
        )
    answer = loaded.tokenizer.decode(
        output[0, example.prompt_tokens :], skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    if target.prompt_format == "alpaca":
        from botkit.prompts import ALPACA_STOP

        for stop in ALPACA_STOP:
            answer = answer.split(stop)[0]
    return answer.strip()
