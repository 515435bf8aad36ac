"""The shared write-behind writer on its own: order, batches, outages and back-off, the bound, the spool, shutdown."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from botkit.storage import WriteBehind
from botkit.testing import eventually

LOGGER = "test.write_behind"


class FakeDatabase:
    """What ``write`` reaches: stores batches; may be down for some attempts, or hang until released."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.attempts = 0
        self.down_for: float = 0  # this many next attempts fail as if the database were down
        self.open = asyncio.Event()  # a write waits for this (set: it does not wait)
        self.open.set()

    async def write(self, batch: list[Any]) -> None:
        self.attempts += 1
        await self.open.wait()
        if self.down_for > 0:
            self.down_for -= 1
            raise ConnectionError("the database is down")
        if any(record == "bad" for record in batch):
            raise ValueError("a record the caller cannot write")
        self.batches.append(list(batch))

    @property
    def stored(self) -> list[Any]:
        return [record for batch in self.batches for record in batch]


class Pauses:
    """The writer's pauses between attempts: recorded, not waited out; held while ``going`` is clear."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.going = asyncio.Event()
        self.going.set()

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)
        await self.going.wait()
        await asyncio.sleep(0)


class ListSpool:
    """A spool in a list that, like a file, keeps copies: changing a record later does not change it."""

    def __init__(self, records: list[Any] | None = None, room: int = 1000) -> None:
        self.records = [json.loads(json.dumps(r)) for r in records or []]
        self.room = room

    def read(self) -> list[Any]:
        return list(self.records)

    def append(self, records: list[Any]) -> int:
        fitting = records[: max(self.room - len(self.records), 0)]
        self.records += [json.loads(json.dumps(r)) for r in fitting]
        return len(fitting)

    def rewrite(self, records: list[Any]) -> None:
        self.records = [json.loads(json.dumps(r)) for r in records]

    def drop(self, count: int) -> None:
        del self.records[:count]

    def __str__(self) -> str:
        return "test-spool"


@pytest.fixture
def db() -> FakeDatabase:
    return FakeDatabase()


@pytest.fixture
def pauses() -> Pauses:
    return Pauses()


@pytest.fixture
def make_writer(db: FakeDatabase, pauses: Pauses):
    """``writer = make_writer(**options)``: a writer into ``db``, not started yet."""

    def factory(**options: Any) -> WriteBehind[Any]:
        settings: dict[str, Any] = {
            "name": "test",
            "what": "records",
            "down": (ConnectionError,),
            "retry_interval": 0.5,
            "log": logging.getLogger(LOGGER),
            "sleep": pauses,
        }
        return WriteBehind(db.write, **(settings | options))

    return factory


@asynccontextmanager
async def started(writer: WriteBehind[Any]) -> AsyncIterator[WriteBehind[Any]]:
    """The writer running for the block, and closed after it."""
    writer.start()
    try:
        yield writer
    finally:
        await writer.close(5)


# -- order and batches -----------------------------------------------------------------------


async def test_records_are_written_in_order_in_batches(make_writer, db):
    async with started(make_writer(batch_size=3)) as writer:
        for number in range(8):
            writer.add(number)
        assert await writer.flush(5)
    assert db.batches == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert (writer.counts.queued, writer.counts.written, writer.counts.retries) == (8, 8, 0)


async def test_records_added_during_a_write_go_into_the_next_batch(make_writer, db):
    db.open.clear()
    async with started(make_writer()) as writer:
        writer.add("first")
        await eventually(lambda: db.attempts == 1)
        writer.add("second")
        writer.add("third")
        assert list(writer.pending) == ["first", "second", "third"]  # readers see what waits
        db.open.set()
        assert await writer.flush(5)
        assert list(writer.pending) == []
    assert db.batches == [["first"], ["second", "third"]]


async def test_an_idle_writer_makes_no_attempt(make_writer, db, pauses):
    async with started(make_writer()) as writer:
        writer.add("one")
        assert await writer.flush(5)
        for _ in range(100):
            await asyncio.sleep(0)
        assert (db.attempts, pauses.seconds) == (1, [])


# -- outages -------------------------------------------------------------------------------------


async def test_a_batch_is_retried_with_back_off_while_the_database_is_down(make_writer, db, pauses, caplog):
    db.down_for = 6
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        async with started(make_writer(retry_interval=0.5)) as writer:
            writer.add("a")
            writer.add("b")
            assert await writer.flush(5)
            assert not writer.outage
    assert db.stored == ["a", "b"]
    assert pauses.seconds == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]  # a pause before every retry, never longer
    assert db.attempts == 7 and writer.counts.retries == 6 and writer.counts.written == 2
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "test: cannot write to the database (ConnectionError); records wait in memory until it is back",
        "test: the database is back; writing the records that waited",
    ]  # one error per outage, not one per attempt


async def test_back_off_starts_short_again_after_a_write_succeeds(make_writer, db, pauses):
    async with started(make_writer()) as writer:
        db.down_for = 2
        writer.add("before")
        assert await writer.flush(5)
        db.down_for = 2
        writer.add("after")
        assert await writer.flush(5)
    assert pauses.seconds == [0.05, 0.1, 0.05, 0.1]
    assert db.stored == ["before", "after"]


async def test_an_error_that_is_not_an_outage_drops_only_its_batch(make_writer, db, pauses, caplog):
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        async with started(make_writer(batch_size=2)) as writer:
            for record in ("bad", "lost with it", "kept"):
                writer.add(record)
            assert await writer.flush(5)
    assert db.stored == ["kept"]
    assert writer.counts.dropped == 2 and pauses.seconds == []
    assert "test: 2 records could not be written and were dropped" in caplog.text
    assert "ValueError: a record the caller cannot write" in caplog.text  # with its traceback


async def test_a_refused_batch_recovers_then_buries_only_the_record_still_refused(make_writer, db, pauses, caplog):
    recovered, buried = [], []

    async def dead_letter(record, reason):
        buried.append((record, reason))

    writer = make_writer(
        batch_size=3,
        rejected=lambda error: isinstance(error, ValueError),
        reason=lambda error: "refused by a constraint",
        recover=lambda: recovered.append(True),
        dead_letter=dead_letter,
    )
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        async with started(writer):
            for record in ("before", "bad", "after", "later"):
                writer.add(record)
            assert await writer.flush(5)
    assert db.stored == ["before", "after", "later"] and buried == [("bad", "refused by a constraint")]
    assert recovered == [True]  # once, before the batch was tried again
    assert writer.counts.written == 3 and writer.counts.dead_letters == 1 and writer.counts.dropped == 0
    assert pauses.seconds == [] and not writer.outage
    assert "test: one of the records was refused (refused by a constraint); kept as a dead letter" in caplog.text


async def test_an_outage_while_a_refused_batch_is_written_one_by_one_keeps_the_rest(make_writer, db, pauses):
    buried = []

    async def dead_letter(record, reason):
        buried.append(record)
        db.down_for = 1  # the database goes away right after

    writer = make_writer(batch_size=3, rejected=lambda e: isinstance(e, ValueError), dead_letter=dead_letter)
    async with started(writer):
        for record in ("bad", "after", "later"):
            writer.add(record)
        assert await writer.flush(5)
    assert buried == ["bad"] and db.stored == ["after", "later"]
    assert writer.counts.retries == 1 and writer.counts.written == 2


# -- the bound -----------------------------------------------------------------------------------


async def test_a_full_queue_drops_the_oldest_records(make_writer, db, caplog):
    writer = make_writer(max_pending=3)
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        for number in range(5):
            writer.add(number)
    assert list(writer.pending) == [2, 3, 4]
    assert writer.counts.dropped == 2 and writer.counts.queued == 5
    assert [r.getMessage() for r in caplog.records] == [
        "test: 3 records are waiting for the database; the oldest are dropped (1 so far)"
    ]
    async with started(writer):
        assert await writer.flush(5)
    assert db.stored == [2, 3, 4]


async def test_dropping_a_record_that_is_being_written_keeps_every_newer_one(make_writer, db):
    db.open.clear()
    async with started(make_writer(max_pending=2)) as writer:
        writer.add("in flight")
        await eventually(lambda: db.attempts == 1)
        writer.add("second")
        writer.add("third")  # the queue is full: "in flight" is dropped from it
        db.open.set()
        assert await writer.flush(5)
    assert db.stored == ["in flight", "second", "third"]


# -- shutdown ------------------------------------------------------------------------------------


async def test_flush_with_nothing_waiting_is_done_even_with_no_time(make_writer):
    async with started(make_writer()) as writer:
        assert await writer.flush(0)


async def test_flush_and_close_give_up_after_their_timeout_when_the_database_hangs(make_writer, db, caplog):
    db.open.clear()
    writer = make_writer()
    writer.start()
    writer.add("stuck")
    assert not await writer.flush(0.05)
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        await asyncio.wait_for(writer.close(0.05), 5)
    assert db.stored == []
    assert "test: 1 records were not written to the database before shutdown; they are lost" in caplog.text


async def test_close_writes_what_is_queued_first(make_writer, db):
    writer = make_writer()
    writer.start()
    for number in range(3):
        writer.add(number)
    await writer.close(5)
    assert db.stored == [0, 1, 2]


# -- the spool -----------------------------------------------------------------------------------


async def test_what_waits_during_an_outage_is_spooled_and_the_spool_empties_once_written(
    make_writer, db, pauses
):
    spool = ListSpool()
    db.down_for = math.inf
    pauses.going.clear()
    async with started(make_writer(spool=spool)) as writer:
        writer.add({"n": 1})
        writer.add({"n": 2})
        await eventually(lambda: pauses.seconds != [])
        assert spool.records == [{"n": 1}, {"n": 2}]
        writer.add({"n": 3})  # spooled at the next failed attempt (or when flush gives up)
        assert spool.records == [{"n": 1}, {"n": 2}]
        assert not await writer.flush(0.01)
        assert spool.records == [{"n": 1}, {"n": 2}, {"n": 3}]
        db.down_for = 0
        pauses.going.set()
        assert await writer.flush(5)
        assert spool.records == []
    assert db.stored == [{"n": 1}, {"n": 2}, {"n": 3}]


async def test_start_writes_what_the_spool_kept_from_an_earlier_run_first(make_writer, db, caplog):
    spool = ListSpool([{"n": 1}, {"n": 2}])
    writer = make_writer(spool=spool)
    writer.add({"n": 3})  # queued before the start: still after the spooled ones
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        async with started(writer):
            assert await writer.flush(5)
    assert db.stored == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert spool.records == []
    assert "test: 2 records from the spool test-spool will be written to the database" in caplog.text


async def test_a_spooled_record_changed_in_place_is_rewritten_in_the_spool(make_writer, db, pauses):
    spool = ListSpool()
    db.down_for = math.inf
    pauses.going.clear()
    async with started(make_writer(spool=spool)) as writer:
        secret = {"text": "my card is 4111"}
        writer.add(secret)
        await eventually(lambda: pauses.seconds != [])
        secret["text"] = "edited"
        writer.pending_changed([secret])
        assert spool.records == [{"text": "edited"}]
        db.down_for = 0
        pauses.going.set()
        assert await writer.flush(5)
    assert db.stored == [{"text": "edited"}]


async def test_a_full_spool_keeps_the_rest_in_memory(make_writer, db, pauses, caplog):
    spool = ListSpool(room=2)
    db.down_for = math.inf
    pauses.going.clear()
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        async with started(make_writer(spool=spool)) as writer:
            for number in range(3):
                writer.add(number)
            await eventually(lambda: pauses.seconds != [])
            assert spool.records == [0, 1]
            db.down_for = 0
            pauses.going.set()
            assert await writer.flush(5)
    assert db.stored == [0, 1, 2] and spool.records == []
    assert "test: the spool test-spool is full; 1 records are kept in memory only" in caplog.text


async def test_close_spools_what_could_not_be_written(make_writer, db, caplog):
    spool = ListSpool()
    db.open.clear()
    writer = make_writer(spool=spool)
    writer.start()
    writer.add({"n": 1})
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        await asyncio.wait_for(writer.close(0.05), 5)
    assert spool.records == [{"n": 1}]
    assert "they wait in the spool test-spool for the next start" in caplog.text


# -- metrics ---------------------------------------------------------------------------------


async def test_the_queue_length_gauge_reads_the_newest_writer_of_a_name_and_a_writer_gone_reads_empty(
    make_writer, db
):
    from botkit.metrics import PrometheusMetrics

    metrics = PrometheusMetrics("0")

    def queued() -> float:
        text = metrics.exposition()[0].decode()
        (line,) = [line for line in text.splitlines() if line.startswith('botkit_write_queue_length{writer="test"}')]
        return float(line.split()[-1])

    db.open.clear()  # writes hang: what is added stays queued
    first = make_writer(metrics=metrics)
    for number in range(3):
        first.add(number)
    assert queued() == 3  # read at the scrape: nothing set it
    second = make_writer(metrics=metrics)  # as a plugin reloaded makes a new writer of the same name
    second.add("a")
    assert queued() == 1
    del second
    gc.collect()
    assert queued() == 0


# -- lingering for fuller batches ------------------------------------------------------------


async def test_records_added_while_the_writer_lingers_go_into_one_batch(make_writer, db):
    # A linger far longer than the test: the batch is written because it fills, not because time passed.
    async with started(make_writer(linger=3600, batch_size=5)) as writer:
        for number in range(4):
            writer.add(number)
            await asyncio.sleep(0)  # the writer runs between adds, as between messages
        assert db.batches == []  # it waits for more
        writer.add(4)  # the batch is full: written now
        assert await writer.written_up_to_now(30)
    assert db.batches == [[0, 1, 2, 3, 4]]


async def test_flush_and_written_up_to_now_do_not_wait_out_the_linger(make_writer, db):
    async with started(make_writer(linger=3600)) as writer:
        writer.add(1)
        await asyncio.sleep(0)
        assert await writer.written_up_to_now(30)  # False if it waited the hour
        writer.add(2)
        await asyncio.sleep(0)
        assert await writer.flush(30)
    assert db.batches == [[1], [2]]


async def test_a_writer_without_linger_writes_what_it_has_at_once(make_writer, db):
    async with started(make_writer(batch_size=5)) as writer:
        writer.add(1)
        await eventually(lambda: db.batches or None, what="the first record written on its own")
        writer.add(2)
        assert await writer.flush(30)
    assert db.batches == [[1], [2]]
