"""Conversation memory on SQLite and a real PostgreSQL: storage, history, scopes, budgets, outages."""

from __future__ import annotations

import logging
import sqlite3
from contextlib import ExitStack, contextmanager
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from botkit import ReplyStatus, Role, Turn
from botkit.plugins.memory import memory
from botkit.plugins.memory import store as memory_store
from botkit.storage import ConversationRecord, MessageRecord, UserRecord
from botkit.testing import WAIT_TIMEOUT, Gate, eventually


async def flushed(bot) -> None:
    assert await memory(bot).flush(WAIT_TIMEOUT), "memory writes did not reach the database"


async def all_spooled(bot) -> list[dict]:
    """Wait until the writer, failing to reach the database, has put every pending record in the spool."""
    store = memory(bot)

    def spool_holds_what_is_pending() -> list[dict] | None:
        records = store.spool.read()
        pending = {record["id"] for record in store.pending}
        return records if pending and {record["id"] for record in records} == pending else None

    return await eventually(spool_holds_what_is_pending, what="every pending record in the spool")


async def rows(bot, model=MessageRecord):
    async with bot.db.sessions() as session:
        return list((await session.scalars(select(model).order_by(model.id))).all())


async def test_message_and_reply_are_stored_with_their_metadata(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        bot.backend.add_reply("Hi ", "Ann")
        message = bot.chat.message("hello there", user="ann", channel="general", thread="t1")
        from botkit.testing import RecordingResponder

        await bot.handle(message, RecordingResponder())
        await flushed(bot)
        question, answer = await rows(bot)
        users = await rows(bot, UserRecord)
        conversations = await rows(bot, ConversationRecord)
    assert (question.role, question.text, question.author_id, question.platform_message_id) == (
        "user",
        "hello there",
        "ann",
        message.message_id,
    )
    assert (question.platform, question.channel_id, question.thread_id) == ("test", "general", "t1")
    assert question.created_at == message.created_at and question.token_count > 0
    assert (answer.role, answer.text, answer.status, answer.reply_to_id) == (
        "assistant",
        "Hi Ann",
        "completed",
        question.id,
    )
    assert (answer.backend, answer.model, answer.completion_tokens) == ("scripted", "scripted", 2)
    assert answer.prompt_tokens > 0 and answer.latency_ms is not None
    assert [(u.platform, u.platform_user_id) for u in users] == [("test", "ann")]
    assert question.user_id == users[0].id
    assert [c.scope_key for c in conversations] == ["test:general:t1"]


async def test_history_goes_into_the_next_prompt(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        bot.backend.say("Nice to meet you, Ann.")
        await bot.chat.say("My name is Ann.")
        await bot.chat.say("What is my name?")
    assert bot.backend.prompts[1].turns == [
        Turn(Role.USER, "My name is Ann."),
        Turn(Role.ASSISTANT, "Nice to meet you, Ann."),
        Turn(Role.USER, "What is my name?"),
    ]


async def test_exchanges_within_write_delay_share_one_transaction_and_are_read_meanwhile(make_bot, storage_config):
    # A delay far longer than the test: the writes wait for it until something waits for them.
    config = {**storage_config, "plugins": {"memory": {"write_delay": 5}}}
    async with make_bot(config) as bot:
        for word in ("heron", "osprey", "kestrel"):
            bot.backend.say("Noted.")
            await bot.chat.say(f"The code word is {word}.")
        # Not written yet: the next prompt still has them, from the queue.
        assert [t.text for t in bot.backend.prompts[-1].turns][-3:] == [
            "The code word is osprey.", "Noted.", "The code word is kestrel.",
        ]  # fmt: skip
        assert memory(bot).writer.writes_started == 0
        await flushed(bot)  # flush does not wait out the delay
        assert memory(bot).writer.writes_started == 1
        assert len(await rows(bot)) == 6


async def test_memory_survives_a_restart(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        bot.backend.say("Noted.")
        await bot.chat.say("The code word is heron.")
    async with make_bot(storage_config) as restarted:
        await restarted.chat.say("What is the code word?")
    assert [t.text for t in restarted.backend.prompts[0].turns] == [
        "The code word is heron.",
        "Noted.",
        "What is the code word?",
    ]


async def test_stopped_and_failed_replies_are_stored_and_marked(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        bot.backend.add_reply("partial ", RuntimeError("engine died"))
        await bot.chat.say("first")
        gate = Gate()
        bot.backend.add_reply("word ", gate, *["word "] * 100)
        task, _ = bot.chat.say_nowait("second")
        await gate.reached()
        await bot.chat.say("/stop")
        await task
        await flushed(bot)
        stored = [(r.role, r.status) for r in await rows(bot)]
        await bot.chat.say("third")
    assert stored == [("user", None), ("assistant", "failed"), ("user", None), ("assistant", "stopped")]
    # Neither the apology nor the cut-off reply is fed back to the model as if it were an answer.
    assert [t.text for t in bot.backend.prompts[-1].turns] == ["first", "second", "third"]


async def test_reset_starts_fresh_and_keeps_the_log(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        await bot.chat.say("old topic")
        reset = await bot.chat.say("/reset")
        await bot.chat.say("new topic")
        await flushed(bot)
        conversations = await rows(bot, ConversationRecord)
        texts = [r.text for r in await rows(bot)]
    assert reset.texts == [
        "Started a fresh conversation: I won't use what was said before (it stays in the log)."
    ]
    assert [t.text for t in bot.backend.prompts[-1].turns] == ["new topic"]
    assert (
        len(conversations) == 2
        and conversations[0].ended_at is not None
        and conversations[1].ended_at is None
    )
    assert "old topic" in texts and "new topic" in texts


async def test_history_command_shows_what_is_remembered(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        empty = await bot.chat.say("/history")
        bot.backend.say("Blue is nice.")
        await bot.chat.say("I like blue.")
        shown = await bot.chat.say("/history")
    assert empty.texts == ["I don't remember anything of this conversation yet."]
    assert shown.texts == [
        "What I remember of this conversation (oldest first):\nyou: I like blue.\nme: Blue is nice."
    ]


@pytest.mark.parametrize(
    ("scope", "same", "different"),
    [
        ("channel", {"channel": "c", "thread": "t2"}, {"channel": "other"}),
        ("thread", {"channel": "c", "thread": "t1", "user": "bob"}, {"channel": "c", "thread": "t2"}),
        ("user", {"channel": "c", "thread": "t1"}, {"channel": "c", "thread": "t1", "user": "bob"}),
    ],
)
async def test_conversation_scope_decides_what_is_shared(make_bot, tmp_path, scope, same, different):
    config = {"bot": {"conversation_scope": scope}, "storage": {"data_dir": str(tmp_path / "d")}}
    async with make_bot(config) as bot:
        await bot.chat.say("first", user="alice", channel="c", thread="t1")
        await bot.chat.say("shared?", **{"user": "alice", **same})
        await bot.chat.say("separate?", **{"user": "alice", **different})
    assert [t.text for t in bot.backend.prompts[1].turns][0] == "first"
    assert [t.text for t in bot.backend.prompts[2].turns] == ["separate?"]


async def test_direct_messages_are_one_conversation_per_user(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        await bot.chat.say("secret plan", user="alice", channel="dm-a", dm=True)
        await bot.chat.say("hello", user="bob", channel="dm-b", dm=True)
        await bot.chat.say("and again", user="alice", channel="dm-a", dm=True)
    assert [t.text for t in bot.backend.prompts[1].turns] == ["hello"]
    assert [t.text for t in bot.backend.prompts[2].turns][0] == "secret plan"


async def test_shared_conversations_keep_who_said_what(make_bot, storage_config):
    async with make_bot({**storage_config, "bot": {"conversation_scope": "channel"}}) as bot:
        await bot.chat.say("I'm hungry", user="alice")
        await bot.chat.say("Me too", user="bob")
    alone, together = bot.backend.prompts
    assert alone.turns == [Turn(Role.USER, "I'm hungry")]  # one person: no names needed
    assert [(t.speaker, t.text) for t in together.turns if t.role is Role.USER] == [
        ("alice", "I'm hungry"),
        ("bob", "Me too"),
    ]
    assert "bob: Me too" in bot.backend.requests[1].rendered


async def test_history_fits_the_token_budget_newest_first(make_bot, storage_config, caplog):
    config = {**storage_config, "plugins": {"memory": {"history_tokens": 60}}}
    async with make_bot(config) as bot:
        for i in range(8):
            bot.backend.say(f"answer {i} " + "x" * 40)
            await bot.chat.say(f"question {i} " + "y" * 40)
        with caplog.at_level(logging.INFO, logger="botkit.plugins.memory"):
            await bot.chat.say("latest")
    turns = bot.backend.prompts[-1].turns
    assert turns[-1].text == "latest" and 1 <= len(turns) - 1 < 16
    assert turns[-2].text.startswith("answer 7")
    assert "older turns of test:general left out to fit history_tokens" in caplog.text


async def test_odd_text_is_stored_exactly_or_refused(make_bot, storage_config):
    exact = [
        "Robert'); DROP TABLE messages;--",
        "emoji 🦜 and RTL \u202eoverride\u202c and zalgo z\u0335\u0321a\u0334l\u0337g\u0336o",
        "quotes \" ' ` and backslash \\ and percent %s %(x)s",
        "z" * 100_000,  # 100 KB
    ]
    config = {**storage_config, "bot": {"max_message_chars": 200_000}, "backend": {"context_window": 32_000}}
    async with make_bot(config) as bot:
        for text in exact:
            await bot.chat.say(text)
        nul = await bot.chat.say("before\x00after")
        surrogate = await bot.chat.say("broken \ud800 text")
        await flushed(bot)
        stored = [r.text for r in await rows(bot) if r.role == "user"]
    assert stored == exact
    for refused in (nul, surrogate):
        assert refused.texts == [
            "Sorry, your message contains characters I can't read (a NUL byte or broken Unicode). "
            "Please send it again without them."
        ]


@contextmanager
def sqlite_locked(path):
    """Another process's exclusive lock: to this bot, the database is unavailable."""
    blocker = sqlite3.connect(path, timeout=0, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


@contextmanager
def database_down(bot, postgres=None):
    if bot.db.is_sqlite:
        with sqlite_locked(bot.db.sqlite_path):
            yield
    else:
        postgres.stop()
        try:
            yield
        finally:
            postgres.resume()


async def test_database_outage_loses_nothing(make_bot, storage_config, request, caplog):
    storage = {**storage_config["storage"], "busy_timeout": 0.2}
    # No history cache: this test is about reading and writing through an outage.
    config = {"storage": storage, "plugins": {"memory": {"retry_interval": 0.2, "cache_seconds": 0}}}
    postgres = request.getfixturevalue("postgres") if "url" in storage else None
    async with make_bot(config) as bot:
        bot.backend.say("before the outage")
        await bot.chat.say("one")
        await flushed(bot)
        with caplog.at_level(logging.ERROR, logger="botkit.plugins.memory"):
            with database_down(bot, postgres):
                replies = [await bot.chat.say(f"during {i}") for i in range(3)]
                spooled = await all_spooled(bot)
                await eventually(lambda: memory(bot).outage, what="a failed write")
        assert all(r.status is ReplyStatus.COMPLETED for r in replies)  # users still get answers
        # Each exchange, and after it the platform id its reply was delivered as.
        exchanges = [r["user"]["text"] for r in spooled if r["kind"] == "exchange"]
        assert exchanges == ["during 0", "during 1", "during 2"]
        assert "cannot write to the database" in caplog.text
        # The conversation carried on through the outage from what was pending (and, where the
        # database could still be read, from what it held before).
        texts = [t.text for t in bot.backend.prompts[3].turns if t.role is Role.USER]
        assert texts == (
            ["during 0", "during 1", "during 2"] if postgres else ["one", "during 0", "during 1", "during 2"]
        )
        await flushed(bot)
        texts = [r.text for r in await rows(bot) if r.role == "user"]
        assert texts == ["one", "during 0", "during 1", "during 2"]
        assert memory(bot).spool.read() == []  # emptied once written


async def test_spool_is_written_after_a_restart(make_bot, tmp_path):
    data = tmp_path / "data"
    config = {
        "storage": {"data_dir": str(data), "busy_timeout": 0.2},
        "plugins": {"memory": {"flush_timeout": 0.3}},
    }
    lock = ExitStack()
    async with make_bot(config) as bot:
        await bot.chat.say("hello")
        await flushed(bot)
        lock.enter_context(sqlite_locked(bot.db.sqlite_path))
        await bot.chat.say("said while the database was locked")
        await all_spooled(bot)
        spool = memory(bot).spool.path
    # The bot has stopped with the exchange only in the spool.
    lock.close()
    assert spool.exists()
    async with make_bot(config) as restarted:
        await flushed(restarted)
        texts = [r.text for r in await rows(restarted) if r.role == "user"]
        assert memory(restarted).spool.read() == []  # emptied once written
    assert texts == ["hello", "said while the database was locked"]


async def test_memory_can_be_switched_off(make_bot, storage_config):
    async with make_bot({**storage_config, "plugins": {"memory": {"enabled": False}}}) as bot:
        await bot.chat.say("first")
        await bot.chat.say("second")
        reset = await bot.chat.say("/reset")
        assert await rows(bot) == []
    assert [t.text for t in bot.backend.prompts[1].turns] == ["second"]
    assert reset.texts[0].startswith("Unknown command /reset")


async def test_history_cache_follows_resets_and_expires(make_bot, storage_config, monkeypatch):
    # The cache's own clock, moved on by the test: expiry is checked without waiting for it.
    now = [0.0]
    monkeypatch.setattr(memory_store, "time", SimpleNamespace(monotonic=lambda: now[0]))
    config = {**storage_config, "plugins": {"memory": {"cache_seconds": 60}}}
    async with make_bot(config) as bot:
        await bot.chat.say("first")
        await bot.chat.say("second")
        assert await memory(bot).flush(WAIT_TIMEOUT)
        # Another process writes to the same conversation behind this one's cache.
        async with bot.db.session() as session:
            question = (await rows(bot))[0]
            session.add(
                MessageRecord(
                    conversation_id=question.conversation_id, role="user", text="from elsewhere",
                    platform="test", channel_id="general", token_count=3,
                )
            )
        await bot.chat.say("third")
        cached = [t.text for t in bot.backend.prompts[-1].turns if t.role is Role.USER]
        now[0] += 61
        await bot.chat.say("fourth")
        fresh = [t.text for t in bot.backend.prompts[-1].turns if t.role is Role.USER]
        await bot.chat.say("/reset")
        await bot.chat.say("after reset")
    assert cached == ["first", "second", "third"]
    assert fresh == ["first", "second", "from elsewhere", "third", "fourth"]
    assert [t.text for t in bot.backend.prompts[-1].turns] == ["after reset"]
