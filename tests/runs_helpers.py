"""Export and run folders for the catalogue tests: a real export, and run folders shaped as train and dpo write them."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from export_helpers import settle, talk

from botkit.finetune.export import ExportOptions, SystemPrompts, run_export
from botkit.testing import bot_factory

PAIRS = {
    "What is a mutex?": "A lock that one task holds at a time.",
    "How do I rotate the staging keys?": "Run the rotate script.",
    "What does idempotent mean?": "Doing it twice changes nothing more.",
}


async def real_export(bot: Any, out: Path) -> None:
    """``botkit export --out OUT --format chat --format alpaca`` of three exchanges talked through the bot."""
    for question, answer in PAIRS.items():
        await talk(bot, question, answer, user="dana", channel="support")
    await settle(bot)
    options = ExportOptions(out=out, formats=("chat", "alpaca"), validation_fraction=0.0)
    await run_export(bot.db, options, SystemPrompts(bot.settings))


def export_of_a_new_bot(tmp_path_factory: Any, out: Path) -> None:
    """``real_export`` from a bot of its own, outside any event loop (where the CLI runs)."""

    async def seed() -> None:
        async with bot_factory(tmp_path_factory)() as bot:
            await real_export(bot, out)

    asyncio.run(seed())


def write_run(
    folder: Path, data: Path, *, command: str = "train", complete: bool = True, adapter: Path | None = None
) -> Path:
    """A run folder as `botkit finetune train` (or dpo) leaves it: finished, or cut short after a checkpoint.

    ``adapter``: a GGUF adapter copied in as `botkit finetune convert` would write it.
    """
    record: dict[str, Any] = {
        "command": command,
        "base_model": {"name": "Smollm2 135M 8k Lc100K Mix1 Ep2", "path": "/models/smol.gguf"},
        "backend": "default",
        "data": {"source": str(data), "examples": 3, "validation_examples": 1},
        "settings": {"rank": 8},
        "device": "cpu",
        "total_steps": 30,
        "validation_before": 2.5,
        "losses": [{"step": 10, "loss": 2.4, "lr": 3e-4}, {"step": 20, "loss": 1.9, "lr": 2e-4}],
    }
    (folder / "checkpoints" / "step-000020").mkdir(parents=True)
    if complete:
        record["losses"].append({"step": 30, "loss": 2.1, "lr": 0.0})
        record.update(steps=30, validation_after=2.25, train_loss=2.1333, seconds=12.5)
        (folder / "adapter").mkdir()
        (folder / "adapter" / "adapter_config.json").write_text("{}", encoding="utf-8")
    (folder / "training.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    if adapter is not None:
        shutil.copy(adapter, folder / "adapter.gguf")
    return folder
