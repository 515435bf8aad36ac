"""Reactions on the bot's replies become feedback, on SQLite and a real PostgreSQL; /feedback for admins."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select
from test_memory import database_down, flushed

from botkit import Reaction, hookimpl
from botkit.errors import ConfigError
from botkit.plugins.feedback import recorder
from botkit.plugins.memory import memory
from botkit.storage import FeedbackRecord, MessageRecord, UserRecord
from botkit.testing import WAIT_TIMEOUT, RecordingResponder


async def feedback_rows(bot) -> list[tuple[str, str | None, int | None, str]]:
    """(kind, emoji, score, reacting user) of every feedback row, oldest first."""
    async with bot.db.sessions() as session:
        result = await session.execute(
            select(
                FeedbackRecord.kind, FeedbackRecord.value, FeedbackRecord.score, UserRecord.platform_user_id
            )
            .join(UserRecord, UserRecord.id == FeedbackRecord.user_id)
            .order_by(FeedbackRecord.id)
        )
        return [tuple(row) for row in result]


async def reply_row_id(bot) -> int:
    async with bot.db.sessions() as session:
        return await session.scalar(select(MessageRecord.id).where(MessageRecord.role == "assistant"))


async def test_thumbs_on_a_reply_are_stored_with_their_score_and_user(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        reply = await bot.chat.say("Name a colour.", user="ann")
        await bot.chat.react(reply, "👍", user="bob")
        await bot.chat.react(reply, "-1", user="carol")  # Slack's name for 👎
        await bot.chat.react(reply, "+1::skin-tone-3", user="dan")  # any skin tone counts
        stored = await feedback_rows(bot)
        async with bot.db.sessions() as session:
            targets = set(await session.scalars(select(FeedbackRecord.message_id)))
        reply_id = await reply_row_id(bot)
    assert stored == [
        ("reaction", "👍", 1, "bob"),
        ("reaction", "-1", -1, "carol"),
        ("reaction", "+1::skin-tone-3", 1, "dan"),
    ]
    assert targets == {reply_id}


async def test_removing_a_reaction_deletes_only_that_users_feedback(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        reply = await bot.chat.say("hello")
        await bot.chat.react(reply, "👍", user="bob")
        await bot.chat.react(reply, "👍", user="carol")
        await bot.chat.react(reply, "👎", user="bob", added=False)  # bob never gave a 👎: nothing to remove
        await bot.chat.react(reply, "👍", user="zed", added=False)  # zed never reacted at all
        before = await feedback_rows(bot)
        await bot.chat.react(reply, "👍", user="bob", added=False)
        after = await feedback_rows(bot)
    assert before == [("reaction", "👍", 1, "bob"), ("reaction", "👍", 1, "carol")]
    assert after == [("reaction", "👍", 1, "carol")]


async def test_the_same_reaction_twice_is_stored_once(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        reply = await bot.chat.say("hello")
        await bot.chat.react(reply, "👍", user="bob")
        await bot.chat.react(reply, "👍", user="bob")  # a platform's redelivery
        await bot.chat.react(reply, "thumbsup", user="bob")  # another emoji: its own row
        stored = await feedback_rows(bot)
    assert stored == [("reaction", "👍", 1, "bob"), ("reaction", "thumbsup", 1, "bob")]


class SeenReactions:
    """A third-party plugin: every reaction reaches it, whatever feedback makes of it."""

    def __init__(self) -> None:
        self.seen: list[Reaction] = []

    @hookimpl
    def botkit_reaction(self, reaction):
        self.seen.append(reaction)


async def test_reactions_to_other_messages_and_other_emoji_are_ignored(make_bot, storage_config):
    plugin = SeenReactions()
    async with make_bot(storage_config, plugins={"seen": plugin}) as bot:
        reply = await bot.chat.say("hello", user="ann")
        await flushed(bot)
        await bot.chat.react(reply.message.message_id, "👍", user="bob")  # ann's own message
        await bot.chat.react("never-sent", "👍", user="bob")  # a message the bot never stored
        await bot.chat.react(reply, "🎉", user="bob")  # not a feedback emoji
        await bot.chat.react(reply, "👍", user="bob", channel="elsewhere")  # same id, other channel
        stored = await feedback_rows(bot)
    assert stored == []
    assert [(r.message_id, r.emoji) for r in plugin.seen] == [
        (reply.message.message_id, "👍"),
        ("never-sent", "👍"),
        (reply.message_ids[0], "🎉"),
        (reply.message_ids[0], "👍"),
    ]


class ReactsAtOnce:
    """Reacts to each reply as soon as it is delivered: before memory's writer has stored it."""

    def __init__(self) -> None:
        self.pending_when_reacting: list[int] = []

    @hookimpl(trylast=True)
    async def botkit_after_reply(self, message, reply, bot):
        self.pending_when_reacting.append(len(memory(bot).pending))
        reply_id = reply.platform_message_ids[0]
        await bot.react(Reaction(message.platform, message.channel_id, reply_id, message.author, "👍"))


