"""A reply cut at max_tokens is stored as truncated, from each backend's own finish reason."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai_server import StubServer
from test_memory import flushed, rows

from botkit import ReplyStatus
from botkit.storage import MessageRecord

STORY = "Write a long story about a dragon."
FRANCE = "What is the capital of France?"


def llama(**backend: object) -> dict:
    return {"backend": {"type": "llamacpp", "temperature": 0, "seed": 1, "n_ctx": 512, **backend}}


async def stored_replies(bot) -> list[tuple[str, str | None]]:
    await flushed(bot)
    return [(row.text, row.status) for row in await rows(bot) if row.role == "assistant"]


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


async def test_a_scripted_reply_cut_at_max_tokens_is_stored_truncated_and_stays_history(make_bot):
    async with make_bot({"backend": {"type": "scripted", "max_tokens": 3}}) as bot:
        bot.backend.say("one two three four five")
        cut = await bot.chat.say("count to five")
        bot.backend.say("four five")
        whole = await bot.chat.say("go on")
        stored = await stored_replies(bot)
    assert (cut.status, cut.final) == (ReplyStatus.TRUNCATED, "one two three ")  # no note in the text
    assert whole.status is ReplyStatus.COMPLETED
    assert stored == [("one two three ", "truncated"), ("four five", "completed")]
    # The user saw the cut answer and may ask to go on: the model sees it too.
    assert [turn.text for turn in bot.backend.prompts[1].history] == ["count to five", "one two three "]


async def test_an_openai_reply_with_finish_reason_length_is_stored_truncated(make_bot, stub):
    config = {"backend": {"type": "openai", "base_url": stub.base_url, "model": "smollm2", "max_tokens": 2}}
    stub.script.append(("Once", " upon", " a", " time"))
    stub.script.append(("Paris", "."))
    async with make_bot(config) as bot:
        cut = await bot.chat.say(STORY)
        whole = await bot.chat.say(FRANCE)
        stored = await stored_replies(bot)
    assert stub.requests[0].body["max_tokens"] == 2
    assert (cut.status, whole.status) == (ReplyStatus.TRUNCATED, ReplyStatus.COMPLETED)
    assert stored == [("Once upon", "truncated"), ("Paris.", "completed")]


@pytest.mark.model
@pytest.mark.parametrize("engine", ["batched", "single"])
async def test_a_llamacpp_reply_cut_at_max_tokens_is_stored_truncated(make_bot, engine):
    async with make_bot(llama(engine=engine, max_tokens=4)) as bot:
        cut = await bot.chat.say(STORY)
        stored = await stored_replies(bot)
    assert cut.status is ReplyStatus.TRUNCATED
    assert stored == [(cut.final, "truncated")]
    async with make_bot(llama(engine=engine, max_tokens=64)) as bot:
        whole = await bot.chat.say(FRANCE)  # SmolLM2 says Paris in a sentence and ends there
    assert whole.status is ReplyStatus.COMPLETED and "Paris" in whole.final


def test_truncated_counts_as_history_and_the_other_endings_do_not():
    assert [status.value for status in ReplyStatus if status.in_history] == ["completed", "truncated"]
    assert MessageRecord.status.type.length >= max(len(status.value) for status in ReplyStatus)
