"""What the write-behind writer (``write_behind.WriteBehind``) works with: its spool, its counts, its metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

from botkit.metrics import Metrics

Record = TypeVar("Record")


class RecordSpool(Protocol[Record]):
    """Durable room for records that wait while the database is away, so that a restart finds them.

    Holds records oldest first. ``str(spool)`` names it in log messages.
    """

    def read(self) -> list[Record]:
        """Every record it holds, oldest first."""
        ...

    def append(self, records: list[Record]) -> int:
        """Add ``records`` after what it holds; returns how many fitted (a prefix of ``records``)."""
        ...

    def rewrite(self, records: list[Record]) -> None:
        """Hold exactly ``records`` (none: nothing)."""
        ...

    def drop(self, count: int) -> None:
        """The ``count`` oldest records it holds are written: hold only the rest."""
        ...


@dataclass(slots=True)
class WriteCounts:
    """What a writer has done since it was created, for metrics: each only grows."""

    queued: int = 0  # records added (and read back from the spool at start)
    written: int = 0  # records ``write`` accepted
    retries: int = 0  # failed attempts that are tried again
    dropped: int = 0  # records given up: the queue was full, or ``write`` failed with an unexpected error
    dead_letters: int = 0  # records the database refused, handed to ``dead_letter``


class WriteMetrics:
    """A writer's instruments, labelled with its name (``memory``, ``moderation``)."""

    def __init__(self, metrics: Metrics, writer: str) -> None:
        self.write_seconds = metrics.histogram(
            "botkit_database_write_seconds", "Time one batch of records took to write.", ("writer",)
        ).labels(writer=writer)
        self.retries = metrics.counter(
            "botkit_database_write_retries_total",
            "Batch writes that failed because the database was unreachable, to be tried again.",
            ("writer",),
        ).labels(writer=writer)
        self.pending = metrics.gauge(
            "botkit_write_queue_length", "Records waiting to be written to the database.", ("writer",)
        ).labels(writer=writer)
        self.spooled = metrics.gauge(
            "botkit_spool_records", "Records waiting in the on-disk spool.", ("writer",)
        ).labels(writer=writer)
        self.replayed = metrics.counter(
            "botkit_spool_replayed_total",
            "Records read back from the spool at start, to be written.",
            ("writer",),
        ).labels(writer=writer)


__all__ = ["RecordSpool", "WriteCounts", "WriteMetrics"]
