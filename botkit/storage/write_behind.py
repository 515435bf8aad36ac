"""The write-behind writer: records queued in order and written to the database in batches by one task.

A plugin that stores something on every message (memory's exchanges,
moderation's events) must not make the reply wait for the database, and must
not lose what it stores when the database is away for a while. It queues the
record here and returns; one background task writes what is queued, oldest
first, through the plugin's own ``write(batch)``. While ``write`` raises one of
the exceptions the plugin names as "the database is down", the batch stays at
the head of the queue and is tried again, backing off up to ``retry_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Generic, TypeVar

from botkit.metrics import Metrics
from botkit.storage.write_parts import RecordSpool, WriteCounts, WriteMetrics

Record = TypeVar("Record")

FIRST_RETRY = 0.05  # seconds before the first retry; each next one waits twice as long
DROPS_BETWEEN_LOGS = 1000  # a full queue drops on every record: log the first drop, then every this many


class WriteBehind(Generic[Record]):
    """An ordered queue of records in front of the database, written in batches by one task.

    ``write(batch)`` stores up to ``batch_size`` of the oldest records, all or
    nothing (one transaction). When it raises one of ``down``, the same batch
    is tried again after a pause that doubles from 0.05 s up to
    ``retry_interval``; meanwhile what waits is also appended to ``spool``, if
    there is one. Any other exception is a bug in the caller: it is logged with
    its traceback and the batch is dropped, so that one bad record does not stop
    every later one. At most ``max_pending`` records wait; beyond that the
    oldest is dropped.

    With ``write_ahead`` the spool is a journal: ``add`` appends each record to
    it before returning, and a record leaves it once written, so a process
    killed at any moment finds at its next start every record it had added and
    not written (``write`` must then be idempotent: a record written just
    before the kill is written again).

    When ``write`` raises an error that ``rejected`` recognises (the database
    refused the content: a constraint, a value it cannot hold), that is no
    outage: ``recover`` (if any) runs and the batch is tried once more; then its
    records are written one by one, and each one still refused is handed to
    ``dead_letter`` with ``reason(error)`` (or dropped), and the rest written.

    With ``linger`` (seconds), the task waits that long for more records before it
    writes a batch that is not full: when records come faster than batches are written,
    a transaction carries more of them, and each record costs less (a transaction's
    round trips cost the same for one record as for two hundred). It does not wait while
    somebody waits for the writes (``flush``, ``written_up_to_now``, ``close``) or while
    the database is down.

    ``name`` (the plugin) and ``what`` (the records, plural) make the log
    messages; they go to ``log``. ``metrics`` (the bot's) get the writer's latency,
    retries, queue and spool, labelled ``writer=name``. ``sleep`` is how the task pauses between
    attempts (a test may pass one that records the pauses).
    """

    def __init__(
        self,
        write: Callable[[list[Record]], Awaitable[None]],
        *,
        name: str,
        what: str,
        down: tuple[type[BaseException], ...],
        retry_interval: float,
        log: logging.Logger,
        batch_size: int = 200,
        linger: float = 0.0,
        max_pending: int | None = None,
        spool: RecordSpool[Record] | None = None,
        write_ahead: bool = False,
        rejected: Callable[[BaseException], bool] | None = None,
        reason: Callable[[BaseException], str] = lambda error: type(error).__name__,
        recover: Callable[[], None] | None = None,
        dead_letter: Callable[[Record, str], Awaitable[None]] | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = name
        self._metrics = WriteMetrics(metrics or Metrics(), name)
        self.what = what
        self.retry_interval = retry_interval
        self.batch_size = batch_size
        self.linger = linger
        self.max_pending = max_pending
        self.spool = spool
        self.write_ahead = write_ahead and spool is not None
        self.counts = WriteCounts()
        self._write = write
        self._down = down
        self._log = log
        self._sleep = sleep
        self._rejected = rejected
        self._reason = reason
        self._recover = recover
        self._dead_letter = dead_letter
        self._pending: deque[Record] = deque()
        # Records ever added, and ever taken off the head (written, refused or dropped): ``written_up_to``.
        self._added = 0
        self._taken = 0
        self._progress = asyncio.Event()
        self._on_disk = 0  # the first this many pending records are also in the spool
        self._in_flight = 0  # the first this many pending records are being written
        self._done = 0  # of those, this many are done with (written one by one, or refused)
        # The first this many pending records may be in the database already: read back from the
        # spool at start, or in an attempt that failed (its COMMIT may have happened all the same).
        self._maybe_written = 0
        self._writes_started = 0
        self._outage = False
        self._wake = asyncio.Event()
        # Ends a linger early: a full batch waits, or somebody waits for the writes.
        self._go = asyncio.Event()
        self._waiting_for_writes = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._not_writing = asyncio.Event()
        self._not_writing.set()
        self._task: asyncio.Task[None] | None = None
        # The queue's and the spool's lengths are read at each scrape, not set at each change. The
        # newest writer of a name is the one read (a plugin reloaded makes a new one); a writer
        # gone reads as empty.
        this = weakref.ref(self)
        self._metrics.pending.set_function(lambda: len(writer._pending) if (writer := this()) else 0)
        self._metrics.spooled.set_function(lambda: writer._on_disk if (writer := this()) else 0)

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start the writing task; what the spool holds from an earlier run is written first."""
        if self.spool is not None:
            spooled = self.spool.read()
            if spooled:
                self._log.warning(
                    "%s: %d %s from the spool %s will be written to the database",
                    self.name,
                    len(spooled),
                    self.what,
                    self.spool,
                )
                self._pending.extendleft(reversed(spooled))
                self._added += len(spooled)
                self._on_disk = len(spooled)
                self._maybe_written = len(spooled)  # the last run may have committed them
                self.counts.queued += len(spooled)
                self._metrics.replayed.inc(len(spooled))
                self._idle.clear()
        self._task = asyncio.create_task(self._write_forever(), name=f"botkit-{self.name}-writer")

    async def flush(self, timeout: float) -> bool:
        """Wait until every queued record is written; ``False`` when that takes longer than ``timeout``.

        What is still waiting then is appended to the spool, if there is one.
        """
        if self._idle.is_set():
            return True
        try:
            with self._hurried():
                await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            self._spool_waiting()
            return False

    async def written_up_to_now(self, timeout: float) -> bool:
        """Wait until every record added before this call is done with (written, or given up);
        ``False`` after ``timeout`` (the database is down: they wait in the spool).

        Unlike ``flush`` it does not wait for records added meanwhile, so a steady stream of
        them cannot hold it up.
        """
        target = self._added
        try:
            with self._hurried():
                async with asyncio.timeout(timeout):
                    while self._taken < target:
                        await self._progress.wait()
        except TimeoutError:
            self._spool_waiting()
            return False
        return True

    @contextlib.contextmanager
    def _hurried(self) -> Iterator[None]:
        """While inside, the task writes what is queued without lingering."""
        self._waiting_for_writes += 1
        self._go.set()
        try:
            yield
        finally:
            self._waiting_for_writes -= 1

    async def close(self, timeout: float) -> None:
        """Stop the task after writing what is queued, for at most ``timeout`` seconds."""
        flushed = await self.flush(timeout)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._spool_waiting()
        if not flushed and self._pending:
            self._log.error(
                "%s: %d %s were not written to the database before shutdown; %s",
                self.name,
                len(self._pending),
                self.what,
                f"they wait in the spool {self.spool} for the next start"
                if self.spool is not None
                else "they are lost",
            )

    # -- queueing ------------------------------------------------------------------

    @property
    def pending(self) -> Sequence[Record]:
        """The records not written yet, oldest first (the first may be being written right now).

        Readers merge them into what they read from the database. Do not add or
        remove any; a record changed in place must be reported to ``pending_changed``.
        """
        return self._pending

    @property
    def writes_started(self) -> int:
        """How many write attempts have started; with ``writing``, tells a reader whether a write overlapped it."""
        return self._writes_started

    @property
    def writing(self) -> bool:
        """Whether a batch is being written now."""
        return not self._not_writing.is_set()

    async def write_finished(self, timeout: float) -> bool:
        """Wait until the write under way now, if any, has ended (written or failed); False after ``timeout``."""
        try:
            await asyncio.wait_for(self._not_writing.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @property
    def maybe_written(self) -> bool:
        """Whether the batch being written may hold records that an earlier attempt (or run) stored.

        ``write`` must be idempotent then; it may skip the checks that make it so otherwise.
        """
        return self._maybe_written > 0

    @property
    def outage(self) -> bool:
        """Whether the last attempt to write failed because the database is down."""
        return self._outage

    def add(self, record: Record) -> None:
        """Queue ``record`` after every earlier one; returns at once (``write_ahead``: once it is in the spool)."""
        if self.max_pending is not None and len(self._pending) >= self.max_pending:
            self._pending.popleft()
            self._advance(1)
            if self._on_disk:
                self._on_disk -= 1
                self._drop_from_spool(1)
            self._in_flight = max(self._in_flight - 1, 0)
            self._done = max(self._done - 1, 0)
            self._maybe_written = max(self._maybe_written - 1, 0)
            self.counts.dropped += 1
            if self.counts.dropped % DROPS_BETWEEN_LOGS == 1:
                self._log.error(
                    "%s: %d %s are waiting for the database; the oldest are dropped (%d so far)",
                    self.name,
                    self.max_pending,
                    self.what,
                    self.counts.dropped,
                )
        self._pending.append(record)
        self._added += 1
        self.counts.queued += 1
        if self.write_ahead:
            self._spool_waiting()  # on disk before ``add`` returns
        self._idle.clear()
        self._wake.set()
        if len(self._pending) - self._in_flight >= self.batch_size:
            self._go.set()

    def pending_changed(self, records: Iterable[Record]) -> None:
        """``records`` (pending ones) were changed in place: the spool must keep no old copy of them."""
        if self.spool is None or not self._on_disk:
            return
        on_disk = list(islice(self._pending, self._on_disk))
        held = {id(record) for record in on_disk}
        if any(id(record) in held for record in records):
            self._rewrite_spool(on_disk)

    # -- the task ------------------------------------------------------------------

    async def _write_forever(self) -> None:
        delay = FIRST_RETRY
        while True:
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._gather()
            batch = list(islice(self._pending, self.batch_size))
            self._in_flight = len(batch)
            self._writes_started += 1
            self._not_writing.clear()
            self._done = 0
            started = time.perf_counter()
            try:
                written = await self._write_batch(batch)
            except asyncio.CancelledError:
                self._not_writing.set()  # closed mid-write: nobody waits for it any longer
                raise
            except self._down as error:
                self._not_writing.set()
                self._maybe_written = max(self._maybe_written, self._in_flight)
                # Records of a refused batch dealt with one by one before the outage are done.
                self._in_flight = self._done
                self._take_written()
                self.counts.retries += 1
                self._metrics.retries.inc()
                if not self._outage:
                    self._log.error(
                        "%s: cannot write to the database (%s); %s wait in %s until it is back",
                        self.name,
                        type(error).__name__,
                        self.what,
                        f"the spool {self.spool}" if self.spool is not None else "memory",
                    )
                self._outage = True
                self._spool_waiting()
                await self._sleep(delay)
                delay = min(delay * 2, self.retry_interval)
                continue
            except Exception:
                self._not_writing.set()
                self._log.exception(
                    "%s: %d %s could not be written and were dropped", self.name, self._in_flight, self.what
                )
                self.counts.dropped += self._in_flight
            else:
                self._not_writing.set()
                self._metrics.write_seconds.observe(time.perf_counter() - started)
                self.counts.written += written
                if self._outage:
                    self._log.warning(
                        "%s: the database is back; writing the %s that waited", self.name, self.what
                    )
                    self._outage = False
            self._take_written()
            delay = FIRST_RETRY

    async def _gather(self) -> None:
        """Wait up to ``linger`` for the batch to fill, unless somebody waits for the writes."""
        if self.linger <= 0 or self._outage or self._waiting_for_writes or len(self._pending) >= self.batch_size:
            return
        self._go.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.linger):
                await self._go.wait()

    def _refused(self, error: BaseException) -> bool:
        return self._rejected is not None and self._rejected(error)

    async def _write_batch(self, batch: list[Record]) -> int:
        """Write ``batch``; returns how many of its records were written (the rest were refused).

        When the database refuses the batch, ``recover`` runs and the batch is
        tried once more; then its records are written one by one, and each one
        still refused goes to ``dead_letter`` (or is dropped). Raises what ``write``
        raises otherwise (an outage: ``_done`` says how many records are done with).
        """
        try:
            await self._write(batch)
            return len(batch)
        except Exception as error:
            if not self._refused(error):
                raise
            self._log.error(
                "%s: the database refused %d %s (%s); %s",
                self.name,
                len(batch),
                self.what,
                self._reason(error),
                "trying again without what was cached" if self._recover else "writing them one by one",
            )
        if self._recover is not None:
            self._recover()
            try:
                await self._write(batch)
                return len(batch)
            except Exception as error:
                if not self._refused(error):
                    raise
        written = 0
        for record in batch:
            try:
                await self._write([record])
                written += 1
            except Exception as error:
                if not self._refused(error):
                    raise
                await self._bury(record, error)
            self._done += 1
        return written

    async def _bury(self, record: Record, error: BaseException) -> None:
        """Hand a record the database refuses to ``dead_letter``; dropped if there is none or it fails too."""
        reason = self._reason(error)
        if self._dead_letter is not None:
            try:
                await self._dead_letter(record, reason)
            except Exception as failure:
                if not self._refused(failure):
                    raise
            else:
                self.counts.dead_letters += 1
                self._log.error(
                    "%s: one of the %s was refused (%s); kept as a dead letter", self.name, self.what, reason
                )
                return
        self.counts.dropped += 1
        self._log.error("%s: one of the %s was refused (%s) and dropped", self.name, self.what, reason)

    def _take_written(self) -> None:
        """Remove the batch just handled (less what a full queue dropped meanwhile) from the head."""
        done, self._in_flight = self._in_flight, 0
        for _ in range(done):
            self._pending.popleft()
        self._advance(done)
        self._maybe_written = max(self._maybe_written - done, 0)
        written_on_disk = min(done, self._on_disk)
        if written_on_disk:
            self._on_disk -= written_on_disk
            self._drop_from_spool(written_on_disk)

    def _advance(self, taken: int) -> None:
        """``taken`` more records left the head of the queue: wake ``written_up_to_now``."""
        if taken:
            self._taken += taken
            self._progress.set()
            self._progress = asyncio.Event()

    def _drop_from_spool(self, count: int) -> None:
        assert self.spool is not None
        try:
            self.spool.drop(count)
        except OSError as error:
            self._log.error("%s: cannot update the spool %s: %s", self.name, self.spool, error)

    def _spool_waiting(self) -> None:
        """Append the pending records the spool does not hold yet."""
        if self.spool is None or self._on_disk == len(self._pending):
            return
        fresh = list(islice(self._pending, self._on_disk, None))
        try:
            kept = self.spool.append(fresh)
        except OSError as error:
            self._log.error("%s: cannot write the spool %s: %s", self.name, self.spool, error)
            return
        self._on_disk += kept
        if kept < len(fresh):
            self._log.error(
                "%s: the spool %s is full; %d %s are kept in memory only",
                self.name,
                self.spool,
                len(fresh) - kept,
                self.what,
            )

    def _rewrite_spool(self, records: list[Record]) -> None:
        assert self.spool is not None
        try:
            self.spool.rewrite(records)
        except OSError as error:
            self._log.error("%s: cannot rewrite the spool %s: %s", self.name, self.spool, error)


__all__ = ["RecordSpool", "WriteBehind", "WriteCounts"]
