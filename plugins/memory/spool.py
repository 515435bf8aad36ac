"""The journal: a bounded append-only file that keeps every conversation record until the database has it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("botkit.plugins.memory")


class Spool:
    """JSON lines on disk, oldest first. Survives a crash; emptied once the database has the records.

    The ``RecordSpool`` of memory's write-behind writer. Every write reaches the
    operating system before it returns (so it survives the bot being killed);
    with ``fsync`` it also reaches the disk (so it survives the machine going down).
    """

    def __init__(self, path: Path, max_bytes: int, fsync: bool = True) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.fsync = fsync

    def __str__(self) -> str:
        return f"{self.path} (at most {self.max_bytes} bytes)"

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, records: list[dict[str, Any]]) -> int:
        """Write ``records``; returns how many fitted (the rest would pass the size bound)."""
        if not records:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(record, ensure_ascii=False) + "\n" for record in records]
        room = self.max_bytes - self.size()
        kept = 0
        with self.path.open("a", encoding="utf-8") as file:
            for line in lines:
                size = len(line.encode("utf-8"))
                if size > room:
                    break
                file.write(line)
                room -= size
                kept += 1
            self._sync(file)
        return kept

    def read(self) -> list[dict[str, Any]]:
        """Every record in the spool; a torn last line (a crash mid-write) is skipped."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                log.error("memory spool %s line %d is damaged and was skipped", self.path, number)
        return records

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace the spool's content atomically (``records`` empty: remove it)."""
        if not records:
            self.path.unlink(missing_ok=True)
            return
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("w", encoding="utf-8") as file:
            for record in records:
                file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._sync(file)
        temporary.replace(self.path)

    def _sync(self, file: IO[str]) -> None:
        file.flush()
        if self.fsync:
            os.fsync(file.fileno())
