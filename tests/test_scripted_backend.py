"""The scripted test backend's events and gates, and ``eventually``: what lets tests wait without the clock."""

from __future__ import annotations

import asyncio
import threading

import pytest

from botkit.backends.scripted import Gate, ScriptedBackend
from botkit.testing import eventually
from botkit.types import Prompt, ReplyStatus, Role, SamplingParams, Turn


async def test_a_held_reply_is_a_generation_in_progress_until_the_gate_opens(make_bot):
    async with make_bot() as bot:
        gate = bot.backend.hold("all ", "done")
        task, reply = bot.chat.say_nowait("hello")
        request = await bot.backend.wait_for_generation()
        await gate.reached()
        assert request.prompt.current.text == "hello"
        assert not task.done() and reply.updates == [] and bot.backend.sent == []
        gate.open()
        await task
    assert reply.final == "all done" and reply.status is ReplyStatus.COMPLETED
    assert bot.backend.sent == ["all ", "done"]


async def test_a_gate_after_the_first_chunk_shows_the_partial_reply(make_bot):
    async with make_bot() as bot:
        gate = Gate()
        bot.backend.add_reply("partial ", gate, "rest")
        task, reply = bot.chat.say_nowait("hello")
        await gate.reached()
        await bot.backend.wait_for_chunks(1)
        assert reply.updates == ["partial "] and reply.final is None
        gate.open()
        await task
    assert reply.final == "partial rest"


async def test_a_reply_in_parts_waits_after_each_part_but_the_last(make_bot):
    async with make_bot() as bot:
        first, second = bot.backend.say_in_parts("One ", "two ", "three")
        task, reply = bot.chat.say_nowait("count")
        await first.reached()
        assert reply.updates[-1] == "One "
        first.open()
        await second.reached()
        assert reply.updates[-1] == "One two "
        second.open()
        await task
    assert reply.final == "One two three"


async def test_generations_and_chunks_are_counted_across_replies(make_bot):
    async with make_bot() as bot:
        bot.backend.say("one two")
        first_gate = bot.backend.hold("three")
        await bot.chat.say("first")
        task, _ = bot.chat.say_nowait("second")
        second = await bot.backend.wait_for_generation(2)
        await bot.backend.wait_for_chunks(2)
        assert second.prompt.current.text == "second"
        assert bot.backend.sent == ["one ", "two"]
        first_gate.open()
        await task
        await bot.backend.wait_for_chunks(3)


async def test_stop_ends_a_reply_held_at_a_gate(make_bot):
    async with make_bot() as bot:
        gate = bot.backend.hold("never ", "shown")
        task, running = bot.chat.say_nowait("write a lot")
        await gate.reached()
        stop = await bot.chat.say("/stop")
        await task
    assert stop.texts == ["Stopped."]
    assert running.status is ReplyStatus.STOPPED and running.final == "[stopped]"
    assert bot.backend.sent == []


async def test_shutdown_ends_a_reply_held_at_a_gate(make_bot):
    async with make_bot() as bot:
        gate = bot.backend.hold()
        task, running = bot.chat.say_nowait("hello")
        await gate.reached()
    await task
    assert running.status is ReplyStatus.STOPPED


async def test_a_gate_opened_before_the_stream_reaches_it_lets_it_pass(make_bot):
    async with make_bot() as bot:
        gate = bot.backend.hold("straight ", "through")
        gate.open()
        reply = await bot.chat.say("hello")
    assert gate.is_reached and reply.final == "straight through"


async def test_max_tokens_counts_text_chunks_not_gates():
    backend = ScriptedBackend()
    gate = Gate()
    gate.open()
    backend.add_reply(gate, "a ", "b ", "c")
    prompt = Prompt("", [Turn(Role.USER, "hi")])
    chunks = [chunk async for chunk in backend.stream(prompt, SamplingParams(max_tokens=2), threading.Event())]
    # Cut with text left over: the last chunk says so, as an engine's finish reason "length" does.
    assert [(c.text, c.tokens, c.truncated) for c in chunks] == [("a ", 1, False), ("b ", 1, False), ("", 0, True)]


async def test_a_reply_that_fits_max_tokens_is_not_truncated():
    backend = ScriptedBackend()
    backend.add_reply("a ", "b")
    prompt = Prompt("", [Turn(Role.USER, "hi")])
    chunks = [chunk async for chunk in backend.stream(prompt, SamplingParams(max_tokens=2), threading.Event())]
    assert [(c.text, c.truncated) for c in chunks] == [("a ", False), ("b", False)]


async def test_a_wait_for_what_never_happens_fails_saying_what_it_waited_for():
    backend = ScriptedBackend()
    with pytest.raises(TimeoutError, match="generation 1 to start; 0 generation"):
        await backend.wait_for_generation(timeout=0.01)
    with pytest.raises(TimeoutError, match="chunk 3 to be sent"):
        await backend.wait_for_chunks(3, timeout=0.01)
    with pytest.raises(TimeoutError, match="reached the gate"):
        await Gate().reached(timeout=0.01)


async def test_eventually_returns_the_first_true_value_of_a_sync_or_async_condition():
    values = iter([0, None, "", "ready"])
    assert await eventually(lambda: next(values)) == "ready"

    done = asyncio.Event()
    asyncio.get_running_loop().call_soon(done.set)

    async def is_done() -> bool:
        return done.is_set()

    assert await eventually(is_done) is True


async def test_eventually_fails_naming_the_condition_when_the_deadline_passes():
    with pytest.raises(TimeoutError, match="the flag was still not true after 0.01 s"):
        await eventually(lambda: False, timeout=0.01, what="the flag")
