"""Several replicas serving one bot: conversation locks in Redis or PostgreSQL, fencing, memory across replicas."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import pytest

from botkit import hookimpl
from botkit.cluster import PREFIX, ClusterLocks
from botkit.errors import ConfigError
from botkit.settings import ClusterSettings, settings_from_mapping
from botkit.storage.database import Database, StorageSettings
from botkit.testing import eventually


def locks_for(tmp_path, redis_url: str | None = None, db_url: str | None = None, ttl: float = 30.0):
    storage = StorageSettings(data_dir=tmp_path, url=db_url)
    return ClusterLocks(ClusterSettings(enabled=True, redis_url=redis_url, lock_ttl_s=ttl), Database(storage))


@pytest.fixture
def pg_url(postgres):
    return postgres.create_database(f"c{uuid.uuid4().hex[:12]}")


class Journal:
    """A plugin recording, across bots, when each message's answer starts and ends, and handovers."""

    def __init__(self, name: str, events: list[tuple[str, str, str]]) -> None:
        self.name = name
        self.events = events
        self.stores: list[str | None] = []

    @hookimpl
    def botkit_prepare_context(self, message, prompt, bot):
        lease = bot.pipeline.lanes.lease(message.conversation_key(bot.settings.bot.conversation_scope))
        self.stores.append(None if lease is None else lease.store)
        self.events.append((self.name, "start", message.text))

    @hookimpl
    def botkit_reply_ready(self, message, reply, bot):
        self.events.append((self.name, "ready", message.text))

    @hookimpl
    def botkit_conversation_handover(self, conversation_key, bot):
        self.events.append((self.name, "handover", conversation_key))


async def test_redis_lock_is_exclusive_and_its_tokens_grow(tmp_path, redis_server):
    first, second = locks_for(tmp_path, redis_server.url), locks_for(tmp_path, redis_server.url)
    try:
        held = await first.acquire("slack:C1")
        waiting = asyncio.ensure_future(second.acquire("slack:C1"))
        other = await second.acquire("slack:C2")  # another conversation goes on meanwhile
        await other.release()
        assert not waiting.done()
        await held.release()
        taken = await asyncio.wait_for(waiting, 10)
        assert taken.store == "redis" and taken.token > held.token
        assert await taken.confirm()
        await taken.release()
    finally:
        await first.close()
        await second.close()


async def test_fencing_a_holder_whose_lock_expired_neither_confirms_nor_frees_the_next(
    tmp_path, redis_server
):
    import redis.asyncio as aioredis

    first, second = locks_for(tmp_path, redis_server.url), locks_for(tmp_path, redis_server.url)
    client = aioredis.from_url(redis_server.url)
    try:
        stale = await first.acquire("slack:C9")
        await client.pexpire(PREFIX + "slack:C9", 1)  # as if its holder had paused past lock_ttl_s
        fresh = await asyncio.wait_for(second.acquire("slack:C9"), 10)
        assert fresh.token > stale.token
        assert not await stale.confirm()
        await stale.release()  # compare-and-delete: the successor's lock stays
        assert await fresh.confirm()
        await fresh.release()
    finally:
        await client.aclose()
        await first.close()
        await second.close()


async def test_a_reply_whose_lock_was_lost_waits_for_it_again_before_it_is_written(
    make_bot, redis_server, tmp_path, caplog
):
    import redis.asyncio as aioredis

    events: list[tuple[str, str, str]] = []
    config = {"cluster": {"enabled": True, "redis_url": redis_server.url}}
    other = locks_for(tmp_path, redis_server.url)
    client = aioredis.from_url(redis_server.url)
    async with make_bot(config, plugins={"journal": Journal("a", events)}) as bot:
        try:
            gate = bot.backend.hold("late answer")
            task, responder = bot.chat.say_nowait("question", channel="lost")
            await gate.reached()
            key = bot.chat.message("x", channel="lost").conversation_key(bot.settings.bot.conversation_scope)
            await client.pexpire(PREFIX + key, 1)
            intruder = await asyncio.wait_for(other.acquire(key), 10)
            caplog.set_level(logging.WARNING, "botkit.pipeline")
            gate.open()
            await eventually(lambda: "was lost while answering" in caplog.text)
            assert ("a", "ready", "question") not in events  # not written down beside the intruder
            await intruder.release()
            await asyncio.wait_for(task, 10)
            assert responder.texts[-1] == "late answer"
            assert "question" not in caplog.text
        finally:
            await client.aclose()
            await other.close()


