"""`botkit run` with the Discord adapter as an operator starts it, and the real embedded model behind Discord."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest
from fake_discord import FakeDiscord, start_discord

TOKEN_VARIABLE = "BOTKIT_ADAPTERS__DISCORD__TOKEN"


def write_config(tmp_path: Path, discord: FakeDiscord) -> Path:
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
            api_url = "{discord.api_url}"
            gateway_url = "{discord.gateway_url}"
            edit_interval = 0.1
            """
        ),
        encoding="utf-8",
    )
    return config


def environment(token: str | None) -> dict[str, str]:
    """The test's environment (conftest keeps BOTKIT_* out of it), plus the token if given."""
    return {**os.environ, TOKEN_VARIABLE: token} if token is not None else dict(os.environ)


async def botkit_run(config: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "botkit",
        "--config",
        str(config),
        "run",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_botkit_run_connects_to_discord_and_answers(tmp_path):
    async with FakeDiscord() as discord:
        process = await botkit_run(write_config(tmp_path, discord), environment(discord.token))
        try:
            await asyncio.wait_for(discord.ready.wait(), 60)
            await discord.say("hello", mention_bot=True)
            await discord.wait_for(
                lambda: [m["content"] for m in discord.bot_messages()] == ["hi there"],
                timeout=30,
                what="the answer",
            )
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    output = stdout.decode() + stderr.decode()
    assert "Traceback" not in output
    assert discord.token not in output


async def test_botkit_run_with_a_refused_or_missing_token_says_which_variable_to_set(tmp_path):
    async with FakeDiscord() as discord:
        config = write_config(tmp_path, discord)
        wrong = "MTAx.wrong-token-value.xyz"
        refused = await botkit_run(config, environment(wrong))
        _, refused_err = await asyncio.wait_for(refused.communicate(), 60)
        missing = await botkit_run(config, environment(None))
        _, missing_err = await asyncio.wait_for(missing.communicate(), 60)

    assert refused.returncode == 1
    assert (
        refused_err.decode()
        .strip()
        .startswith(f"botkit: error: Discord refused the bot token in {TOKEN_VARIABLE}")
    )
    assert wrong not in refused_err.decode()
    assert missing.returncode == 2
    assert TOKEN_VARIABLE in missing_err.decode()
    assert "Traceback" not in missing_err.decode() + refused_err.decode()


@pytest.mark.model
async def test_the_embedded_model_streams_its_answer_into_discord(make_bot, monkeypatch):
    async with FakeDiscord() as discord:
        monkeypatch.setenv(TOKEN_VARIABLE, discord.token)
        config = {"backend": {"type": "llamacpp", "max_tokens": 64, "seed": 1, "temperature": 0.0}}
        async with start_discord(make_bot, discord, config, edit_interval=0.05) as (bot, _adapter):
            await discord.say("Write two sentences about the sea.", mention_bot=True)
            await discord.wait_for(lambda: discord.bot_messages(), timeout=60, what="the first text")
            await bot.pipeline.drain()

    reply = [message["content"] for message in discord.bot_messages()]
    assert len(reply) == 1 and len(reply[0].split()) >= 5, reply
    edits = [
        call.body["content"] for call in discord.calls_to("PATCH", "/channels/{channel}/messages/{message}")
    ]
    assert edits, "the model's answer grew by edits"
    assert edits[-1] == reply[0]
