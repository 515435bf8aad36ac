"""Fitting a prompt into the model's context window: how many of the oldest turns to leave out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from botkit.types import Prompt, Turn

CountTokens = Callable[[Prompt], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class ContextFit:
    """How many of the oldest turns to drop, and the tokens the prompt takes without them."""

    dropped: int
    prompt_tokens: int


async def fit_context(prompt: Prompt, budget: int, count_tokens: CountTokens) -> ContextFit:
    """The fewest oldest turns of ``prompt`` to drop so that it takes at most ``budget`` tokens.

    The system prompt and the newest turn always stay: when even they take more
    than ``budget``, every earlier turn is dropped and ``prompt_tokens`` tells by
    how much the prompt is over. ``prompt`` itself is not changed.

    The answer is the one that dropping a turn at a time and recounting gives,
    as long as dropping a turn never makes a rendered prompt longer. Only a few
    exact counts (``count_tokens``, the backend's tokenizer on the rendered
    prompt) are made instead of one per dropped turn: a first guess from the
    turns' share of the characters, then a search outward from it that doubles
    its step, then bisection. A good guess costs two or three counts; a bad one
    O(log turns).
    """
    counted: dict[int, int] = {}

    async def fits(drop: int) -> bool:
        if drop not in counted:
            counted[drop] = await count_tokens(replace(prompt, turns=prompt.turns[drop:]))
        return counted[drop] <= budget

    most = len(prompt.turns) - 1
    if await fits(0) or most <= 0:
        return ContextFit(0, counted[0])
    guess = _guess(prompt.system, prompt.turns, counted[0], counted[0] - budget)
    # Dropping ``too_few`` turns is known not to fit. Dropping ``enough`` is known to
    # fit, or ``enough`` is ``most``: the answer when nothing fewer fits, fitting or not.
    too_few, enough = 0, most
    step = 1
    if await fits(guess):
        enough = guess
        while enough - step > too_few:
            if not await fits(enough - step):
                too_few = enough - step
                break
            enough -= step
            step *= 2
    else:
        too_few = guess
        while too_few + step < most:
            if await fits(too_few + step):
                enough = too_few + step
                break
            too_few += step
            step *= 2
    while enough - too_few > 1:
        middle = (too_few + enough) // 2
        if await fits(middle):
            enough = middle
        else:
            too_few = middle
    await fits(enough)
    return ContextFit(enough, counted[enough])


def _guess(system: str, turns: Sequence[Turn], tokens: int, excess: int) -> int:
    """Turns to drop to shed ``excess`` tokens, reckoning each turn's tokens by its characters.

    Between 1 and ``len(turns) - 1``. Template markup is spread over the
    characters, so short turns are reckoned a little light; the search corrects it.
    """
    chars = len(system) + sum(len(turn.text) for turn in turns)
    tokens_per_char = tokens / max(chars, 1)
    shed = 0.0
    for drop, turn in enumerate(turns[:-1], start=1):
        shed += len(turn.text) * tokens_per_char
        if shed >= excess:
            return drop
    return len(turns) - 1