async def test_two_bots_sharing_redis_answer_one_conversation_in_message_order(make_bot, redis_server):
    events: list[tuple[str, str, str]] = []
    config = {"cluster": {"enabled": True, "redis_url": redis_server.url}}
    async with make_bot(config, plugins={"journal": Journal("a", events)}) as first:
        async with make_bot(config, plugins={"journal": Journal("b", events)}) as second:
            gate = first.backend.hold("one")
            one, _ = first.chat.say_nowait("first", channel="shared")
            await gate.reached()
            two, _ = second.chat.say_nowait("second", channel="shared")
            await eventually(lambda: len(second.pipeline.lanes) == 1)
            gate.open()
            await asyncio.wait_for(asyncio.gather(one, two), 20)
    answers = [event for event in events if event[1] != "handover"]
    assert answers == [
        ("a", "start", "first"),
        ("a", "ready", "first"),
        ("b", "start", "second"),
        ("b", "ready", "second"),
    ]
    assert [event[0] for event in events if event[1] == "handover"] == ["a", "b"]


async def test_postgres_advisory_locks_exclude_across_sessions_and_free_with_the_session(tmp_path, pg_url):
    first, second = locks_for(tmp_path, db_url=pg_url), locks_for(tmp_path, db_url=pg_url)
    try:
        held = await first.acquire("discord:1")
        assert held.store == "postgresql" and held.token is None
        waiting = asyncio.ensure_future(second.acquire("discord:1"))
        other = await second.acquire("discord:2")
        await other.release()
        assert not waiting.done()
        await held.release()
        taken = await asyncio.wait_for(waiting, 10)
        assert await taken.confirm()
        again = asyncio.ensure_future(first.acquire("discord:1"))
        await second.close()  # the session ends: its locks go with it
        regained = await asyncio.wait_for(again, 10)
        assert await regained.confirm()
        assert not await taken.confirm()
        await regained.release()
    finally:
        await first.close()
        await second.close()


async def test_redis_down_falls_back_to_postgres_and_comes_back(
    make_bot, pg_url, tmp_path_factory, caplog, monkeypatch
):
    from servers import start_redis

    monkeypatch.setattr("botkit.cluster.REDIS_RETRY_S", 0.0)  # try Redis again on every message
    redis = start_redis(tmp_path_factory.mktemp("redis-down"))
    events: list[tuple[str, str, str]] = []
    journals = Journal("a", events), Journal("b", events)
    config = {"storage": {"url": pg_url}, "cluster": {"enabled": True, "redis_url": redis.url, "lock_ttl_s": 5.0}}
    caplog.set_level(logging.WARNING, "botkit.cluster")
    try:
        async with make_bot(config, plugins={"journal": journals[0]}) as first:
            async with make_bot(config, plugins={"journal": journals[1]}) as second:
                await first.chat.say("hello", channel="c")
                redis.stop()
                for round_ in range(2):
                    gate = first.backend.hold(f"answer {round_}")
                    one, _ = first.chat.say_nowait(f"first {round_}", channel="c")
                    await gate.reached()
                    two, _ = second.chat.say_nowait(f"second {round_}", channel="c")
                    await eventually(lambda: len(second.pipeline.lanes) == 1)
                    gate.open()
                    await asyncio.wait_for(asyncio.gather(one, two), 30)
                assert caplog.text.count("is unreachable") == 2  # once per replica, not per message
                redis.start()
                await first.chat.say("after", channel="c")
    finally:
        redis.stop()
    answers = [event[1:] for event in events if event[1] != "handover"]
    expected = []
    for text in ["hello", "first 0", "second 0", "first 1", "second 1", "after"]:
        expected += [("start", text), ("ready", text)]
    assert answers == expected
    assert journals[0].stores == ["redis", "postgresql", "postgresql", "redis"]
    assert journals[1].stores == ["postgresql", "postgresql"]
    assert "Redis is back" in caplog.text
    assert "hello" not in caplog.text and "first 0" not in caplog.text


