"""Platform deliveries claimed in the database: a redelivery is answered once, across restarts and replicas."""

from __future__ import annotations

import asyncio
import itertools
import logging
from datetime import timedelta
from types import SimpleNamespace

from sqlalchemy import inspect, select
from test_memory import database_down

from botkit import deliveries
from botkit.storage import Database, Migrator, StorageSettings, utcnow
from botkit.storage.models import SeenDeliveryRecord
from botkit.testing import eventually

METRICS = {"metrics": {"enabled": True}}


def counted(bot, result: str, platform: str = "slack") -> float:
    value = bot.metrics.registry.get_sample_value(
        "botkit_deliveries_total", {"platform": platform, "result": result}
    )
    return value or 0.0


async def stored(bot) -> list[tuple[str, str]]:
    async with bot.db.session() as session:
        rows = await session.execute(
            select(SeenDeliveryRecord.platform, SeenDeliveryRecord.delivery_id).order_by(
                SeenDeliveryRecord.platform, SeenDeliveryRecord.delivery_id
            )
        )
        return [tuple(row) for row in rows]


async def test_a_delivery_seen_before_a_restart_is_not_answered_again(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        assert await bot.first_delivery("slack", "Ev1") is True
        assert await bot.first_delivery("slack", "Ev1") is False  # this process remembers it
    async with make_bot(storage_config) as restarted:
        assert await restarted.first_delivery("slack", "Ev1") is False  # the database does
        assert await restarted.first_delivery("discord", "Ev1") is True  # per platform
        assert await stored(restarted) == [("discord", "Ev1"), ("slack", "Ev1")]


async def test_two_bots_on_one_database_racing_for_a_delivery_answer_it_once(
    make_bot, storage_config, tmp_path
):
    storage = storage_config["storage"]
    if "url" not in storage:  # one SQLite file, each bot with a data folder of its own
        storage = {**storage, "url": f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"}
    other = {**storage, "data_dir": str(tmp_path / "other")}
    async with make_bot({"storage": storage}) as one, make_bot({"storage": other}) as two:
        ids = [f"Ev{n}" for n in range(20)]
        claims = await asyncio.gather(
            *(bot.first_delivery("slack", delivery) for delivery in ids for bot in (one, two))
        )
        # Each id: one bot's claim True, the other's False.
        assert [claims[2 * n] + claims[2 * n + 1] for n in range(len(ids))] == [1] * len(ids)
        assert len(await stored(one)) == len(ids)


async def test_with_the_database_down_events_are_answered_and_one_warning_is_logged(
    make_bot, storage_config, request, caplog
):
    storage = {**storage_config["storage"], "busy_timeout": 0.2}
    postgres = request.getfixturevalue("postgres") if "url" in storage else None
    async with make_bot({"storage": storage, **METRICS}) as bot:
        assert await bot.first_delivery("slack", "Ev0") is True
        with caplog.at_level(logging.INFO, logger="botkit.deliveries"), database_down(bot, postgres):
            assert await bot.first_delivery("slack", "Ev1") is True  # unchecked, answered
            assert await bot.first_delivery("slack", "Ev1") is False  # this process still remembers
            assert await bot.first_delivery("slack", "Ev2") is True
            assert await bot.first_delivery("slack", "Ev0") is False
        warnings = [
            r for r in caplog.records if r.name == "botkit.deliveries" and r.levelno == logging.WARNING
        ]
        assert len(warnings) == 1, "one warning per outage, not one per event"
        assert "cannot check slack deliveries against the database" in warnings[0].getMessage()
        assert counted(bot, "unchecked") == 2 and counted(bot, "repeat") == 2

        assert await bot.first_delivery("slack", "Ev3") is True
        assert "the database answers again" in caplog.text
        assert counted(bot, "first") == 2
        # Claimed while the database was down: not in it, so another replica could answer it too.
        assert await stored(bot) == [("slack", "Ev0"), ("slack", "Ev3")]


async def test_rows_older_than_a_day_are_pruned_once_an_hour(make_bot, storage_config, monkeypatch):
    now = [0.0]  # the claims' clock, moved on by the test
    monkeypatch.setattr(deliveries, "time", SimpleNamespace(monotonic=lambda: now[0]))

    async def seen(bot, delivery_id: str, age: timedelta) -> None:
        async with bot.db.session() as session:
            session.add(
                SeenDeliveryRecord(platform="slack", delivery_id=delivery_id, first_seen_at=utcnow() - age)
            )

    async with make_bot(storage_config) as bot:
        await seen(bot, "old", deliveries.RETENTION + timedelta(minutes=1))
        await seen(bot, "recent", deliveries.RETENTION - timedelta(minutes=5))
        assert await bot.first_delivery("slack", "new") is True  # the first claim prunes
        assert await stored(bot) == [("slack", "new"), ("slack", "recent")]

        await seen(bot, "old again", deliveries.RETENTION + timedelta(minutes=1))
        now[0] += deliveries.PRUNE_INTERVAL - 1
        assert await bot.first_delivery("slack", "newer") is True
        assert ("slack", "old again") in await stored(bot)  # not within the hour

        now[0] += 2
        assert await bot.first_delivery("slack", "newest") is True
        assert ("slack", "old again") not in await stored(bot)
        # A pruned id is forgotten: a redelivery a day late would be answered (no platform sends one).
        assert await bot.first_delivery("slack", "old") is True


async def test_0003_adds_seen_deliveries_and_goes_back(storage_config):
    db = Database(StorageSettings(**storage_config["storage"]))
    await db.connect()
    migrator = Migrator(db, [])

    async def columns() -> dict[str, list[str]] | None:
        async with db.engine.connect() as connection:

            def read(sync):
                found = inspect(sync)
                if "seen_deliveries" not in found.get_table_names():
                    return None
                return {
                    "columns": [c["name"] for c in found.get_columns("seen_deliveries")],
                    "key": found.get_pk_constraint("seen_deliveries")["constrained_columns"],
                }

            return await connection.run_sync(read)

    try:
        await migrator.upgrade("0002")
        assert await columns() is None
        await migrator.upgrade("0003")
        assert await migrator.current() == {"0003"}
        assert await columns() == {
            "columns": ["platform", "delivery_id", "first_seen_at"],
            "key": ["platform", "delivery_id"],
        }
        await migrator.upgrade()  # the later versions: then the models and the database agree
        assert await migrator.differences() == []
        await migrator.downgrade("0002")
        assert await columns() is None
        assert await migrator.current() == {"0002"}
    finally:
        await db.close()


async def test_answers_come_in_the_order_the_deliveries_came(bot, monkeypatch):
    loop = asyncio.get_running_loop()
    answers = {"Ev1": loop.create_future(), "Ev2": loop.create_future()}
    claimed: list[str] = []

    async def claim(platform: str, delivery_id: str) -> bool:
        result = await answers[delivery_id]
        claimed.append(delivery_id)
        return result

    monkeypatch.setattr(bot.deliveries, "_claim", claim)
    order: list[str] = []

    async def deliver(delivery_id: str) -> None:
        await bot.first_delivery("slack", delivery_id)
        order.append(delivery_id)

    first, second = asyncio.ensure_future(deliver("Ev1")), asyncio.ensure_future(deliver("Ev2"))
    answers["Ev2"].set_result(True)  # the database answers the later delivery first
    await eventually(lambda: claimed == ["Ev2"], what="the later claim answered")
    assert order == []  # held back until the one before it is answered
    answers["Ev1"].set_result(True)
    await asyncio.gather(first, second)
    assert order == ["Ev1", "Ev2"]


async def test_a_claim_waits_no_longer_than_connect_timeout(make_bot, tmp_path):
    from test_memory import sqlite_locked

    # SQLite would wait busy_timeout (30 s) for the lock; the claim gives up after connect_timeout.
    config = {"storage": {"data_dir": str(tmp_path / "data"), "connect_timeout": 0.3}, **METRICS}
    async with make_bot(config) as bot:
        assert bot.deliveries.timeout == 0.3
        with sqlite_locked(bot.db.sqlite_path):
            assert await bot.first_delivery("slack", "EvT") is True
            assert counted(bot, "unchecked") == 1
        later = itertools.count()

        async def checked_again() -> bool:
            assert await bot.first_delivery("slack", f"EvU{next(later)}") is True
            return counted(bot, "first") == 1

        # Unchecked while the claim that timed out still waits for the lock; then checked again.
        await eventually(checked_again, what="claims checked against the database again")
        assert ("slack", "EvT") in await stored(bot)  # the claim that timed out landed after all
