"""Whether a trained adapter scored worse than its base model, from what ``train`` and ``eval`` measured.

A default run on a small export can make the model worse (validation loss
0.6442 -> 0.6452, token F1 0.76 -> 0.69) and nothing said so: ``train`` and
``eval`` end with these lines, and ``deploy`` repeats them from the run folder's
records (``training.json``, ``evaluation.json``) before it deploys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EVAL_FILE = "evaluation.json"  # what `botkit finetune eval RUN` measured last
ADVICE = (
    "more or cleaner data, fewer --epochs or a lower --lr may help; "
    "`botkit finetune eval RUN` compares answers"
)


def worse_than_base(
    what: str, base: float | None, adapter: float | None, *, higher_is_better: bool
) -> str | None:
    """A line saying the adapter scored worse than the base model on ``what``; None when it did not."""
    if base is None or adapter is None:
        return None
    worse = adapter < base if higher_is_better else adapter > base
    if not worse:
        return None
    return f"the adapter is worse than the base model: {what} {base:.4g} (base) -> {adapter:.4g} (adapter)"


def warnings_for(
    loss_before: float | None,
    loss_after: float | None,
    f1_base: float | None = None,
    f1_adapter: float | None = None,
    *,
    split: str = "validation",
) -> list[str]:
    """The warnings for a run's numbers: its loss on ``split``, and the token F1 of its answers if measured."""
    found = [
        worse_than_base(f"{split} loss", loss_before, loss_after, higher_is_better=False),
        worse_than_base("mean token F1", f1_base, f1_adapter, higher_is_better=True),
    ]
    return [f"warning: {line}" for line in found if line]


def recorded_warnings(run: Path) -> list[str]:
    """The warnings from what ``train`` (``training.json``) and ``eval`` (``evaluation.json``) recorded in ``run``."""
    training, evaluation = read_record(run / "training.json"), read_record(run / EVAL_FILE)
    found = warnings_for(training.get("validation_before"), training.get("validation_after"))
    if evaluation:
        found += warnings_for(
            evaluation.get("base_loss"),
            evaluation.get("adapter_loss"),
            evaluation.get("base_f1"),
            evaluation.get("adapter_f1"),
            split=evaluation.get("split", "validation"),
        )
    return list(dict.fromkeys(found))


def read_record(path: Path) -> dict[str, Any]:
    """A JSON object file's content; empty when it is missing or not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
