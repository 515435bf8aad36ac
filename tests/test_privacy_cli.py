"""A user's data without a chat message: ``botkit.storage.privacy`` and ``botkit privacy show|forget|optout|optin``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select, update
from test_control import running

from botkit import UnknownUser
from botkit.cli import create_cli
from botkit.control import request
from botkit.plugins.memory import memory
from botkit.storage import (
    MessageRecord,
    UserRecord,
    count_user_rows,
    delete_user_rows,
    find_user,
    opt_out,
    user_data,
)
from botkit.testing import WAIT_TIMEOUT, MemoryChat


async def invoke(config: Path, *args: str, stdin: str | None = None) -> Result:
    """``botkit -c CONFIG ARGS...`` in this process, on a thread of its own (the command runs its own loop)."""
    return await asyncio.to_thread(CliRunner().invoke, create_cli(), ["-c", str(config), *args], input=stdin)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[bot]\ncontrol_socket = "c.sock"\n[backend]\ntype = "scripted"\n[storage]\ndata_dir = "{tmp_path / "data"}"\n',
        encoding="utf-8",
    )
    return path


async def seed(bot) -> None:
    """ann: two messages in #general, one in #lobby, opted out, one reaction; bob: one message."""
    for text, channel in (("my secret is zebra-4471", "general"), ("and my address", "general"), ("hi", "lobby")):
        await bot.chat.say(text, user="ann", channel=channel)
    bobs = await bot.chat.say("bob asks about the weather", user="bob")
    await bot.chat.react(bobs, "👍", user="ann")
    await bot.chat.say("/optout", user="ann")
    assert await memory(bot).flush(WAIT_TIMEOUT)
    async with bot.db.session() as session:
        await session.execute(
            update(UserRecord).where(UserRecord.platform_user_id == "ann").values(display_name="Ann Smith")
        )


async def messages_of(bot, text: str) -> int:
    async with bot.db.sessions() as session:
        return await session.scalar(select(func.count()).where(MessageRecord.text.contains(text))) or 0


