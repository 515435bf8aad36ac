"""The pipeline's context fit before issue 12, the reference that tests and bench/ compare against."""

from __future__ import annotations

from botkit.context_fit import ContextFit, CountTokens
from botkit.types import Prompt


async def linear_fit(prompt: Prompt, budget: int, count_tokens: CountTokens) -> ContextFit:
    """Drop the oldest turn and count the whole prompt again, until it fits: one count per dropped turn."""
    prompt = Prompt(prompt.system, list(prompt.turns))
    prompt_tokens = await count_tokens(prompt)
    dropped = 0
    while prompt_tokens > budget and len(prompt.turns) > 1:
        del prompt.turns[0]
        dropped += 1
        prompt_tokens = await count_tokens(prompt)
    return ContextFit(dropped, prompt_tokens)


class Counter:
    """A backend's ``count_tokens``, counting its calls."""

    def __init__(self, count_tokens: CountTokens) -> None:
        self.count_tokens = count_tokens
        self.calls = 0

    async def __call__(self, prompt: Prompt) -> int:
        self.calls += 1
        return await self.count_tokens(prompt)
