"""What the engines report is shown: /status, ``botkit backends list`` and the control socket's
status carry each backend's queue and, for an engine that reports it, its load; a backend sets
how many generations it runs at once."""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import Field

from botkit import hookimpl
from botkit.backend import EngineLoad
from botkit.backend_set import status_from_summary
from botkit.backends.scripted import ScriptedBackend, ScriptedSettings
from botkit.bot import Bot
from botkit.cli import create_cli
from botkit.control import ControlServer
from botkit.settings import load_settings
from botkit.testing import WAIT_TIMEOUT, MemoryChat, RecordingResponder, eventually


class BatchingSettings(ScriptedSettings):
    type: str = "batching"
    parallel: int = Field(2, ge=1, description="generations at once")


class BatchingBackend(ScriptedBackend):
    """A scripted backend that, like a batching engine, runs ``parallel`` generations at once and
    reports its load: the slots its streams hold now, and a KV cache the test sets."""

    settings: BatchingSettings

    def __init__(self, settings: BatchingSettings | None = None) -> None:
        super().__init__(settings or BatchingSettings())
        self.concurrency = self.settings.parallel
        self.streaming = 0
        self.cache = {"kv_cache_mb": 12.5, "kv_cache_limit_mb": 256.0, "kv_saved": 5, "evictions": 0}
        self.prompt_tokens = {"reused_tokens": 81, "evaluated_tokens": 19}

    @property
    def model_name(self) -> str:
        return "SmolLM2-135M-Instruct.Q4_1"

    def load(self) -> EngineLoad:
        return EngineLoad(
            slots=self.concurrency, slots_in_use=self.streaming, **self.cache, **self.prompt_tokens
        )

    async def stream(self, prompt, params, cancel):
        self.streaming += 1
        try:
            async for chunk in super().stream(prompt, params, cancel):
                yield chunk
        finally:
            self.streaming -= 1


class Batching:
    @hookimpl
    def botkit_register_backends(self, register):
        register("batching", BatchingBackend, BatchingSettings)


BATCHING = {"backend": {"type": "batching", "parallel": 2}}


async def test_a_backend_sets_how_many_generate_at_once(make_bot):
    async with make_bot(BATCHING, plugins={"batching": Batching()}) as bot:
        gates = [bot.backend.hold(f"answer {i}") for i in range(2)]
        bot.backend.say("answer 2")
        first = [bot.chat.say_nowait(f"question {i}", user=f"u{i}", channel=f"c{i}") for i in range(2)]
        for gate in gates:
            await gate.reached()  # both generate at once
        third_task, third = bot.chat.say_nowait("question 2", user="u2", channel="c2")
        await eventually(lambda: third.sent, what="the third user is told their place")
        for gate in gates:
            gate.open()
        await asyncio.wait_for(asyncio.gather(third_task, *(task for task, _ in first)), WAIT_TIMEOUT)
    assert [reply.sent for _, reply in first] == [[], []]
    assert third.sent == ["The model is busy; 1 request ahead of you. I'll answer as soon as I can."]
    assert [reply.final for _, reply in first] + [third.final] == ["answer 0", "answer 1", "answer 2"]


async def test_status_shows_the_engine_load_in_one_line_per_backend(make_bot):
    config = {**BATCHING, "backends": {"plain": {"type": "scripted"}}}
    async with make_bot(config, plugins={"batching": Batching()}) as bot:
        gates = [bot.backend.hold("held") for _ in range(2)]
        tasks = [bot.chat.say_nowait(f"question {i}", user=f"u{i}", channel=f"c{i}")[0] for i in range(3)]
        for gate in gates:
            await gate.reached()
        await eventually(lambda: bot.queue.waiting == 1, what="the third request to wait")
        busy = await bot.chat.say("/status", user="admin")
        for gate in gates:
            gate.open()
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT_TIMEOUT)
        bot.backend.prompt_tokens = {"reused_tokens": 0, "evaluated_tokens": 0}
        idle = await bot.chat.say("/status", user="admin")
    lines = busy.texts[0].splitlines()
    assert lines[:3] == [
        "Backends:",
        "default: batching SmolLM2-135M-Instruct.Q4_1 · slots 2/2 in use · 1 waiting (at most 100) · "
        "KV cache 12.5/256 MB (5 saved, 0 evicted) · prompt tokens reused 81% · context 4,096 tokens",
        "plain: scripted scripted · 0/1 generating · 0 waiting (at most 100) · context 4,096 tokens",
    ]
    assert "slots 0/2 in use · 0 waiting (at most 100)" in idle.texts[0]
    assert "no prompt evaluated yet" in idle.texts[0]


