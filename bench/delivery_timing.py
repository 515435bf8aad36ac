"""What the delivery benchmarks share: the questions, the model's own clock, one round's times, the report."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from botkit import hookimpl

QUESTIONS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle stays upright.",
    "Describe a walk through a forest in autumn.",
    "What should I pack for a week of hiking?",
    "Tell me about the history of tea.",
    "Why is the sky blue? Explain it to a child.",
]


class GenerationClock:
    """A reply filter that changes nothing: it notes when the model's first text and its end arrive."""

    def __init__(self) -> None:
        self.first_text: dict[str, float] = {}
        self.end: dict[str, float] = {}

    @hookimpl(tryfirst=True)
    def botkit_filter_reply(self, message, text: str, final: bool) -> None:
        now = time.monotonic()
        if final:
            self.end[message.message_id] = now
        elif text:
            self.first_text.setdefault(message.message_id, now)


@dataclass
class Round:
    first_token: float
    first_edit: float
    generation_end: float
    final_text: float
    edits: int
    characters: int

    @property
    def first_edit_lag(self) -> float:
        return self.first_edit - self.first_token

    @property
    def final_lag(self) -> float:
        return self.final_text - self.generation_end


def report(platform_name: str, rounds: list[Round], interval: float) -> bool:
    def ms(values: list[float]) -> str:
        return (
            f"{statistics.median(values) * 1000:,.0f} ({min(values) * 1000:,.0f}-{max(values) * 1000:,.0f})"
        )

    print(f"{len(rounds)} rounds, edit interval {interval:g} s; median (min-max), ms from the user's message")
    print()
    print("| measure | ms |")
    print("|---|---:|")
    print(f"| model: first token | {ms([r.first_token for r in rounds])} |")
    print(f"| {platform_name}: first edit (reply visible) | {ms([r.first_edit for r in rounds])} |")
    print(f"| first edit after first token | {ms([r.first_edit_lag for r in rounds])} |")
    print(f"| model: end of generation | {ms([r.generation_end for r in rounds])} |")
    print(f"| {platform_name}: final text | {ms([r.final_text for r in rounds])} |")
    print(f"| final text after end of generation | {ms([r.final_lag for r in rounds])} |")
    print()
    edits = [r.edits for r in rounds]
    chars = [r.characters for r in rounds]
    print(f"edits per reply: {min(edits)}-{max(edits)}; reply length {min(chars)}-{max(chars)} characters")
    worst_first = max(r.first_edit_lag for r in rounds)
    worst_final = max(r.final_lag for r in rounds)
    first_ok = worst_first <= interval
    final_ok = worst_final <= interval
    for name, worst, ok in (
        ("first edit <= first token", worst_first, first_ok),
        ("final text <= end", worst_final, final_ok),
    ):
        verdict = "PASS" if ok else "FAIL"
        print(f"target {name} + {interval:g} s: {verdict} (worst {worst * 1000:.0f} ms)")
    return first_ok and final_ok