async def test_a_reaction_that_beats_the_reply_row_to_the_database_is_kept(make_bot, storage_config):
    plugin = ReactsAtOnce()
    async with make_bot(storage_config, plugins={"eager": plugin}) as bot:
        await bot.chat.say("hello", user="ann")
        assert await recorder(bot).settle(WAIT_TIMEOUT)
        stored = await feedback_rows(bot)
    # At least the reply's delivery (its platform id) was still waiting for the writer.
    assert plugin.pending_when_reacting[0] >= 1
    assert stored == [("reaction", "👍", 1, "ann")]


async def test_a_reaction_during_a_database_outage_is_stored_when_it_is_back(
    make_bot, storage_config, request
):
    storage = {**storage_config["storage"], "busy_timeout": 0.2}
    config = {"storage": storage, "plugins": {"memory": {"retry_interval": 0.2}}}
    postgres = request.getfixturevalue("postgres") if "url" in storage else None
    async with make_bot(config) as bot:
        with database_down(bot, postgres):
            reply = await bot.chat.say("hello", user="ann")
            await bot.chat.react(reply, "👎", user="bob")  # returns; the reaction waits
            assert not await recorder(bot).settle(0.5)
        assert await recorder(bot).settle(WAIT_TIMEOUT)
        stored = await feedback_rows(bot)
    assert stored == [("reaction", "👎", -1, "bob")]


async def test_reactions_to_any_part_of_a_split_reply_count_also_after_a_restart(make_bot, tmp_path):
    config = {"storage": {"data_dir": str(tmp_path / "data")}}
    async with make_bot(config) as bot:
        message = bot.chat.message("write a long story", user="ann")
        long_reply = RecordingResponder(message, parts=3)
        await bot.handle(message, long_reply)
        await bot.chat.react(long_reply.message_ids[2], "👍", user="bob")
        await flushed(bot)
        async with bot.db.sessions() as session:
            row = await session.scalar(select(MessageRecord).where(MessageRecord.role == "assistant"))
    assert row.platform_message_id == long_reply.message_ids[0]
    assert row.flags == {"platform_message_ids": long_reply.message_ids}
    async with make_bot(config) as restarted:
        await restarted.chat.react(long_reply.message_ids[1], "👎", user="carol")
        stored = await feedback_rows(restarted)
    assert stored == [("reaction", "👍", 1, "bob"), ("reaction", "👎", -1, "carol")]


async def test_feedback_command_counts_the_newest_replies_for_admins(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        empty = await bot.chat.say("/feedback", user="admin")
        replies = [await bot.chat.say(f"question {i}", user="ann") for i in range(4)]
        await bot.chat.react(replies[0], "👎", user="bob")
        for user in ("bob", "carol"):
            await bot.chat.react(replies[2], "👍", user=user)
        await bot.chat.react(replies[3], "👎", user="bob")
        everything = await bot.chat.say("/feedback", user="admin")
        newest_two = await bot.chat.say("/feedback 2", user="admin")
        bad = await bot.chat.say("/feedback lots", user="admin")
        refused = await bot.chat.say("/feedback", user="ann")
    assert empty.texts == ["No replies stored yet."]
    assert everything.texts == [
        "Feedback on the newest 4 replies: 2 positive, 2 negative (3 replies rated, 1 not)."
    ]
    assert newest_two.texts == [
        "Feedback on the newest 2 replies: 2 positive, 1 negative (2 replies rated, 0 not)."
    ]
    assert bad.texts == ["Usage: /feedback [N]: N replies, 1 to 10000"]
    assert "/feedback" in refused.texts[0] and "Feedback on" not in refused.texts[0]


async def test_configured_emoji_decide_what_counts(make_bot):
    config = {"plugins": {"feedback": {"positive": ["🔥"], "negative": ["💩"]}}}
    async with make_bot(config) as bot:
        reply = await bot.chat.say("hello")
        for emoji in ("👍", "🔥", "💩"):
            await bot.chat.react(reply, emoji, user="bob")
        stored = await feedback_rows(bot)
    assert stored == [("reaction", "🔥", 1, "bob"), ("reaction", "💩", -1, "bob")]


@pytest.mark.parametrize(
    ("table", "shown"),
    [
        ({"positive": ["👍"], "negative": ["👍🏽"]}, "negative: Value error, 👍 is in positive too"),
        ({"positive": ["👍", ""]}, "positive: Value error, an entry is empty"),
        ({"neutral": ["😐"]}, "[plugins.feedback] neutral"),
    ],
)
async def test_bad_settings_name_the_key(make_bot, table, shown):
    with pytest.raises(ConfigError) as error:
        async with make_bot({"plugins": {"feedback": table}}):
            pass
    assert "[plugins.feedback]" in str(error.value) and shown in str(error.value)


async def test_without_memory_feedback_is_off_and_the_log_says_so(make_bot, caplog):
    with caplog.at_level(logging.WARNING, logger="botkit.plugins"):
        async with make_bot({"plugins": {"memory": {"enabled": False}}}) as bot:
            reply = await bot.chat.say("hello")
            await bot.chat.react(reply, "👍", user="bob")
            stored = await feedback_rows(bot)
            assert not bot.plugins.is_on("feedback")
    assert stored == []
    assert "plugin 'feedback' is off: it needs plugin 'memory', which is off" in caplog.text
