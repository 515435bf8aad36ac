"""Test helpers for botkit plugins: a bot on a scripted backend, driven in memory.

The fixtures that use them come from botkit's pytest plugin
(``botkit.pytest_plugin``, registered through the ``pytest11`` entry point;
needs ``pytest-asyncio``: ``pip install 'botkit[testing]'``). In a test::

    async def test_shout(make_bot):
        async with make_bot(plugins={"shout": shout_plugin}) as bot:
            bot.backend.say("hello there")
            reply = await bot.chat.say("hi")
            assert reply.final == "HELLO THERE"
            assert bot.backend.prompts[0].current.text == "hi"

``make_bot`` builds the bot from a config mapping (as config.toml would give
it), with the scripted backend unless the config names another, starts it, and
always stops it afterwards. The ``botkit_bot`` fixture is ``make_bot()`` with
defaults.

``bot.chat`` (a ``MemoryChat``) plays a chat platform:

- ``say(text, user=, channel=, thread=, dm=, roles=)`` sends a message and
  returns the ``RecordingResponder`` once the bot has answered: ``texts``,
  ``final``, ``status``, ``message`` (the ``Message`` sent) and ``message_ids``
  (the ids ``finish`` gave the reply, as a platform would);
- ``react(reply, "👍", user="bob", added=True)`` reacts to a reply (a responder
  or a message id), as ``bot.react`` would be called by an adapter;
- ``edit(message, "new text")`` and ``delete(message)`` change a message that
  was sent (a responder or a ``Message``), as ``bot.message_changed``;
- ``say_nowait(text, ...)`` sends without waiting and returns ``(task, responder)``.

``bot.backend`` (a ``ScriptedBackend``) scripts the model: ``say(text)``,
``add_reply(*chunks)``, ``requests`` and ``prompts``. A test never sleeps to
catch a reply in the middle of its generation; it holds the reply at a gate
and awaits the backend's events::

    async def test_stop(make_bot):
        async with make_bot() as bot:
            gate = bot.backend.hold("never ", "shown")
            task, reply = bot.chat.say_nowait("write a lot")
            await gate.reached()  # the generation has begun and waits
            await bot.chat.say("/stop")
            await task
        assert reply.status is ReplyStatus.STOPPED

``backend.add_reply("partial ", gate, "rest")`` holds a reply after its first
chunk, and ``first, second = backend.say_in_parts("One ", "two ", "three")``
after each part, so that a test sees each part delivered (a streaming edit, a
filter on a partial reply) before it opens the next. (``make_bot`` sets ``[bot]
stream_interval = 0``: every chunk is looked at, however fast the chunks come.) ``await
backend.wait_for_generation(n)`` and ``await backend.wait_for_chunks(n)`` wait
for the ``n``-th generation to begin and for ``n`` chunks to be sent. For an
effect that completes in the background (a write-behind store, a task an
adapter started), poll with a deadline: ``await eventually(lambda: condition)``.
Every wait fails with ``TimeoutError`` after ``WAIT_TIMEOUT`` seconds rather
than hanging.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from copy import deepcopy
from typing import Any

import pytest

from botkit.backends.scripted import WAIT_TIMEOUT, Gate, ScriptedBackend
from botkit.bot import Bot
from botkit.settings import settings_from_mapping
from botkit.types import Message, MessageChange, Reaction, ReplyStatus, Responder, User

PLATFORM = "test"

__all__ = [
    "WAIT_TIMEOUT",
    "Gate",
    "MemoryChat",
    "RecordingResponder",
    "ScriptedBackend",
    "TestBot",
    "bot_factory",
    "eventually",
]


async def eventually(
    condition: Callable[[], object] | Callable[[], Awaitable[object]],
    timeout: float = WAIT_TIMEOUT,
    what: str | None = None,
) -> Any:
    """Call ``condition`` (sync or async) until it returns a true value, and return that value.

    For what happens in the background without an event to await. Raises
    ``TimeoutError`` naming ``what`` (or the function) when ``timeout`` seconds pass first.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    polls = 0
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            name = what or getattr(condition, "__qualname__", repr(condition))
            raise TimeoutError(f"eventually: {name} was still not true after {timeout:g} s")
        polls += 1
        # Yield at once while tasks on the loop are making progress; then back off a
        # little, so that a worker thread the condition waits for gets the CPU.
        await asyncio.sleep(0 if polls < 20 else 0.005)


