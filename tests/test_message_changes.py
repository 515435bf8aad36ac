"""Users' edits and deletions reach memory's stored copy and history; redelivered events are seen once."""

from __future__ import annotations

import asyncio
import io
from contextlib import ExitStack
from types import SimpleNamespace

from sqlalchemy import select
from test_memory import all_spooled, database_down, flushed, rows, sqlite_locked

from botkit import MessageChange, Role, deliveries, hookimpl
from botkit.adapters.console import ConsoleAdapter
from botkit.deliveries import SeenDeliveries
from botkit.plugins.feedback import recorder
from botkit.plugins.memory import memory
from botkit.storage import FeedbackRecord, MessageRecord
from botkit.testing import WAIT_TIMEOUT


def user_texts(prompt) -> list[str]:
    return [turn.text for turn in prompt.turns if turn.role is Role.USER]


class SeenChanges:
    """A third-party plugin that keeps a copy of its own: it sees every change."""

    def __init__(self) -> None:
        self.changes: list[MessageChange] = []

    @hookimpl
    async def botkit_message_changed(self, change):
        self.changes.append(change)


async def test_an_edit_updates_the_stored_copy_and_what_the_model_sees(make_bot, storage_config):
    plugin = SeenChanges()
    async with make_bot(storage_config, plugins={"seen": plugin}) as bot:
        first = await bot.chat.say("My name is Ann.", user="ann")
        await flushed(bot)
        await bot.chat.say("What is my name?", user="ann")  # history now cached
        await bot.chat.edit(first, "My name is Annabelle, call me Belle.")
        await bot.chat.say("And now?", user="ann")
        await flushed(bot)
        question = (await rows(bot))[0]
        shown = await bot.chat.say("/history", user="ann")
    assert user_texts(bot.backend.prompts[-1]) == [
        "My name is Annabelle, call me Belle.",
        "What is my name?",
        "And now?",
    ]
    assert question.text == "My name is Annabelle, call me Belle."
    assert question.edited_at is not None and question.deleted_at is None
    assert question.token_count == await bot.backend.count_text("My name is Annabelle, call me Belle.")
    assert "you: My name is Annabelle, call me Belle." in shown.texts[0]
    assert [(c.message_id, c.text, c.deleted) for c in plugin.changes] == [
        (first.message.message_id, "My name is Annabelle, call me Belle.", False)
    ]


