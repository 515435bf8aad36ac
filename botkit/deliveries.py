"""Which platform deliveries were seen already, so that a redelivered event is answered once, on any replica."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Coroutine
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import delete
from sqlalchemy.exc import SQLAlchemyError

from botkit.storage.database import describe, insert_new
from botkit.storage.models import SeenDeliveryRecord, utcnow

if TYPE_CHECKING:
    from botkit.metrics import Metrics
    from botkit.storage import Database

log = logging.getLogger("botkit.deliveries")
T = TypeVar("T")

# How long a claimed delivery id is kept in the database. Slack retries an event within
# minutes (three retries, the last about 5 minutes after the first delivery) and Discord
# replays missed gateway events only on a resume, within the session; a day covers both with room.
RETENTION = timedelta(hours=24)
# Rows older than RETENTION are deleted by the first claim after this many seconds (per process).
PRUNE_INTERVAL = 3600.0
# Longest wait for the database's answer to a claim: a Discord interaction must be acknowledged
# within 3 seconds of its delivery, and the claim comes first.
CLAIM_TIMEOUT = 2.0


class SeenDeliveries:
    """Remembers delivery ids (Slack ``event_id``, Discord message id) for ``ttl`` seconds.

    Platforms redeliver an event when its acknowledgement was late or lost; the
    first delivery is answered and later copies are dropped. A retry whose first
    delivery never arrived is the first one seen here, so it is answered. At most
    ``limit`` ids are kept: the oldest are forgotten first.
    """

    def __init__(self, ttl: float = 3600.0, limit: int = 100_000) -> None:
        self.ttl = ttl
        self.limit = limit
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first(self, delivery_id: str) -> bool:
        """True the first time ``delivery_id`` is seen (within ``ttl``), False for a repeat."""
        now = time.monotonic()
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at < self.ttl and len(self._seen) < self.limit:
                break
            del self._seen[oldest]
        if delivery_id in self._seen:
            return False
        self._seen[delivery_id] = now
        return True

    def __len__(self) -> int:
        return len(self._seen)


class DeliveryClaims:
    """``bot.first_delivery``: a delivery id claimed once across restarts and replicas.

    A delivery seen already in this process is a repeat without asking the
    database. Otherwise the claim is a row of ``seen_deliveries`` inserted with
    ``ON CONFLICT DO NOTHING`` on its key (platform, delivery id): the one
    insert that stores it, in whichever process, answers the event. When the
    database fails or does not answer within ``timeout`` seconds (``[storage]
    connect_timeout``, at most ``CLAIM_TIMEOUT``) the event is answered (a
    message is never lost to an outage; only this process's memory then keeps a
    repeat out), one warning is logged per outage and each such claim is counted
    (``botkit_deliveries_total{result="unchecked"}``).
    """

    def __init__(self, db: Database, metrics: Metrics) -> None:
        self.db = db
        self.timeout = min(db.settings.connect_timeout, CLAIM_TIMEOUT)
        self.seen = SeenDeliveries()
        self._results = metrics.counter(
            "botkit_deliveries_total",
            "Platform events received, by whether they were answered: 'first', 'repeat' (a redelivery, "
            "dropped) or 'unchecked' (answered; the database could not tell).",
            ("platform", "result"),
        )
        self._outage = False
        self._pruned_at: float | None = None
        self._last: asyncio.Future[None] | None = None  # the claim before: done once answered
        self._left_behind: set[asyncio.Task[Any]] = set()  # database work that outlived its timeout

    async def first(self, platform: str, delivery_id: str) -> bool:
        """True when this is the first delivery of ``delivery_id`` on ``platform`` anywhere.

        Answers come in the order the deliveries came (a reaction added, then removed, reaches
        the plugins in that order), while the database checks run side by side.
        """
        if not self.seen.first(f"{platform}:{delivery_id}"):
            result = "repeat"
        else:
            previous, done = self._last, asyncio.get_running_loop().create_future()
            self._last = done
            try:
                result = await self._check(platform, delivery_id)
                if previous is not None:
                    await asyncio.shield(previous)  # a cancelled wait must not cancel the claim before
            finally:
                done.set_result(None)
        self._results.labels(platform=platform, result=result).inc()
        return result != "repeat"

    async def _check(self, platform: str, delivery_id: str) -> str:
        """'first', 'repeat', or 'unchecked' when the database could not tell in time."""
        try:
            claimed = await self._within_timeout(self._claim(platform, delivery_id))
        except (SQLAlchemyError, OSError, TimeoutError) as error:
            if not self._outage:
                log.warning(
                    "cannot check %s deliveries against the database (%s); answering them, "
                    "with redeliveries caught only by this process until it is back",
                    platform,
                    describe(error),
                )
            self._outage = True
            return "unchecked"
        if self._outage:
            log.warning("the database answers again: deliveries are checked against it")
            self._outage = False
        if self._prune_due():
            await self._prune()
        return "first" if claimed else "repeat"

    async def _claim(self, platform: str, delivery_id: str) -> bool:
        async with self.db.session() as session:
            inserted = await session.execute(
                insert_new(session, SeenDeliveryRecord, "platform", "delivery_id")
                .values(platform=platform, delivery_id=delivery_id, first_seen_at=utcnow())
                .returning(SeenDeliveryRecord.platform)
            )
            return inserted.first() is not None

    def _prune_due(self) -> bool:
        now = time.monotonic()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_INTERVAL:
            return False
        self._pruned_at = now
        return True

    async def _prune(self) -> None:
        """Delete the rows older than ``RETENTION`` (every replica does; the later ones find none).

        A failure is left for the next interval: old rows only take room, they answer nothing.
        """
        try:
            await self._within_timeout(self._delete_old())
        except (SQLAlchemyError, OSError, TimeoutError) as error:
            log.info("old delivery ids not deleted this time (%s); tried again in an hour", describe(error))

    async def _delete_old(self) -> None:
        async with self.db.session() as session:
            await session.execute(
                delete(SeenDeliveryRecord).where(SeenDeliveryRecord.first_seen_at < utcnow() - RETENTION)
            )

    async def _within_timeout(self, work: Coroutine[Any, Any, T]) -> T:
        """``work``'s result, or ``TimeoutError`` after ``self.timeout`` seconds.

        Work that times out is left to finish on its own rather than cancelled: cancelling a
        query makes SQLAlchemy roll back on the same connection, which waits for the query
        (SQLite: up to ``busy_timeout`` for the lock). Until it ends, no more work is started
        (a ``TimeoutError`` at once), so an outage holds one connection, not one per event.
        """
        if self._left_behind:
            work.close()
            raise TimeoutError
        task = asyncio.ensure_future(work)
        done, _ = await asyncio.wait({task}, timeout=self.timeout)
        if not done:
            self._left_behind.add(task)
            task.add_done_callback(self._forget)
            raise TimeoutError
        return task.result()

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._left_behind.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: its outcome was answered as 'unchecked' already

    async def close(self) -> None:
        """Wait (at most ``timeout`` seconds) for claims that timed out but are still running."""
        if self._left_behind:
            await asyncio.wait(set(self._left_behind), timeout=self.timeout)