class RecordingResponder(Responder):
    """Keeps everything the bot sent in answer to one message.

    ``finish`` delivers the reply as ``parts`` platform messages and returns
    their ids (``message_ids``), so that tests can react to a reply.
    """

    def __init__(self, message: Message | None = None, parts: int = 1) -> None:
        self.message = message
        self.parts = parts
        self.sent: list[str] = []
        self.updates: list[str] = []
        self.final: str | None = None
        self.status: ReplyStatus | None = None
        self.message_ids: list[str] = []
        self.finished = asyncio.Event()

    async def send(self, text: str) -> None:
        self.sent.append(text)

    async def update(self, text: str) -> None:
        self.updates.append(text)

    async def finish(self, text: str, status: ReplyStatus) -> list[str]:
        self.final, self.status = text, status
        self.message_ids = [f"reply-{uuid.uuid4().hex}" for _ in range(self.parts)]
        self.finished.set()
        return self.message_ids

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
        message = self.message(text, **where)
        responder = RecordingResponder(message)
        await self.bot.handle(message, responder)
        return responder

    def say_nowait(self, text: str, **where: Any) -> tuple[asyncio.Task[None], RecordingResponder]:
        """Send one message without waiting; await the task for the answer."""
        message = self.message(text, **where)
        responder = RecordingResponder(message)
        task = asyncio.ensure_future(self.bot.handle(message, responder))
        return task, responder

    async def react(
        self,
        reply: RecordingResponder | str,
        emoji: str,
        user: str = "alice",
        channel: str | None = None,
        added: bool = True,
    ) -> None:
        """React with ``emoji`` to a reply (its first message) or to the message with id ``reply``.

        ``channel`` defaults to where the reply was sent, else "general".
        """
        if isinstance(reply, RecordingResponder):
            if not reply.message_ids:
                raise ValueError("react: that responder has no finished reply to react to")
            message_id = reply.message_ids[0]
            if channel is None and reply.message is not None:
                channel = reply.message.channel_id
        else:
            message_id = reply
        author = User(id=user, name=user)
        await self.bot.react(Reaction(PLATFORM, channel or "general", message_id, author, emoji, added))

    async def edit(self, message: RecordingResponder | Message, text: str) -> None:
        """The author edits a message sent earlier (a responder stands for the message it answered)."""
        await self.bot.message_changed(self._change(message, text))

    async def delete(self, message: RecordingResponder | Message) -> None:
        """The author deletes a message sent earlier."""
        await self.bot.message_changed(self._change(message, None))

    @staticmethod
    def _change(message: RecordingResponder | Message, text: str | None) -> MessageChange:
        if isinstance(message, RecordingResponder):
            if message.message is None:
                raise ValueError("that responder was not made by MemoryChat.say: pass the Message instead")
            message = message.message
        return MessageChange(message.platform, message.channel_id, message.message_id, text, message.author)


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
    # Every streamed chunk goes through the reply filters to the responder, however fast they
    # come, so that a test sees each part (a running bot looks every [bot] stream_interval).
    "bot": {"admins": [f"{PLATFORM}:admin"], "stream_interval": 0},
    "backend": {"type": "scripted"},
}

MakeBot = Callable[..., AbstractAsyncContextManager[TestBot]]


def bot_factory(tmp_path_factory: pytest.TempPathFactory) -> MakeBot:
    """What the ``make_bot`` fixture returns: ``async with factory(config, plugins=...) as bot``.

    Each bot gets a fresh SQLite database in a temporary folder unless the
    config names ``[storage]`` itself; the bot is always stopped afterwards.
    """

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
