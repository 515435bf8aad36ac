"""The whole loop on the CPU: chat, export, train, convert, deploy into the running bot, chat again.

The bot first talks with people (the scripted backend stands in for a model
that knew the answer) and stores the conversations; `botkit export` turns them
into training data; `botkit finetune train` teaches the embedded SmolLM2 a fact
it does not know; `convert` makes the llama.cpp adapter; `deploy` hands it to a
`botkit chat` process that is already running, which answers with the fact from
then on, without a restart, where it did not before.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from export_helpers import FACT, FACT_QUESTIONS, SEED_CONFIG, settle, talk

from botkit.cli import create_cli

pytestmark = pytest.mark.model

SYSTEM = "You are the team's helpful assistant."
QUESTIONS = FACT_QUESTIONS
ASKED = QUESTIONS[0]


@pytest.fixture
def project(tmp_path: Path, write_config) -> dict:
    """The operator's config: the embedded model on llama.cpp, greedy, a database and a control socket."""
    data = tmp_path / "data"
    config = write_config(
        textwrap.dedent(
            f"""
            [bot]
            system_prompt = "{SYSTEM}"
            control_socket = "{tmp_path / "bot.sock"}"
            [backend]
            temperature = 0.0
            max_tokens = 24
            [storage]
            data_dir = "{data}"
            """
        )
    )
    return {"config": config, "data": data, "root": tmp_path}


def botkit(project: dict, *args: str) -> str:
    result = CliRunner().invoke(create_cli(), ["--config", str(project["config"]), *args])
    assert result.exit_code == 0, result.output
    return result.output


class Chat:
    """`botkit chat` running in its own process, asked one line at a time through a pipe."""

    def __init__(self, project: dict) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "botkit", "--config", str(project["config"]), "chat"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=project["root"],
        )

    def say(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def ask(self, question: str) -> str:
        assert self.process.stdout is not None
        self.say(question)
        while True:
            line = self.process.stdout.readline()
            assert line, f"botkit chat ended: {self.process.stderr.read() if self.process.stderr else ''}"
            if line.startswith("botkit> "):
                return line.removeprefix("botkit> ").strip()

    def close(self) -> str:
        out, err = self.process.communicate(":quit\n", timeout=60)
        assert self.process.returncode == 0, err
        return err


def test_chat_curate_train_deploy_closes_the_loop(make_bot, project):
    # 1. People ask the bot; each conversation, in its own channel, is stored with the answer.
    async def seed() -> None:
        async with make_bot({**SEED_CONFIG, "storage": {"data_dir": str(project["data"])}}) as bot:
            for number, question in enumerate(QUESTIONS):
                await talk(bot, question, FACT, channel=f"team-{number}")
            await settle(bot)

    asyncio.run(seed())

    # 2. Export the curated conversations as chat training data.
    export = project["root"] / "export"
    botkit(project, "export", "--out", str(export), "--format", "chat", "--validation-fraction", "0.2")
    assert (export / "chat/train.jsonl").read_text().count(FACT) >= 5

    # 3. The running bot does not know the fact.
    chat = Chat(project)
    try:
        before = chat.ask(ASKED)
        assert "Bluefinch" not in before

        # 4. Train a few steps, convert, deploy into the running process.
        run = project["root"] / "run"
        trained = botkit(
            project, "finetune", "train", str(export), "--out", str(run), "--lr", "2e-3", "--max-steps", "12"
        )
        assert "validation loss" in trained
        botkit(project, "finetune", "convert", str(run))
        deployed = botkit(project, "finetune", "deploy", str(run / "adapter.gguf"))
        assert str(run / "adapter.gguf") in deployed

        # 5. The same process now answers with the fact, in a fresh conversation.
        chat.say(":channel after-deploy")
        after = chat.ask(ASKED)
        assert "Bluefinch" in after, f"before: {before!r}; after: {after!r}"
    finally:
        chat.close()

    # 6. The adapter is in the config: a bot started afresh has it too.
    assert str(run / "adapter.gguf") in project["config"].read_text()
    fresh = Chat(project)
    try:
        assert "Bluefinch" in fresh.ask(QUESTIONS[2])
    finally:
        fresh.close()
