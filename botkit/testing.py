"""A pytest plugin for testing botkit plugins: a bot on a scripted backend, driven in memory.

Installed with botkit (entry point ``pytest11``); needs ``pytest-asyncio``
(``pip install 'botkit[testing]'``). In a test::

    async def test_shout(make_bot):
        async with make_bot(plugins={"shout": shout_plugin}) as bot:
            bot.backend.say("hello there")
            reply = await bot.chat.say("hi")
            assert reply.final == "HELLO THERE"
            assert bot.backend.prompts[0].current.text == "hi"

``make_bot`` builds the bot from a config mapping (as config.toml would give
it), with the scripted backend unless the config names another, starts it, and
always stops it afterwards. The ``bot`` fixture is ``make_bot()`` with defaults.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from copy import deepcopy
from typing import Any

import pytest

from botkit.bot import Bot
from botkit.settings import settings_from_mapping
from botkit.types import Message, ReplyStatus, Responder, User

PLATFORM = "test"


class RecordingResponder(Responder):
    """Keeps everything the bot sent in answer to one message."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.updates: list[str] = []
        self.final: str | None = None
        self.status: ReplyStatus | None = None
        self.finished = asyncio.Event()

    async def send(self, text: str) -> None:
        self.sent.append(text)

    async def update(self, text: str) -> None:
        self.updates.append(text)

    async def finish(self, text: str, status: ReplyStatus) -> None:
        self.final, self.status = text, status
        self.finished.set()

    @property
    def texts(self) -> list[str]:
        """Every complete message the user saw: notices and answers, then the final reply."""
        return self.sent + ([self.final] if self.final is not None else [])


class MemoryChat:
    """An in-memory adapter: sends messages to the bot as any user, anywhere, and records replies."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot

    def message(
        self,
        text: str,
        user: str = "alice",
        channel: str = "general",
        thread: str | None = None,
        dm: bool = False,
        roles: tuple[str, ...] = (),
    ) -> Message:
        return Message(
            text=text,
            author=User(id=user, name=user, roles=roles),
            platform=PLATFORM,
            channel_id=channel,
            thread_id=thread,
            is_dm=dm,
        )

    async def say(self, text: str, **where: Any) -> RecordingResponder:
        """Send one message and wait until the bot has answered it completely."""
        responder = RecordingResponder()
        await self.bot.handle(self.message(text, **where), responder)
        return responder

    def say_nowait(self, text: str, **where: Any) -> tuple[asyncio.Task[None], RecordingResponder]:
        """Send one message without waiting; await the task for the answer."""
        responder = RecordingResponder()
        task = asyncio.ensure_future(self.bot.handle(self.message(text, **where), responder))
        return task, responder


class TestBot(Bot):
    """A ``Bot`` with a ``chat`` driver attached."""

    __test__ = False  # not a pytest test class
    chat: MemoryChat


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


DEFAULT_TEST_CONFIG: dict[str, Any] = {
    "bot": {"admins": [f"{PLATFORM}:admin"]},
    "backend": {"type": "scripted"},
}

MakeBot = Callable[..., AbstractAsyncContextManager[TestBot]]


@pytest.fixture
def make_bot(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> MakeBot:
    """Build, start and (always) stop a bot: ``async with make_bot(config, plugins=...) as bot``.

    Each bot gets a fresh SQLite database in a temporary folder unless the
    config names ``[storage]`` itself.
    """
    for name in list(os.environ):
        if name.startswith("BOTKIT_"):
            monkeypatch.delenv(name)

    @asynccontextmanager
    async def factory(
        config: dict[str, Any] | None = None, plugins: dict[str, object] | None = None
    ) -> AsyncIterator[TestBot]:
        storage = {"data_dir": str(tmp_path_factory.mktemp("botkit-data"))}
        settings = settings_from_mapping(_merge({**DEFAULT_TEST_CONFIG, "storage": storage}, config or {}))
        bot = TestBot.load(settings, extra_plugins=plugins)
        bot.chat = MemoryChat(bot)
        await bot.start()
        try:
            yield bot
        finally:
            await bot.stop()

    return factory


@pytest.fixture
async def bot(make_bot: MakeBot) -> AsyncIterator[TestBot]:
    """A started bot with the default plugins and the scripted backend."""
    async with make_bot() as started:
        yield started
