"""Synthetic instructions for the synth filter's tests and bench: varied, with near copies among them.

Words are drawn from a Zipf distribution (word k with weight 1 / k) over a
vocabulary that starts with the words real instructions use most ("the",
"write", "a"...) and goes on with made-up words, so token statistics look like
those of a real instruction set: a few words everywhere, most of them rare.
One in five instructions is an earlier one with a word or two changed,
dropped or added, so that the ROUGE-L filter has pairs near its 0.7 threshold
on both sides.
"""

from __future__ import annotations

import itertools
import random

COMMON = (
    "the", "a", "of", "to", "and", "write", "in", "for", "is", "following", "give", "how", "what",
    "an", "list", "describe", "explain", "about", "with", "that", "this", "sentence", "create",
    "text", "generate", "story", "find", "make", "your", "it", "on", "be", "are", "you", "word",
    "words", "summarize", "suggest", "best", "example", "three", "five", "short", "new", "why",
)  # fmt: skip
SYLLABLES = ("ka", "lo", "mi", "ren", "tu", "sa", "vor", "el", "pin", "dra", "no", "qui", "bes", "ta")
VOCABULARY = COMMON + tuple("".join(parts) for parts in itertools.product(SYLLABLES, repeat=3))
_WEIGHTS = list(itertools.accumulate(1 / rank for rank in range(1, len(VOCABULARY) + 1)))


def _sentence(draw: random.Random) -> str:
    length = draw.randint(5, 18)
    words = draw.choices(VOCABULARY, cum_weights=_WEIGHTS, k=length)
    return " ".join(words).capitalize() + "."


def _mutate(draw: random.Random, text: str) -> str:
    words = text.rstrip(".").split()
    for _ in range(draw.randint(1, 2)):
        where = draw.randrange(len(words))
        change = draw.random()
        if change < 0.4:
            words[where] = draw.choice(VOCABULARY)
        elif change < 0.7 and len(words) > 4:
            del words[where]
        else:
            words.insert(where, draw.choice(COMMON))
    return " ".join(words) + "."


def synthetic_instructions(count: int, seed: int = 0) -> list[str]:
    """``count`` instructions, the same for the same seed."""
    draw = random.Random(seed)
    made: list[str] = []
    while len(made) < count:
        if made and draw.random() < 0.2:
            made.append(_mutate(draw, draw.choice(made)))
        else:
            made.append(_sentence(draw))
    return made