async def test_user_data_counts_what_is_stored_and_reads_text_only_when_asked(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        await seed(bot)
        counts = await user_data(bot.db, "test", "ann")
        texts = await user_data(bot.db, "test", "ann", messages=2)
        nobody = await user_data(bot.db, "test", "zoe")
    assert nobody is None
    assert (counts.messages, counts.feedback, counts.opted_out) == (3, 1, True)
    assert counts.newest == [] and counts.user.display_name == "Ann Smith"
    assert [(place.channel_id, place.messages) for place in counts.places] == [("general", 2), ("lobby", 1)]
    assert [message.text for message in texts.newest] == ["and my address", "hi"]  # the newest two, oldest first


async def test_counting_before_forgetting_says_exactly_what_goes(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        await seed(bot)
        before = await count_user_rows(bot.db, "test", "ann")
        deleted = await delete_user_rows(bot.db, "test", "ann")
        after = await count_user_rows(bot.db, "test", "ann")
        bobs_left = await messages_of(bot, "bob asks")
    # Her 3 messages and the 3 replies to them; her reaction on bob's reply; her opt-out; her row.
    assert before == deleted
    assert (deleted.messages, deleted.feedback, deleted.privacy_records, deleted.users) == (6, 1, 1, 1)
    assert deleted.describe().startswith("6 messages, 0 conversations, 1 feedback entry, 0 moderation events")
    assert after.describe() == (
        "0 messages, 0 conversations, 0 feedback entries, 0 moderation events, 0 privacy records, "
        "0 user rows, 0 dead letters"
    )
    assert bobs_left == 1


async def test_a_user_is_found_by_id_or_display_name_and_a_miss_says_why(make_bot, tmp_path):
    async with make_bot({"storage": {"data_dir": str(tmp_path / "d")}}) as bot:
        await seed(bot)
        by_id = await find_user(bot.db, "test", "ann")
        by_name = await find_user(bot.db, "test", "  ann smith ")
        await opt_out(bot.db, "test", "ann2", display_name="Ann Smith")
        problems = []
        for platform, who in (("test", "Ann Smith"), ("slack", "ann"), ("test", "zoe"), ("", "ann")):
            with pytest.raises(UnknownUser) as error:
                await find_user(bot.db, platform, who)
            problems.append(str(error.value))
    assert by_id == by_name and by_id.key == "test:ann"
    assert problems == [
        "2 users on test are called 'Ann Smith' (ids ann, ann2): give the id",
        "no user is stored on platform 'slack' (platforms with users: test)",
        "no user 'zoe' is stored on test: give their platform id or display name",
        "give the platform (e.g. slack, discord) and the user's id or display name",
    ]


async def test_show_prints_what_mydata_tells_and_text_only_with_text(make_bot, config):
    async with make_bot({"storage": {"data_dir": str(config.parent / "data")}}) as bot:
        await seed(bot)
    shown = await invoke(config, "privacy", "show", "--platform", "test", "Ann Smith")
    with_text = await invoke(config, "privacy", "show", "-p", "test", "ann", "--text", "--limit", "2")
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0].startswith("test:ann (Ann Smith): known since ")
    assert lines[1].startswith("training exports: opted out since ")
    assert lines[2] == "stored: 3 messages, 1 feedback entries, 0 moderation events"
    assert lines[3].startswith("  test:general: 2 messages, the last ")
    assert lines[-1].startswith("forgetting them deletes: 6 messages, 0 conversations, 1 feedback entry")
    assert "zebra" not in shown.output and "address" not in shown.output  # no text without --text
    assert with_text.exit_code == 0, with_text.output
    told = with_text.output.splitlines()
    assert told[-3] == "their newest 2 messages (1 older not shown; --limit):"
    assert told[-2].endswith("] #general: and my address") and told[-1].endswith("] #lobby: hi")


async def test_unknown_users_and_platforms_are_clear_errors(make_bot, config):
    async with make_bot({"storage": {"data_dir": str(config.parent / "data")}}) as bot:
        await seed(bot)
    unknown = await invoke(config, "privacy", "forget", "--platform", "test", "zoe", "--yes")
    platform = await invoke(config, "privacy", "show", "--platform", "discord", "ann")
    missing = await invoke(config, "privacy", "show", "ann")
    assert unknown.exit_code == 1
    assert "botkit: error: no user 'zoe' is stored on test: give their platform id or display name" in unknown.output
    assert platform.exit_code == 1
    assert "no user is stored on platform 'discord' (platforms with users: test)" in platform.output
    assert missing.exit_code == 2 and "Missing option '--platform'" in missing.output


async def test_forget_asks_first_and_only_yes_deletes(make_bot, config):
    data = {"storage": {"data_dir": str(config.parent / "data")}}
    async with make_bot(data) as bot:
        await seed(bot)
    refused = await invoke(config, "privacy", "forget", "--platform", "test", "ann", stdin="n\n")
    no_answer = await invoke(config, "privacy", "forget", "--platform", "test", "ann", stdin="")
    async with make_bot(data) as bot:
        kept = await messages_of(bot, "zebra")
    done = await invoke(config, "privacy", "forget", "--platform", "test", "ann", stdin="y\n")
    async with make_bot(data) as bot:
        gone = (await messages_of(bot, "zebra"), await messages_of(bot, "address"), await user_data(bot.db, "test", "ann"))
        bobs = await messages_of(bot, "bob asks")
    assert refused.exit_code == 1 and no_answer.exit_code == 1 and kept == 1
    assert "Forgetting test:ann (Ann Smith) deletes 6 messages, 0 conversations, 1 feedback entry" in refused.output
    assert "It cannot be undone." in refused.output
    assert "botkit: forget cancelled: nothing was deleted" in refused.output
    assert done.exit_code == 0, done.output
    assert "test:ann: forgotten by this process: deleted 6 messages, 0 conversations, 1 feedback entry" in done.output
    assert gone == (0, 0, None) and bobs == 1


async def test_optout_and_optin_from_the_shell_are_the_users_own(make_bot, config):
    data = {"storage": {"data_dir": str(config.parent / "data")}}
    async with make_bot(data) as bot:
        await bot.chat.say("hello", user="zoe")
        assert await memory(bot).flush(WAIT_TIMEOUT)
    out = await invoke(config, "privacy", "optout", "--platform", "test", "zoe")
    again = await invoke(config, "privacy", "optout", "--platform", "test", "zoe")
    async with make_bot(data) as bot:
        told = await bot.chat.say("/optout", user="zoe")
    back = await invoke(config, "privacy", "optin", "--platform", "test", "zoe")
    assert out.output == "test:zoe: opted out: their messages are never exported for training\n"
    assert again.output.endswith("(already so: nothing changed)\n")
    assert told.texts[0].startswith("You are already opted out")
    assert back.output == "test:zoe: not opted out: their messages may be exported for training\n"


async def test_forget_beside_a_running_bot_is_done_by_that_bot_and_its_memory_lets_go(config):
    """The bot caches a conversation's turns: forgetting from the shell must reach that cache too."""
    async with running(config) as (bot, control):
        chat = MemoryChat(bot)
        await chat.say("my secret is zebra-4471", user="ann")
        assert await memory(bot).flush(WAIT_TIMEOUT)
        done = await invoke(config, "privacy", "forget", "--platform", "test", "ann", "--yes")
        await chat.say("what did ann say?", user="bob")  # the same conversation, #general
        prompt = bot.backend.render(bot.backend.prompts[-1])
        left = await messages_of(bot, "zebra")
        malformed = await request(control.path, {"command": "forget", "platform": "test"})
    assert done.exit_code == 0, done.output
    assert left == 0
    assert "what did ann say?" in prompt and "zebra" not in prompt
    assert "test:ann: forgotten by the running bot: deleted 2 messages" in done.output
    assert malformed == {"ok": False, "error": 'forget takes "platform" and "user" (the platform\'s id of the user)'}
