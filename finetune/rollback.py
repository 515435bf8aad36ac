"""The record of deploys (``<data_dir>/deploys.jsonl``) and ``botkit finetune rollback``: the adapter a deploy replaced.

``botkit finetune deploy`` appends one line each time it changes a backend's
``lora_path``: the config file, the backend, the adapter written and the one it
replaced. A rollback deploys the replaced one again, through ``deploy`` with all its
checks, and is recorded too: the records of one config's backend form a stack, a
deploy pushes, a rollback pops, so rolling back twice goes two deploys back.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botkit import BotkitError
from botkit.ops import Settings

RECORD_FILE = "deploys.jsonl"


class RollbackError(BotkitError):
    """Nothing to roll back to, or the config was changed by other means since the last deploy."""


@dataclass(frozen=True, slots=True)
class DeployRecord:
    """One change of a backend's ``lora_path`` made by deploy (or by a rollback)."""

    at: str  # ISO 8601, UTC
    config: str  # the config file's resolved path
    backend: str
    adapter: str | None  # the lora_path written; None: the base model
    previous: str | None  # the lora_path it replaced
    scale: float | None  # the lora_scale written, when deploy set one
    previous_scale: float  # lora_scale before
    rollback: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeployRecord:
        return cls(**{field.name: data[field.name] for field in fields(cls) if field.name in data})


def record_path(settings: Settings) -> Path:
    return settings.storage.data_dir.expanduser() / RECORD_FILE


def config_key(settings: Settings) -> str:
    assert settings.source_path is not None
    return str(settings.source_path.resolve())


def append_record(settings: Settings, record: DeployRecord) -> None:
    """Add ``record`` to the config's data folder (one JSON line, appended)."""
    path = record_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(asdict(record)) + "\n")
        file.flush()
        os.fsync(file.fileno())


def read_records(settings: Settings) -> list[DeployRecord]:
    """Every deploy recorded for this config file, oldest first (a line that cannot be read is skipped)."""
    path = record_path(settings)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as error:
        raise RollbackError(f"{path}: cannot read the record of deploys: {error}") from None
    key = config_key(settings) if settings.source_path else None
    records = []
    for line in lines:
        try:
            record = DeployRecord.from_json(json.loads(line))
        except (ValueError, TypeError, AttributeError):
            continue
        if record.config == key:
            records.append(record)
    return records


def deployed_stack(records: list[DeployRecord], backend: str) -> list[DeployRecord]:
    """The deploys of ``backend`` still in effect, oldest first: each rollback took back the newest one."""
    stack: list[DeployRecord] = []
    for record in records:
        if record.backend != backend:
            continue
        if record.rollback:
            if stack:
                stack.pop()
        else:
            stack.append(record)
    return stack


@dataclass(frozen=True, slots=True)
class RollbackTarget:
    """What a rollback of ``backend`` deploys: the adapter the newest deploy replaced."""

    backend: str
    undoes: DeployRecord
    adapter: Path | None
    scale: float | None  # set back only when that deploy set lora_scale

    def describe(self) -> str:
        what = f"adapter {self.adapter}" if self.adapter else "the base model, without adapter"
        undone = self.undoes.adapter or "the base model"
        return f"backend {self.backend}: back to {what} (undoes the deploy of {undone} at {self.undoes.at})"


def rollback_target(settings: Settings, backend: str, current: str | None) -> RollbackTarget:
    """The rollback of ``backend``, whose ``lora_path`` is now ``current``; ``RollbackError`` when there is none.

    Refused when ``current`` is not what the newest deploy wrote: the file was edited (or
    ``/lora``'d and written) since, and going back from there would skip that change.
    """
    stack = deployed_stack(read_records(settings), backend)
    if not stack:
        raise RollbackError(
            f"backend {backend}: no deploy recorded for {settings.source_name} in {record_path(settings)}, "
            "so there is nothing to roll back to; deploy the adapter you want with `botkit finetune deploy`"
        )
    newest = stack[-1]
    if not _same(newest.adapter, current):
        raise RollbackError(
            f"backend {backend}: its lora_path is {current or 'unset'}, but the newest recorded deploy wrote "
            f"{newest.adapter or 'no lora_path'}: the config changed since, so a rollback would skip that change; "
            "deploy the adapter you want with `botkit finetune deploy`"
        )
    adapter = Path(newest.previous) if newest.previous else None
    scale = newest.previous_scale if newest.scale is not None and adapter is not None else None
    return RollbackTarget(backend, newest, adapter, scale)


def _same(recorded: str | None, current: str | None) -> bool:
    if recorded is None or current is None:
        return recorded is None and current is None
    return os.path.abspath(Path(recorded).expanduser()) == os.path.abspath(Path(current).expanduser())


def now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()