async def test_summary_keeps_its_keys_adds_the_queue_and_engine_and_reads_back(make_bot):
    async with make_bot(BATCHING, plugins={"batching": Batching()}) as bot:
        gate = bot.backend.hold("held")
        task, _ = bot.chat.say_nowait("question")
        await gate.reached()
        slot = bot.default_backend
        summary = json.loads(json.dumps(slot.summary()))  # as the control socket sends it
        read_back = status_from_summary(slot.name, summary)
        status = slot.status()
        gate.open()
        await task
    assert {"type", "model", "adapter", "adapters", "context_window"} <= set(summary)
    assert (summary["generating"], summary["waiting"], summary["concurrency"]) == (1, 0, 2)
    assert summary["engine"] == {
        "slots": 2,
        "slots_in_use": 1,
        "kv_cache_mb": 12.5,
        "kv_cache_limit_mb": 256.0,
        "kv_saved": 5,
        "evictions": 0,
        "reused_tokens": 81,
        "evaluated_tokens": 19,
    }
    assert read_back == status


async def test_a_backend_that_reports_no_load_has_no_engine_in_its_summary(bot):
    summary = bot.default_backend.summary()
    assert summary["engine"] is None and summary["concurrency"] == 1


# -- botkit backends list ----------------------------------------------------------------


PLUGIN_FILE = """
from botkit import hookimpl
from test_engine_status import BatchingBackend, BatchingSettings


@hookimpl
def botkit_register_backends(register):
    register("batching", BatchingBackend, BatchingSettings)
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config of the batching backend (a single-file plugin), with its control socket beside it."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "batching.py").write_text(PLUGIN_FILE, encoding="utf-8")
    path = tmp_path / "config.toml"
    path.write_text(
        textwrap.dedent(
            """
            [bot]
            control_socket = "c.sock"

            [backend]
            type = "batching"

            [plugins]
            directory = "plugins"

            [storage]
            data_dir = "data"
            """
        ),
        encoding="utf-8",
    )
    return path


class BotInThread:
    """A bot of ``config`` with its control socket and one generation held, on its own event loop
    in a thread: the command line under test runs its own loop, as it does beside ``botkit run``."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            bot = Bot.load(load_settings(self.config))
            control = ControlServer(bot)
            await control.open()
            await bot.start()
            await control.start_serving()
        except BaseException as error:
            self.error = error
            self.ready.set()
            raise
        try:
            gate = bot.backend.hold("held")
            message = MemoryChat(bot).message("question")
            task = asyncio.ensure_future(bot.handle(message, RecordingResponder(message)))
            await gate.reached()
            self.ready.set()
            await self._stop.wait()
            gate.open()
            await task
        finally:
            await control.close()
            await bot.stop()

    def __enter__(self) -> BotInThread:
        self._thread.start()
        assert self.ready.wait(WAIT_TIMEOUT), "the bot in the thread did not start"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(WAIT_TIMEOUT)


def test_backends_list_shows_what_the_running_bot_is_doing(config):
    with BotInThread(config):
        result = CliRunner().invoke(create_cli(), ["backends", "list", "--no-load", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "default [backend]\n  type:     batching\n" in result.output
    assert "\nrunning bot (pid " in result.output
    assert result.output.endswith(
        "  default: batching SmolLM2-135M-Instruct.Q4_1 · slots 1/2 in use · 0 waiting (at most 100) · "
        "KV cache 12.5/256 MB (5 saved, 0 evicted) · prompt tokens reused 81% · context 4,096 tokens\n"
    )


def test_backends_list_says_when_no_bot_runs_or_the_socket_is_off(config):
    result = CliRunner().invoke(create_cli(), ["backends", "list", "--no-load", "--config", str(config)])
    assert result.exit_code == 0 and result.output.endswith("running bot: none with this config\n")
    config.write_text(config.read_text().replace('"c.sock"', '"off"'), encoding="utf-8")
    result = CliRunner().invoke(create_cli(), ["backends", "list", "--no-load", "--config", str(config)])
    assert result.output.endswith("running bot: not asked ([bot] control_socket is off)\n")
