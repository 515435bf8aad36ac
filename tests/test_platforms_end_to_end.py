"""End to end on both platforms: reactions on a streamed reply become feedback rows, and one
`botkit run` serves Discord and Slack at once."""

from __future__ import annotations

import asyncio
import signal
import textwrap
from pathlib import Path

from fake_discord import FakeDiscord, start_discord
from fake_slack import FakeSlack, start_slack
from sqlalchemy import select
from test_discord import (
    discord,  # noqa: F401  (fixture: the fake Discord, token in the environment)
    texts,
)
from test_discord_run import TOKEN_VARIABLE as DISCORD_TOKEN_VARIABLE
from test_discord_run import botkit_run
from test_slack import (
    replies,
    slack,  # noqa: F401  (fixture: the fake Slack, secrets in the environment)
)
from test_slack_run import environment as slack_environment

from botkit.backends.scripted import split_words
from botkit.plugins.feedback import recorder
from botkit.storage import FeedbackRecord, MessageRecord
from botkit.testing import WAIT_TIMEOUT, Gate, eventually

ANSWER = "Paris is the capital of France and has been for a very long time"


def streamed_answer(backend) -> Gate:
    """Script ANSWER held after its first words: they are shown, then the rest edits them in."""
    gate = Gate()
    words = split_words(ANSWER)
    backend.add_reply(*words[:3], gate, *words[3:])
    return gate


async def feedback_on(bot, platform_message_id: str) -> tuple[list[tuple[int, int | None]], int | None]:
    """((message row id, score) of every feedback row, the assistant row id of the reply)."""
    async with bot.db.sessions() as session:
        rows = [
            tuple(row)
            for row in await session.execute(select(FeedbackRecord.message_id, FeedbackRecord.score))
        ]
        reply_row = await session.scalar(
            select(MessageRecord.id).where(
                MessageRecord.role == "assistant", MessageRecord.platform_message_id == platform_message_id
            )
        )
    return rows, reply_row


async def wait_for_feedback(bot, platform_message_id: str):
    async def stored():
        await recorder(bot).settle(WAIT_TIMEOUT)
        rows, reply_row = await feedback_on(bot, platform_message_id)
        return (rows, reply_row) if rows else None

    return await eventually(stored, what="a feedback row")


def storage(tmp_path: Path) -> dict:
    return {"storage": {"data_dir": str(tmp_path / "data")}}


async def test_a_thumbs_up_on_discord_is_stored_as_feedback_on_the_reply(make_bot, discord, tmp_path):  # noqa: F811
    async with start_discord(make_bot, discord, storage(tmp_path), edit_interval=0.05) as (bot, _adapter):
        gate = streamed_answer(bot.backend)
        await discord.say("capital of France?", mention_bot=True)
        await discord.wait_for(lambda: discord.bot_messages(), what="the first words")
        gate.open()
        await discord.wait_for(lambda: texts(discord) == [ANSWER], what="the final text")
        reply_id = discord.bot_messages()[0]["id"]
        await discord.react(reply_id, "👍")
        rows, reply_row = await wait_for_feedback(bot, reply_id)
    assert len(discord.calls_to("PATCH", "/channels/{channel}/messages/{message}")) >= 1, "streamed"
    assert reply_row is not None
    assert rows == [(reply_row, 1)]


async def test_a_plus_one_on_slack_is_stored_as_feedback_on_the_reply(make_bot, slack, tmp_path):  # noqa: F811
    async with start_slack(make_bot, slack, storage(tmp_path), edit_interval=0.05) as (bot, _adapter):
        gate = streamed_answer(bot.backend)
        event = slack.mention("C1", "capital of France?")
        await slack.send_event(event)
        await slack.wait_for(lambda: replies(slack, "C1", event["ts"]))
        gate.open()
        await slack.wait_for(lambda: replies(slack, "C1", event["ts"]) == [ANSWER])
        reply_ts = slack.thread("C1", event["ts"])[-1]["ts"]
        item = {"type": "message", "channel": "C1", "ts": reply_ts}
        await slack.send_event({"type": "reaction_added", "user": "U2", "reaction": "+1", "item": item})
        rows, reply_row = await wait_for_feedback(bot, reply_ts)
    assert slack.calls_to("chat.update"), "streamed"
    assert reply_row is not None
    assert rows == [(reply_row, 1)]


def write_config(tmp_path: Path, fake_discord: FakeDiscord, fake_slack: FakeSlack) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [bot]
            name = "testbot"
            [backend]
            type = "scripted"
            default_reply = "hi there"
            [storage]
            data_dir = "{tmp_path / "data"}"
            [adapters.console]
            enabled = false
            [adapters.discord]
            enabled = true
            api_url = "{fake_discord.api_url}"
            gateway_url = "{fake_discord.gateway_url}"
            edit_interval = 0.1
            [adapters.slack]
            enabled = true
            api_url = "{fake_slack.api_url}"
            edit_interval = 0.1
            """
        ),
        encoding="utf-8",
    )
    return config


async def test_botkit_run_serves_discord_and_slack_in_one_process(tmp_path):
    async with FakeDiscord() as fake_discord, FakeSlack() as fake_slack:
        env = {
            **slack_environment(bot_token=fake_slack.bot_token, app_token=fake_slack.app_token),
            DISCORD_TOKEN_VARIABLE: fake_discord.token,
        }
        process = await botkit_run(write_config(tmp_path, fake_discord, fake_slack), env)
        try:
            await asyncio.wait_for(fake_discord.ready.wait(), 60)
            await fake_slack.wait_connected(timeout=60)
            await fake_discord.say("hello", mention_bot=True)
            event = fake_slack.mention("C1", "hello")
            await fake_slack.send_event(event)
            await fake_discord.wait_for(
                lambda: texts(fake_discord) == ["hi there"], timeout=60, what="Discord"
            )
            await fake_slack.wait_for(
                lambda: replies(fake_slack, "C1", event["ts"]) == ["hi there"], timeout=60
            )
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    output = stdout.decode() + stderr.decode()
    assert "Traceback" not in output
    for secret in (fake_discord.token, fake_slack.bot_token, fake_slack.app_token):
        assert secret not in output
