"""The model slot is given back when generation ends, not when the platform has the reply.

A platform call may wait (an HTTP 429 on a final edit, a slow streaming edit):
another conversation must not wait with it, nor be told the model is busy.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from botkit import Reply, ReplyStatus, hookimpl
from botkit.backends.scripted import ScriptedBackend, ScriptedSettings
from botkit.testing import WAIT_TIMEOUT, RecordingResponder, eventually


class HeldResponder(RecordingResponder):
    """Records like ``RecordingResponder``; its ``finish``, or its first ``update``, waits until
    the test calls ``let_go``: a platform call held up by a rate limit."""

    def __init__(self, message, *, hold: str) -> None:
        super().__init__(message)
        self.hold = hold  # "finish" or "update"
        self.entered = asyncio.Event()
        self._let_go = asyncio.Event()

    def let_go(self) -> None:
        self._let_go.set()

    async def _wait(self, call: str) -> None:
        if call == self.hold:
            self.entered.set()
            await self._let_go.wait()

    async def update(self, text: str) -> None:
        await self._wait("update")
        await super().update(text)

    async def finish(self, text: str, status: ReplyStatus) -> list[str]:
        await self._wait("finish")
        return await super().finish(text, status)


@asynccontextmanager
async def held_reply(bot, text: str, *, hold: str, user: str = "alice", channel: str = "one"):
    """Send ``text`` with a ``HeldResponder``; yields (task, responder). Leaving lets the platform go,
    so that a failing test ends instead of waiting for the held reply at the bot's shutdown."""
    responder = HeldResponder(bot.chat.message(text, user=user, channel=channel), hold=hold)
    task = asyncio.ensure_future(bot.handle(responder.message, responder))
    try:
        yield task, responder
    finally:
        responder.let_go()


async def test_another_conversation_is_answered_while_a_final_delivery_waits(bot):
    bot.backend.say("first answer")
    async with held_reply(bot, "first", hold="finish") as (held_task, held):
        await asyncio.wait_for(held.entered.wait(), WAIT_TIMEOUT)
        bot.backend.say("second answer")
        other = await asyncio.wait_for(bot.chat.say("second", user="bob", channel="two"), WAIT_TIMEOUT)
        assert other.texts == ["second answer"] and other.status is ReplyStatus.COMPLETED
        assert other.sent == []  # never told "The model is busy"
        assert held.final is None and not held_task.done()
    await asyncio.wait_for(held_task, WAIT_TIMEOUT)
    assert held.final == "first answer" and held.status is ReplyStatus.COMPLETED


async def test_a_waiting_request_gets_the_model_when_generation_ends(bot):
    gate = bot.backend.hold("first answer")
    async with held_reply(bot, "first", hold="finish") as (held_task, held):
        await gate.reached()
        bot.backend.say("second answer")
        waiting_task, waiting = bot.chat.say_nowait("second", user="bob", channel="two")
        await eventually(lambda: waiting.sent, what="bob is told his place")
        gate.open()
        await asyncio.wait_for(waiting_task, WAIT_TIMEOUT)
        assert waiting.sent == ["The model is busy; 1 request ahead of you. I'll answer as soon as I can."]
        assert waiting.final == "second answer"
        assert held.final is None  # the first reply is still being delivered
    await asyncio.wait_for(held_task, WAIT_TIMEOUT)
    assert held.final == "first answer"


async def test_a_slow_streaming_update_does_not_hold_the_model(bot):
    bot.backend.add_reply("one ", "two ", "three")
    async with held_reply(bot, "first", hold="update") as (held_task, held):
        await asyncio.wait_for(held.entered.wait(), WAIT_TIMEOUT)
        # The stream goes on although its first update is stuck on the platform.
        await eventually(lambda: bot.queue.running == 0, what="the model to be free")
        bot.backend.say("second answer")
        other = await asyncio.wait_for(bot.chat.say("second", user="bob", channel="two"), WAIT_TIMEOUT)
        assert other.texts == ["second answer"] and other.sent == []
        assert held.final is None
    await asyncio.wait_for(held_task, WAIT_TIMEOUT)
    # The stuck update lands first, then the final text; what streamed meanwhile is not replayed.
    assert held.updates == ["one "]
    assert held.final == "one two three" and held.status is ReplyStatus.COMPLETED


async def test_stop_during_the_final_delivery_leaves_the_reply_whole(make_bot):
    after: list[Reply] = []

    class After:
        @hookimpl
        def botkit_after_reply(self, reply):
            after.append(reply)

    async with make_bot(plugins={"after": After()}) as bot:
        bot.backend.say("a whole answer")
        async with held_reply(bot, "first", hold="finish") as (held_task, held):
            await asyncio.wait_for(held.entered.wait(), WAIT_TIMEOUT)
            stop = await asyncio.wait_for(bot.chat.say("/stop", user="alice", channel="one"), WAIT_TIMEOUT)
        await asyncio.wait_for(held_task, WAIT_TIMEOUT)
        bot.backend.say("next answer")
        later = await bot.chat.say("again", user="alice", channel="one")
    assert stop.texts == ["There is no reply of yours to stop."]
    assert held.final == "a whole answer" and held.status is ReplyStatus.COMPLETED
    assert [r.status for r in after] == [ReplyStatus.COMPLETED, ReplyStatus.COMPLETED]
    assert later.final == "next answer"


async def test_a_failing_update_is_logged_and_the_reply_still_arrives(bot, caplog):
    class BrokenUpdates(RecordingResponder):
        async def update(self, text: str) -> None:
            raise ConnectionError("platform unreachable")

    bot.backend.add_reply("Hello ", "there")
    responder = BrokenUpdates(bot.chat.message("hi"))
    with caplog.at_level(logging.ERROR, logger="botkit.pipeline"):
        await bot.handle(responder.message, responder)
    assert responder.final == "Hello there" and responder.status is ReplyStatus.COMPLETED
    assert "a streamed update of the reply failed" in caplog.text


class ClosingBackend(ScriptedBackend):
    """Notes when each stream is closed (its generator's ``finally`` ran)."""

    def __init__(self, settings: ScriptedSettings | None = None) -> None:
        super().__init__(settings)
        self.closed_streams = 0

    async def stream(self, prompt, params, cancel):
        try:
            async for chunk in super().stream(prompt, params, cancel):
                yield chunk
        finally:
            self.closed_streams += 1


async def test_a_stream_a_filter_refused_is_closed_before_the_reply_is_delivered(make_bot):
    class Register:
        @hookimpl
        def botkit_register_backends(self, register):
            register("closing", ClosingBackend, ScriptedSettings)

        @hookimpl
        def botkit_filter_reply(self, text):
            if "secret" in text:
                from botkit import Refuse

                return Refuse("[withheld]", reason="test")

    closed_at_finish: list[int] = []

    class Watching(RecordingResponder):
        async def finish(self, text, status):
            closed_at_finish.append(bot.backend.closed_streams)
            return await super().finish(text, status)

    async with make_bot({"backend": {"type": "closing"}}, plugins={"register": Register()}) as bot:
        bot.backend.add_reply("the ", "secret ", "is ", "42")
        responder = Watching(bot.chat.message("tell me"))
        await bot.handle(responder.message, responder)
    assert responder.status is ReplyStatus.BLOCKED
    assert closed_at_finish == [1]