async def test_a_deleted_message_leaves_history_and_the_database_keeps_no_text(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        secret = await bot.chat.say("my password is hunter2", user="ann", dm=True, channel="dm-ann")
        await bot.chat.say("did you get that?", user="ann", dm=True, channel="dm-ann")
        await bot.chat.delete(secret)
        await bot.chat.edit(secret, "resurrected?")  # a deleted message stays deleted
        await bot.chat.say("what did I tell you?", user="ann", dm=True, channel="dm-ann")
        await flushed(bot)
        deleted = (await rows(bot))[0]
        shown = await bot.chat.say("/history", user="ann", dm=True, channel="dm-ann")
    assert user_texts(bot.backend.prompts[-1]) == ["did you get that?", "what did I tell you?"]
    assert (deleted.text, deleted.token_count) == ("", 0)
    assert deleted.deleted_at is not None and deleted.edited_at is None
    assert "hunter2" not in shown.texts[0]
    assert len([t for t in bot.backend.prompts[-1].turns if t.role is Role.ASSISTANT]) == 2  # replies stay


async def test_changes_to_messages_the_bot_never_stored_change_nothing(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        await bot.chat.say("hello", user="ann")
        command = await bot.chat.say("/help", user="ann")
        await bot.chat.edit(command, "/help me")
        await bot.chat.delete(bot.chat.message("never sent to the bot"))
        await flushed(bot)
        stored = [(r.text, r.edited_at, r.deleted_at) for r in await rows(bot) if r.role == "user"]
    assert stored == [("hello", None, None)]


async def test_an_edit_while_the_bot_is_answering_is_kept(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        gate = bot.backend.hold(*["word "] * 10)
        task, first = bot.chat.say_nowait("tell me about cats", user="ann")
        await gate.reached()  # generating now; the exchange is stored only after it
        await bot.chat.edit(first, "tell me about dogs")
        gate.open()
        await task
        await bot.chat.say("more", user="ann")
        await flushed(bot)
        stored = [r.text for r in await rows(bot) if r.role == "user"]
    assert user_texts(bot.backend.prompts[-1]) == ["tell me about dogs", "more"]
    assert stored == ["tell me about dogs", "more"]


async def test_changes_during_a_database_outage_land_after_it(make_bot, storage_config, request):
    storage = {**storage_config["storage"], "busy_timeout": 0.2}
    config = {"storage": storage, "plugins": {"memory": {"retry_interval": 0.2, "cache_seconds": 0}}}
    postgres = request.getfixturevalue("postgres") if "url" in storage else None
    async with make_bot(config) as bot:
        before = await bot.chat.say("written before the outage", user="ann")
        await flushed(bot)
        with database_down(bot, postgres):
            during = await bot.chat.say("my card is 4111", user="ann")
            gone = await bot.chat.say("sent during the outage", user="ann")
            await bot.chat.edit(before, "edited during the outage")
            await bot.chat.edit(during, "my card is none of your business")
            await bot.chat.delete(gone)
            await all_spooled(bot)
            spool = memory(bot).spool.path.read_text(encoding="utf-8")
            await bot.chat.say("still there?", user="ann")
        await flushed(bot)
        stored = [(r.text, r.edited_at is not None, r.deleted_at is not None) for r in await rows(bot)]
    # While the database is down, history applies the pending changes (PostgreSQL cannot even be
    # read: only pending records are; a locked SQLite file still can be).
    pending = ["my card is none of your business", "still there?"]
    assert user_texts(bot.backend.prompts[-1]) == (
        pending if postgres else ["edited during the outage", *pending]
    )
    assert "4111" not in spool and "sent during the outage" not in spool  # the spool keeps no old copy
    assert [s for s in stored if s[0] != "Hello from the scripted backend."] == [
        ("edited during the outage", True, False),
        ("my card is none of your business", True, False),
        ("", False, True),
        ("still there?", False, False),
    ]


async def test_a_spooled_edit_is_written_after_a_restart(make_bot, tmp_path):
    config = {
        "storage": {"data_dir": str(tmp_path / "data"), "busy_timeout": 0.2},
        "plugins": {"memory": {"flush_timeout": 0.3}},
    }
    lock = ExitStack()
    async with make_bot(config) as bot:
        first = await bot.chat.say("hello", user="ann")
        await flushed(bot)
        lock.enter_context(sqlite_locked(bot.db.sqlite_path))
        second = await bot.chat.say("said while the database was locked", user="ann")
        await bot.chat.edit(first, "hello, edited")
        await bot.chat.delete(second)
        await all_spooled(bot)
    lock.close()  # the bot stopped with the exchange and both changes only in the spool
    async with make_bot(config) as restarted:
        await flushed(restarted)
        stored = [(r.text, r.deleted_at is not None) for r in await rows(restarted) if r.role == "user"]
    assert stored == [("hello, edited", False), ("", True)]


async def test_an_edit_spooled_behind_its_unedited_message_applies_after_it(make_bot, tmp_path):
    config = {
        "storage": {"data_dir": str(tmp_path / "data"), "busy_timeout": 0.2},
        "plugins": {"memory": {"flush_timeout": 0.3}},
    }
    lock = ExitStack()
    async with make_bot(config) as bot:
        lock.enter_context(sqlite_locked(bot.db.sqlite_path))
        sent = await bot.chat.say("teh typo", user="ann")
        unedited = await all_spooled(bot)
        spool = memory(bot).spool
        await bot.chat.edit(sent, "the typo, fixed")
    lock.close()
    # As a crash between spooling the edit and rewriting its message would leave it: the message
    # with its old text, then the edit; both are written in one batch at the next start.
    spool.rewrite(unedited + [r for r in spool.read() if r["kind"] == "change"])
    async with make_bot(config) as restarted:
        await flushed(restarted)
        stored = [(r.text, r.edited_at is not None) for r in await rows(restarted) if r.role == "user"]
    assert [r["user"]["text"] for r in unedited if r["kind"] == "exchange"] == ["teh typo"]
    assert stored == [("the typo, fixed", True)]


def test_seen_deliveries_answer_the_first_and_forget_after_the_ttl(monkeypatch):
    now = [0.0]  # the clock it reads, moved on by the test
    monkeypatch.setattr(deliveries, "time", SimpleNamespace(monotonic=lambda: now[0]))
    seen = SeenDeliveries(ttl=60, limit=100)
    assert [seen.first("a"), seen.first("a"), seen.first("b"), seen.first("a")] == [True, False, True, False]
    now[0] += 59
    assert seen.first("a") is False
    now[0] += 2
    assert seen.first("a") is True  # expired: a redelivery this late is answered again
    assert seen.first("a") is False


def test_seen_deliveries_keep_at_most_limit_ids_forgetting_the_oldest():
    seen = SeenDeliveries(ttl=3600, limit=3)
    for delivery in ("a", "b", "c", "d"):
        assert seen.first(delivery)
    assert len(seen) <= 3
    assert seen.first("d") is False and seen.first("c") is False
    assert seen.first("a") is True  # the oldest was forgotten


async def test_first_delivery_is_per_platform(bot):
    assert await bot.first_delivery("slack", "Ev123") is True
    assert await bot.first_delivery("slack", "Ev123") is False
    assert await bot.first_delivery("discord", "Ev123") is True


async def run_console(bot, lines: list[str]) -> list[str]:
    stdout = io.StringIO()
    adapter = ConsoleAdapter(
        bot, bot.adapter_settings("console"), io.StringIO("\n".join(lines) + "\n"), stdout
    )
    await asyncio.wait_for(adapter.run(), 30)
    return stdout.getvalue().splitlines()


async def test_console_reacts_edits_and_deletes(make_bot, tmp_path):
    config = {"bot": {"name": "testbot"}, "backend": {"default_reply": "scripted answer"}}
    async with make_bot(config) as bot:
        output = await run_console(
            bot,
            [
                ":react 👍",
                ":edit nothing yet",
                "My name is Ann.",
                ":react 👍",
                ":react -👍",
                ":react 👎",
                ":react",
                ":edit My name is Belle.",
                "What is my name?",
                ":as bob",
                ":delete",
                ":as you",
                ":delete",
                ":delete",
            ],
        )
        await flushed(bot)
        assert await recorder(bot).settle(WAIT_TIMEOUT)
        stored = [(r.text, r.edited_at is not None, r.deleted_at is not None) for r in await rows(bot)]
        async with bot.db.sessions() as session:
            feedback = list((await session.execute(select(FeedbackRecord.value, FeedbackRecord.score))).all())
            replies = list(
                await session.scalars(
                    select(MessageRecord.platform_message_id).where(MessageRecord.role == "assistant")
                )
            )
    assert output == [
        "(no reply to react to yet)",
        "(you (you) have no message to edit)",
        "testbot> scripted answer",
        "(reacted 👍 on the last reply)",
        "(took back 👍 on the last reply)",
        "(reacted 👎 on the last reply)",
        "(:react needs an emoji, e.g. ':react 👍' (':react -👍' takes it back))",
        "(edited your last message)",
        "testbot> scripted answer",
        "(now bob in #general)",
        "(you (bob) have no message to delete)",
        "(now you in #general)",
        "(deleted your last message)",
        "(you (you) have no message to delete)",
    ]
    assert user_texts(bot.backend.prompts[1]) == ["My name is Belle.", "What is my name?"]
    assert stored == [
        ("My name is Belle.", True, False),
        ("scripted answer", False, False),
        ("", False, True),
        ("scripted answer", False, False),
    ]
    assert [tuple(row) for row in feedback] == [("👎", -1)]
    assert all(replies)  # the console's replies have ids, so reactions find them
