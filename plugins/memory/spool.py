"""The journal: a bounded append-only file that keeps every conversation record until the database has it."""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections import deque
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one bot process per data folder there
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("botkit.plugins.memory")

WRITTEN = "#written "  # a line "#written N": the N oldest records above it are in the database
COMPACT_BYTES = 1 << 20  # rewrite the file once this much of it is records already written


class Spool:
    """JSON lines on disk, oldest first. Survives a crash; drops records once the database has them.

    The ``RecordSpool`` of memory's write-behind writer. Every write reaches the
    operating system before it returns (so it survives the bot being killed);
    with ``fsync`` it also reaches the disk (so it survives the machine going down).

    It is written on every message, so it stays open, and records that reach
    the database are dropped by appending a ``#written N`` line rather than by
    rewriting it. Once nothing is left to write the file is emptied, so written
    text does not stay on disk; while records are still waiting, written records
    and markers are rewritten away once they take more than ``COMPACT_BYTES``.
    """

    def __init__(self, path: Path, max_bytes: int, fsync: bool = True, lock: IO[str] | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._lock = lock  # held while this process owns the file (see ``claim``)
        self._file: IO[str] | None = None  # open for appending; what follows is known while it is
        self._live: deque[int] = deque()  # the byte size of each record it holds, oldest first
        self._size = 0  # of the file: what it holds, plus written records and markers

    def __str__(self) -> str:
        return f"{self.path} (at most {self.max_bytes} bytes)"

    def size(self) -> int:
        return self._size if self._file is not None else _file_size(self.path)

    def read(self) -> list[dict[str, Any]]:
        """Every record in the spool not marked written; a torn line (a crash mid-write) is skipped."""
        return [record for record, _ in self._parse(complain=True)]

    def append(self, records: list[dict[str, Any]]) -> int:
        """Write ``records``; returns how many fitted (the rest would pass the size bound)."""
        if not records:
            return 0
        file = self._open()
        kept = 0
        for record in records:
            line = _line(record)
            size = len(line.encode("utf-8"))
            if self._size + size > self.max_bytes and self._size > sum(self._live):
                self._compact()
                file = self._open()
            if self._size + size > self.max_bytes:
                break
            file.write(line)
            self._live.append(size)
            self._size += size
            kept += 1
        self._sync(file)
        return kept

    def drop(self, count: int) -> None:
        """The ``count`` oldest records are in the database: the spool no longer holds them."""
        file = self._open()
        count = min(count, len(self._live))
        if not count:
            return
        for _ in range(count):
            self._live.popleft()
        if not self._live:
            # Everything is written: start afresh. Also what keeps users' text from lingering
            # here once the database has it (/forgetme and retention promise it is gone).
            file.truncate(0)
            self._size = 0
        else:
            marker = f"{WRITTEN}{count}\n"  # cheaper than emptying the file after every batch
            file.write(marker)
            self._size += len(marker)
        self._sync(file)
        if self._size - sum(self._live) > COMPACT_BYTES:
            self._compact()

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace the spool's content atomically (``records`` empty: remove it)."""
        self.close()
        if not records:
            self.path.unlink(missing_ok=True)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = [_line(record) for record in records]
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("w", encoding="utf-8") as file:
            file.writelines(lines)
            self._sync(file)
        temporary.replace(self.path)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def release(self) -> None:
        """Close it and give up the claim on its file, for the next process."""
        self.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @classmethod
    def claim(cls, folder: Path, name: str, max_bytes: int, fsync: bool) -> Spool:
        """The spool ``<folder>/<name>.jsonl``, or ``<name>-2.jsonl``... if another process holds it.

        Bot processes that share a data folder each append to a journal of their
        own; one left by a process that died is taken over, and written, by the
        next process that starts.
        """
        folder.mkdir(parents=True, exist_ok=True)
        for number in itertools.count(1):
            path = folder / (f"{name}.jsonl" if number == 1 else f"{name}-{number}.jsonl")
            lock = path.with_suffix(".lock").open("a", encoding="utf-8")
            try:
                if fcntl is not None:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            return cls(path, max_bytes, fsync, lock)
        raise AssertionError("unreachable")

    def _open(self) -> IO[str]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            held = self._parse(complain=False)
            self._file = self.path.open("a", encoding="utf-8")
            self._size = _file_size(self.path)
            if self._size and not self.path.read_bytes().endswith(b"\n"):
                self._file.write("\n")  # a line torn by a crash ends here, not in the next record
                self._size += 1
            self._live = deque(size for _, size in held)
        return self._file

    def _compact(self) -> None:
        """Rewrite the file with only the records it holds."""
        assert self._file is not None
        self._file.flush()
        self.rewrite([record for record, _ in self._parse(complain=False)])

    def _parse(self, complain: bool) -> list[tuple[dict[str, Any], int]]:
        """The records the file holds, oldest first, each with the size of its line."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        held: deque[tuple[dict[str, Any], int]] = deque()
        for number, line in enumerate(text.splitlines(), 1):
            if line.startswith(WRITTEN):
                for _ in range(min(int(line[len(WRITTEN) :]), len(held))):
                    held.popleft()
                continue
            try:
                held.append((json.loads(line), len(line.encode("utf-8")) + 1))
            except json.JSONDecodeError:
                if complain:
                    log.error("memory spool %s line %d is damaged and was skipped", self.path, number)
        return list(held)

    def _sync(self, file: IO[str]) -> None:
        file.flush()
        if self.fsync:
            os.fsync(file.fileno())


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
