"""Fitting a prompt into the context window: the same turns dropped as one-at-a-time recounting, in few counts."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Iterator

import pytest
from context_fit_reference import Counter, linear_fit

from botkit import Prompt, Role, Turn
from botkit.backends.llamacpp import LlamaCppBackend, LlamaCppSettings
from botkit.backends.scripted import ScriptedBackend, ScriptedSettings
from botkit.context_fit import ContextFit, CountTokens, fit_context

HISTORY_TURNS = 200
WORDS = "the model answers each question about asyncio locks queues and tokens in plain words".split()


def long_history(turns: int, seed: int = 12, words: tuple[int, ...] = (1, 3, 12, 40, 90)) -> Prompt:
    """A conversation of ``turns`` turns of uneven length, some with speakers, the last a question."""
    rng = random.Random(seed)
    history = []
    for index in range(turns - 1):
        role = Role.USER if index % 2 == 0 else Role.ASSISTANT
        text = " ".join(rng.choice(WORDS) for _ in range(rng.choice(words)))
        speaker = rng.choice([None, "ana", "bo"]) if role is Role.USER else None
        history.append(Turn(role, f"{index}: {text}", speaker))
    return Prompt("You are a helpful assistant.", [*history, Turn(Role.USER, "And what now?")])


async def by_turns_kept(prompt: Prompt, count_tokens: CountTokens) -> dict[int, int]:
    """Tokens of ``prompt`` with each number of its newest turns kept, counted exactly."""
    return {
        kept: await count_tokens(Prompt(prompt.system, prompt.turns[-kept:]))
        for kept in range(1, len(prompt.turns) + 1)
    }


def budgets_around_each_drop(counts: dict[int, int], every: int) -> list[int]:
    """Budgets on both sides of the exact count of every ``every``-th number of turns kept,
    plus ones that nothing and that everything fits."""
    budgets = {min(counts.values()) - 1, max(counts.values()) + 1, 0, -5}
    for kept, tokens in counts.items():
        if kept % every == 0 or kept in (1, 2, len(counts) - 1):
            budgets.update({tokens - 1, tokens})
    return sorted(budgets)


async def check_same_as_linear(prompt: Prompt, count_tokens: CountTokens, every: int = 1) -> list[int]:
    """Asserts ``fit_context`` equals the linear loop for telling budgets; its calls per fit."""
    counts = await by_turns_kept(prompt, count_tokens)
    known = len(prompt.turns)

    async def remembered(candidate: Prompt) -> int:
        # The reference loop only ever drops the oldest turns, so it asks for these suffixes:
        # counted once above rather than again for every budget.
        assert candidate.system == prompt.system and candidate.turns == prompt.turns[-len(candidate.turns) :]
        return counts[len(candidate.turns)]

    calls = []
    for budget in budgets_around_each_drop(counts, every):
        counter = Counter(count_tokens)
        fitted = await fit_context(prompt, budget, counter)
        expected = await linear_fit(prompt, budget, remembered)
        assert fitted == expected, f"budget {budget}"
        assert len(prompt.turns) == known  # the prompt itself is left alone
        calls.append(counter.calls)
    return calls


@pytest.mark.parametrize("prompt_format", ["chat", "alpaca"])
async def test_scripted_backend_drops_the_same_turns_as_the_linear_loop(prompt_format):
    backend = ScriptedBackend(ScriptedSettings(prompt_format=prompt_format))
    prompt = long_history(HISTORY_TURNS)
    calls = await check_same_as_linear(prompt, backend.count_tokens)
    # The linear loop counts once per dropped turn, up to 200 times; this search, a few
    # times around its guess and never more than a gallop plus a bisection.
    assert max(calls) <= 2 + 2 * math.ceil(math.log2(HISTORY_TURNS))
    assert sorted(calls)[len(calls) // 2] <= 4


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaCppBackend]:
    """The embedded model's tokenizer, loaded once (started and closed on loops of their own)."""
    backend = LlamaCppBackend(LlamaCppSettings(n_ctx=512))
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.close())


@pytest.mark.parametrize("prompt_format", ["chat", "alpaca"])
async def test_llamacpp_tokenizer_drops_the_same_turns_as_the_linear_loop(llama, prompt_format):
    llama.settings = llama.settings.model_copy(update={"prompt_format": prompt_format})
    try:
        # Shorter turns and every 25th boundary: the real tokenizer takes milliseconds a count.
        prompt = long_history(HISTORY_TURNS, seed=5, words=(1, 3, 12))
        calls = await check_same_as_linear(prompt, llama.count_tokens, every=25)
    finally:
        llama.settings = llama.settings.model_copy(update={"prompt_format": "chat"})
    assert max(calls) <= 2 + 2 * math.ceil(math.log2(HISTORY_TURNS))


async def test_nothing_is_dropped_and_counted_once_when_the_prompt_fits():
    backend = ScriptedBackend(ScriptedSettings())
    counter = Counter(backend.count_tokens)
    prompt = long_history(20)
    fitted = await fit_context(prompt, 10_000, counter)
    assert fitted == ContextFit(0, await backend.count_tokens(prompt))
    assert counter.calls == 1


async def test_a_lone_message_over_the_budget_is_kept_and_its_excess_shown():
    backend = ScriptedBackend(ScriptedSettings())
    prompt = Prompt("system", [Turn(Role.USER, "word " * 400)])
    fitted = await fit_context(prompt, 50, backend.count_tokens)
    assert fitted.dropped == 0 and fitted.prompt_tokens > 50


async def test_every_earlier_turn_goes_when_the_last_message_alone_does_not_fit():
    backend = ScriptedBackend(ScriptedSettings())
    prompt = long_history(30)
    prompt.turns[-1] = Turn(Role.USER, "word " * 400)
    fitted = await fit_context(prompt, 100, backend.count_tokens)
    alone = await backend.count_tokens(Prompt(prompt.system, prompt.turns[-1:]))
    assert fitted == ContextFit(29, alone) and alone > 100
