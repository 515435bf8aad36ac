"""`botkit run` with the Slack adapter as an operator starts it, and the real embedded model behind Slack."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest
from fake_slack import FakeSlack, start_slack


def write_config(tmp_path: Path, slack: FakeSlack, backend: str = 'type = "scripted"') -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [bot]
            name = "testbot"
            [backend]
            {backend}
            [storage]
            data_dir = "{tmp_path / "data"}"
            [adapters.console]
            enabled = false
            [adapters.slack]
            enabled = true
            api_url = "{slack.api_url}"
            edit_interval = 0.1
            """
        ),
        encoding="utf-8",
    )
    return config


def environment(**secrets: str) -> dict[str, str]:
    """The test's environment (conftest keeps BOTKIT_* out of it), plus ``secrets``."""
    return {**os.environ, **{f"BOTKIT_ADAPTERS__SLACK__{name.upper()}": value for name, value in secrets.items()}}


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


async def test_botkit_run_connects_to_slack_and_answers(tmp_path):
    async with FakeSlack() as slack:
        env = environment(bot_token=slack.bot_token, app_token=slack.app_token)
        process = await botkit_run(
            write_config(tmp_path, slack, 'type = "scripted"\ndefault_reply = "hi there"'), env
        )
        try:
            await slack.wait_connected(timeout=60)
            event = slack.mention("C1", "hello")
            await slack.send_event(event)
            await slack.wait_for(
                lambda: [m["text"] for m in slack.thread("C1", event["ts"])][1:] == ["hi there"]
            )
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    output = stdout.decode() + stderr.decode()
    assert "Traceback" not in output
    assert slack.bot_token not in output and slack.app_token not in output


async def test_botkit_run_with_a_refused_or_missing_token_says_which_variable_to_set(tmp_path):
    async with FakeSlack() as slack:
        config = write_config(tmp_path, slack)
        refused = await botkit_run(
            config, environment(bot_token="xoxb-revoked-value", app_token=slack.app_token)
        )
        _, refused_err = await asyncio.wait_for(refused.communicate(), 60)
        missing = await botkit_run(config, environment(bot_token=slack.bot_token))
        _, missing_err = await asyncio.wait_for(missing.communicate(), 60)

    assert refused.returncode == 1
    assert refused_err.decode().strip() == (
        "botkit: error: Slack refused the bot token (invalid_auth): check BOTKIT_ADAPTERS__SLACK__BOT_TOKEN"
    )
    assert missing.returncode == 2
    assert "BOTKIT_ADAPTERS__SLACK__APP_TOKEN" in missing_err.decode()
    assert "Traceback" not in missing_err.decode()
    assert slack.bot_token not in missing_err.decode()


@pytest.mark.model
async def test_the_embedded_model_streams_its_answer_into_a_slack_thread(make_bot, monkeypatch):
    async with FakeSlack() as slack:
        monkeypatch.setenv("BOTKIT_ADAPTERS__SLACK__BOT_TOKEN", slack.bot_token)
        monkeypatch.setenv("BOTKIT_ADAPTERS__SLACK__APP_TOKEN", slack.app_token)
        config = {"backend": {"type": "llamacpp", "max_tokens": 64, "seed": 1, "temperature": 0.0}}
        async with start_slack(make_bot, slack, config, edit_interval=0.05) as (bot, _adapter):
            event = slack.mention("C1", "Write two sentences about the sea.")
            await slack.send_event(event)
            await slack.wait_for(lambda: slack.calls_to("chat.postMessage"), timeout=60)
            await bot.pipeline.drain()

    reply = [m["text"] for m in slack.thread("C1", event["ts"])][1:]
    assert len(reply) == 1 and len(reply[0].split()) >= 5, reply
    edits = [call.args["text"] for call in slack.calls_to("chat.update")]
    assert edits, "the model's answer grew by edits"
    assert edits[-1] == reply[0]