CHILD = """
import asyncio, sys
from pathlib import Path
from botkit.cluster import ClusterLocks
from botkit.settings import ClusterSettings
from botkit.storage.database import Database, StorageSettings

async def main():
    redis_url, db_url = sys.argv[1] or None, sys.argv[2] or None
    storage = StorageSettings(data_dir=Path(sys.argv[3]), url=db_url)
    locks = ClusterLocks(ClusterSettings(enabled=True, redis_url=redis_url, lock_ttl_s=1.0), Database(storage))
    await locks.acquire("slack:killed")
    print("held", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.parametrize("store", ["redis", "postgresql"])
async def test_a_killed_replicas_lock_is_free_within_lock_ttl_s(store, tmp_path, redis_server, pg_url):
    redis_url = redis_server.url if store == "redis" else ""
    db_url = pg_url if store == "postgresql" else ""
    await _flush_key(redis_server.url)
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), redis_url, db_url, str(tmp_path)],
        stdout=subprocess.PIPE,
        env=os.environ.copy(),
    )
    locks = locks_for(tmp_path, redis_url or None, db_url or None, ttl=1.0)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 30)
        assert line.strip() == b"held"
        child.send_signal(signal.SIGKILL)
        child.wait()
        # lock_ttl_s (1 s) plus room for a busy machine: never assert how soon, only that it happened.
        lease = await asyncio.wait_for(locks.acquire("slack:killed"), 1.0 + 10)
        assert lease.store == store
        await lease.release()
    finally:
        child.kill()
        await locks.close()


async def _flush_key(url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    await client.delete(PREFIX + "slack:killed")
    await client.aclose()


async def test_memory_of_one_replica_is_seen_by_the_next_even_with_a_long_cache(make_bot, pg_url):
    config = {
        "storage": {"url": pg_url},
        "cluster": {"enabled": True},
        "plugins": {"memory": {"cache_seconds": 3600}},
    }
    async with make_bot(config) as first:
        async with make_bot(config) as second:
            assert first.clustered and second.clustered
            second.backend.say("zero reply")
            await second.chat.say("turn zero", channel="m")  # its history is now read once
            first.backend.say("one reply")
            await first.chat.say("turn one", channel="m")
            second.backend.say("two reply")
            await second.chat.say("turn two", channel="m")
            texts = [turn.text for turn in second.backend.prompts[-1].turns]
    assert texts == ["turn zero", "zero reply", "turn one", "one reply", "turn two"]


async def test_one_process_on_sqlite_takes_no_cross_process_lock(bot):
    assert not bot.clustered
    await bot.chat.say("hi")
    assert bot.pipeline.lanes.lease("anything") is None


def test_replicas_on_sqlite_without_redis_are_refused_with_what_to_set(tmp_path):
    with pytest.raises(ConfigError, match=r"\[cluster\] enabled: .*\[cluster\] redis_url.*\[storage\] url"):
        ClusterLocks(ClusterSettings(enabled=True), Database(StorageSettings(data_dir=tmp_path)))


def test_a_redis_url_without_enabled_is_not_used_and_the_log_says_so(tmp_path, caplog):
    caplog.set_level(logging.WARNING, "botkit.cluster")
    settings = settings_from_mapping({"cluster": {"redis_url": "redis://localhost:6379/0"}})
    locks = ClusterLocks(settings.cluster, Database(StorageSettings(data_dir=tmp_path)))
    assert not locks.active
    assert "redis_url is set but enabled is false" in caplog.text


async def test_one_process_on_postgresql_takes_no_cross_process_lock(make_bot, pg_url):
    async with make_bot({"storage": {"url": pg_url}}) as bot:
        assert not bot.clustered
        await bot.chat.say("hi")
        assert bot.pipeline.lanes.lease("anything") is None
