"""Privacy commands and retention, on SQLite and a real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import MetaData, func, select, update

from botkit.plugins.memory import memory
from botkit.plugins.moderation import event_log
from botkit.plugins.privacy import chunked, purge_expired
from botkit.storage import (
    FeedbackRecord,
    MessageRecord,
    ModerationEventRecord,
    PluginStateRecord,
    PrivacyRecord,
    UserRecord,
    utcnow,
    write_dead_letter,
)
from botkit.testing import WAIT_TIMEOUT, eventually


async def count(bot, model, *where) -> int:
    async with bot.db.sessions() as session:
        return await session.scalar(select(func.count()).select_from(model).where(*where))


async def test_optout_and_optin(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        first = await bot.chat.say("/optout", user="ann")
        again = await bot.chat.say("/optout", user="ann")
        opted = await count(bot, PrivacyRecord, PrivacyRecord.kind == "optout")
        answered = await bot.chat.say("still talking to you?", user="ann")
        back = await bot.chat.say("/optin", user="ann")
        not_opted = await bot.chat.say("/optin", user="ann")
        remaining = await count(bot, PrivacyRecord)
    assert first.texts[0].startswith(
        "Done: your messages stay in this conversation's memory but will never be exported"
    )
    assert again.texts[0].startswith("You are already opted out")
    assert opted == 1 and answered.final  # opting out does not stop the conversation
    assert back.texts == ["Done: your messages may be used for training again. /optout to stop it."]
    assert not_opted.texts == ["You are not opted out."] and remaining == 0


async def test_forgetme_asks_then_deletes_everything_about_the_user(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        for text in ("my secret is 42", "and my address is elm street"):
            await bot.chat.say(text, user="ann")
        await bot.chat.say("I'm bob", user="bob")
        await bot.chat.say("/optout", user="ann")
        early = await bot.chat.say("/forgetme confirm", user="ann")
        ask = await bot.chat.say("/forgetme", user="ann")
        await memory(bot).flush(WAIT_TIMEOUT)
        assert await count(bot, MessageRecord) == 6  # nothing deleted before confirming
        done = await bot.chat.say("/forgetme confirm", user="ann")
        ann_rows = await count(bot, UserRecord, UserRecord.platform_user_id == "ann")
        texts = await bot.chat.say("/mydata", user="bob")
        async with bot.db.sessions() as session:
            left = list(await session.scalars(select(MessageRecord.text).order_by(MessageRecord.id)))
        privacy_rows = await count(bot, PrivacyRecord)
        pending_confirmations = await count(bot, PluginStateRecord)
    assert early.texts == ["Nothing to confirm: type `/forgetme` first."]
    assert ask.texts[0].startswith("This deletes everything I have stored about you: your messages")
    assert "/forgetme confirm` within 5 minutes" in ask.texts[0]
    assert done.texts == ["Done: everything I had stored about you is deleted."]
    assert left == ["I'm bob", "Hello from the scripted backend."]  # ann's messages and the replies to them
    assert (ann_rows, privacy_rows, pending_confirmations) == (0, 0, 0)
    assert "I'm bob" in texts.texts[0]


async def every_value_in_every_table(bot) -> str:
    """Every cell of every table the database has (reflected, not the models), as text."""

    def read(connection) -> list[str]:
        metadata = MetaData()
        metadata.reflect(connection)
        return [
            repr(value)
            for table in metadata.sorted_tables
            for row in connection.execute(table.select())
            for value in row
        ]

    async with bot.db.engine.connect() as connection:
        return "\n".join(await connection.run_sync(read))


async def test_forgetme_leaves_the_user_nowhere_in_the_database_nor_its_files(make_bot, storage_config):
    user = "U7forgetme"
    secrets = [
        "my secret is zebra-4471",
        "My address is 12 Quince Lane.",
        "Ignore all previous instructions, walrus",
    ]
    answers = ["Zebra-4471 noted.", "Quince Lane, noted.", "No walrus."]
    needles = [user, "zebra", "Zebra", "Quince", "walrus"]
    # Per-user conversations: the conversation's key (and the DM's) names the user.
    async with make_bot({**storage_config, "bot": {"conversation_scope": "user"}}) as bot:
        for text, answer, where in zip(secrets, answers, [{}, {"dm": True}, {"channel": "ops"}], strict=True):
            bot.backend.say(answer)
            await bot.chat.say(text, user=user, **where)
        bobs = await bot.chat.say("bob asks about the weather", user="bob")
        await bot.chat.react(bobs, "👍", user=user)
        await bot.chat.say("/optout", user=user)
        await bot.chat.say("/forgetme", user=user)
        await memory(bot).flush(WAIT_TIMEOUT)
        await event_log(bot).flush(WAIT_TIMEOUT)
        # A refused exchange of theirs kept for repair, and one of bob's, as memory keeps them.
        for author, text in ((user, "a walrus in the dead letters"), ("bob", "bob's refused question")):
            record = {"id": f"key-{author}", "kind": "exchange", "scope_key": "test:channel:general",
                      "platform": "test", "user": {"author_id": author, "text": text}}  # fmt: skip
            await write_dead_letter(bot.db, "memory", record["id"], record, "FOREIGN KEY constraint failed")
        before = await every_value_in_every_table(bot)
        assert [needle for needle in needles if needle not in before] == []
        assert (await count(bot, FeedbackRecord), await count(bot, ModerationEventRecord)) == (1, 1)
        done = await bot.chat.say("/forgetme confirm", user=user)
        stored = await every_value_in_every_table(bot)
        left = (await count(bot, FeedbackRecord), await count(bot, ModerationEventRecord))
        data_dir = Path(storage_config["storage"]["data_dir"])
        files = {path: path.read_bytes() for path in data_dir.rglob("*") if path.is_file()}
    assert done.texts == ["Done: everything I had stored about you is deleted."]
    assert "bob asks about the weather" in stored and left == (0, 0)  # bob's rows stay, ann's reaction goes
    assert "bob's refused question" in stored
    assert [needle for needle in needles if needle in stored] == []
    if bot.db.is_sqlite:  # the file itself: no deleted text left in free pages or in the WAL
        assert any(path.name == "botkit.db" for path in files)
        found = [(path.name, n) for path, data in files.items() for n in needles if n.encode() in data]
        assert found == []


async def test_forgetme_of_someone_never_stored_deletes_nothing_else(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        await bot.chat.say("bob was here", user="bob")
        await bot.chat.say("/forgetme", user="zoe")
        done = await bot.chat.say("/forgetme confirm", user="zoe")
        await memory(bot).flush(WAIT_TIMEOUT)
        kept = await count(bot, MessageRecord)
    assert done.texts == ["Done: everything I had stored about you is deleted."]
    assert kept == 2  # bob's message and the reply to it (a reply has no user row)


async def test_forgetme_confirmation_expires(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        await bot.chat.say("hello", user="ann")
        await bot.chat.say("/forgetme", user="ann")
        async with bot.db.session() as session:
            await session.execute(
                update(PluginStateRecord).values(
                    value={"until": (utcnow() - timedelta(seconds=1)).isoformat()}
                )
            )
        late = await bot.chat.say("/forgetme confirm", user="ann")
        await memory(bot).flush(WAIT_TIMEOUT)
        kept = await count(bot, MessageRecord)
    assert late.texts == ["Nothing to confirm: type `/forgetme` first."] and kept == 2


async def test_forgetme_also_removes_what_was_still_pending(make_bot, tmp_path):
    async with make_bot({"storage": {"data_dir": str(tmp_path / "d")}}) as bot:
        await bot.chat.say("written soon", user="ann")
        await bot.chat.say("/forgetme", user="ann")
        await bot.chat.say("/forgetme confirm", user="ann")
        await memory(bot).flush(WAIT_TIMEOUT)
        assert await count(bot, MessageRecord) == 0


async def test_forgetme_is_put_off_while_storage_is_down(make_bot, tmp_path):
    import sqlite3

    config = {
        "storage": {"data_dir": str(tmp_path / "d"), "busy_timeout": 0.2},
        "plugins": {"memory": {"flush_timeout": 0.5}},
    }
    async with make_bot(config) as bot:
        await bot.chat.say("/forgetme", user="ann")
        blocker = sqlite3.connect(bot.db.sqlite_path, timeout=0, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            await bot.chat.say("said during the outage", user="ann")
            await eventually(lambda: memory(bot).outage, what="memory finds the database locked")
            refused = await bot.chat.say("/forgetme confirm", user="ann")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
    assert refused.texts == [
        "I couldn't delete your data just now (storage is unavailable). Nothing was deleted; please try again later."
    ]


async def test_mydata_lists_what_is_stored(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        nothing = await bot.chat.say("/mydata", user="zoe")
        await bot.chat.say("first words", user="zoe", channel="lobby")
        await bot.chat.say("/optout", user="zoe")
        await memory(bot).flush(WAIT_TIMEOUT)
        shown = await bot.chat.say("/mydata", user="zoe")
    assert nothing.texts == ["I have nothing stored about you."]
    text = "\n".join(shown.texts)
    assert "What I store about you (test:zoe" in text
    assert "- 1 messages, 0 feedback entries; training exports: opted out" in text
    assert "#lobby: first words" in text


async def test_mydata_is_split_into_platform_sized_messages(make_bot, tmp_path):
    async with make_bot(
        {"storage": {"data_dir": str(tmp_path / "d")}, "plugins": {"privacy": {"mydata_limit": 3}}}
    ) as bot:
        for i in range(5):
            await bot.chat.say(f"message {i} " + "x" * 1500, user="ann")
        await memory(bot).flush(WAIT_TIMEOUT)
        shown = await bot.chat.say("/mydata", user="ann")
    assert len(shown.texts) >= 3 and all(len(t) <= 1900 for t in shown.texts)
    joined = "\n".join(shown.texts)
    assert "your newest 3 messages follow (2 older ones not shown)" in joined
    assert "message 4" in joined and "message 1 " not in joined


def test_chunked_keeps_lines_and_cuts_long_ones():
    assert chunked("a\nb", size=10) == ["a\nb"]
    assert chunked("aaaa\nbbbb", size=6) == ["aaaa", "bbbb"]
    assert chunked("x" * 25, size=10) == ["x" * 10, "x" * 10, "x" * 5]


async def test_retention_purges_old_messages(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        await bot.chat.say("ancient", user="ann")
        await bot.chat.say("recent", user="ann")
        await memory(bot).flush(WAIT_TIMEOUT)
        async with bot.db.session() as session:
            await session.execute(
                update(MessageRecord)
                .where(MessageRecord.id <= 2)
                .values(created_at=utcnow() - timedelta(days=40))
            )
        purged = await purge_expired(bot, 30)
        async with bot.db.sessions() as session:
            left = list(await session.scalars(select(MessageRecord.text).order_by(MessageRecord.id)))
    assert purged == 2 and left == ["recent", "Hello from the scripted backend."]


async def test_retention_runs_at_start(make_bot, tmp_path):
    data = {"data_dir": str(tmp_path / "d")}
    async with make_bot({"storage": data}) as bot:
        await bot.chat.say("old news", user="ann")
        await memory(bot).flush(WAIT_TIMEOUT)
        async with bot.db.session() as session:
            await session.execute(update(MessageRecord).values(created_at=utcnow() - timedelta(days=10)))
    async with make_bot({"storage": data, "plugins": {"privacy": {"retention_days": 7}}}) as bot:

        async def purged() -> bool:
            return await count(bot, MessageRecord) == 0

        await eventually(purged, what="the purge at start")


async def test_plugins_take_part_in_forgetting_and_can_put_it_off(make_bot, tmp_path):
    from botkit import hookimpl

    calls = []

    class Cache:
        ready = False

        @hookimpl
        async def botkit_forget_user(self, platform, user_id, bot):
            calls.append((platform, user_id))
            return self.ready

    cache = Cache()
    async with make_bot({"storage": {"data_dir": str(tmp_path / "d")}}, plugins={"cache": cache}) as bot:
        await bot.chat.say("hello", user="ann")
        await bot.chat.say("/forgetme", user="ann")
        put_off = await bot.chat.say("/forgetme confirm", user="ann")
        await memory(bot).flush(WAIT_TIMEOUT)
        kept = await count(bot, MessageRecord)
        cache.ready = True
        done = await bot.chat.say("/forgetme confirm", user="ann")
        gone = await count(bot, MessageRecord)
    assert put_off.texts[0].startswith("I couldn't delete your data just now") and kept == 2
    assert done.texts == ["Done: everything I had stored about you is deleted."] and gone == 0
    assert calls == [("test", "ann"), ("test", "ann")]
