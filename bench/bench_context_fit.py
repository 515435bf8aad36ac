"""Context-fit benchmark: choosing the old turns to drop from 200 turns of history, one recount per turn or a search.

Run from the repository root::

    .venv/bin/python bench/bench_context_fit.py            # about 40 s on one core
    .venv/bin/python bench/bench_context_fit.py --check    # exit 1 when a target is missed

Both sides fit the same prompt (system prompt, 200 turns of history, the new
message) into the same token budget with the embedded SmolLM2's tokenizer
through ``LlamaCppBackend.count_tokens``, as the pipeline does. The baseline is
the pipeline's loop before issue 12 (``linear_fit`` in
tests/context_fit_reference.py): drop the oldest turn, render and count the
whole prompt again, until it fits. The other side is
``botkit.context_fit.fit_context``. Each case checks that both drop the same
turns and count the same tokens; rounds alternate which side goes first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# BOTKIT_* variables (BOTKIT_BACKEND__..., BOTKIT_CONFIG) would change what is measured;
# drop them before botkit reads the environment.
for _name in [name for name in os.environ if name.startswith("BOTKIT_")]:
    del os.environ[_name]

from bench_pipeline import pin_to_cpu

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from context_fit_reference import Counter, linear_fit  # the loop before issue 12

from botkit.backends.llamacpp import LlamaCppBackend, LlamaCppSettings
from botkit.context_fit import ContextFit, CountTokens, fit_context
from botkit.settings import BotSettings
from botkit.types import Prompt, Role, Turn

TARGET_SPEEDUP_HALF = 10.0  # at least this much faster when half the history goes
WORDS = (
    "the bot answers questions about asyncio locks queues tokens models adapters channels threads "
    "and memory in short plain sentences with an example or two where it helps"
).split()


def history(turns: int, seed: int) -> Prompt:
    """A conversation as memory loads it: alternating turns of 3 to 40 words, the new message last."""
    rng = random.Random(seed)
    conversation = [
        Turn(
            Role.USER if index % 2 == 0 else Role.ASSISTANT,
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))),
        )
        for index in range(turns)
    ]
    conversation.append(Turn(Role.USER, "So which of these should I read first?"))
    return Prompt(BotSettings().system_prompt, conversation)


@dataclass
class Case:
    """One budget: how long each side took, every round, and how many counts it made."""

    name: str
    budget: int
    fit: ContextFit | None = None
    linear_s: list[float] = field(default_factory=list)
    search_s: list[float] = field(default_factory=list)
    linear_counts: int = 0
    search_counts: int = 0

    @property
    def ratio(self) -> float:
        """Median time of the loop over median time of the search: how many times faster."""
        return statistics.median(self.linear_s) / statistics.median(self.search_s)


async def timed(fit, prompt: Prompt, budget: int, count_tokens: CountTokens) -> tuple[ContextFit, float, int]:
    counter = Counter(count_tokens)
    started = time.perf_counter()
    result = await fit(prompt, budget, counter)
    return result, time.perf_counter() - started, counter.calls


async def benchmark(args: argparse.Namespace) -> tuple[list[Case], dict[str, object]]:
    settings = LlamaCppSettings(prompt_format=args.prompt_format)
    backend = LlamaCppBackend(settings)
    load_before = os.getloadavg()[0]
    await backend.start()
    try:
        prompt = history(args.turns, args.seed)
        count = backend.count_tokens
        full = await count(prompt)
        alone = await count(Prompt(prompt.system, prompt.turns[-1:]))

        async def without(oldest: int) -> int:
            return await count(Prompt(prompt.system, prompt.turns[oldest:]))

        window = backend.context_window - settings.max_tokens
        cases = [
            Case("fits: nothing dropped", full),
            Case("1 turn dropped", await without(1)),
            Case(f"{args.turns // 2} turns dropped", await without(args.turns // 2)),
            Case(f"[backend] defaults: {window:,} tokens", window),
            Case(f"all but the message: {args.turns} dropped", alone),
        ]
        # Warm-up: the tokenizer's first calls and the template's compilation are slower.
        await fit_context(prompt, full, count)
        for round_number in range(args.rounds):
            for case in cases:
                sides = [(linear_fit, case.linear_s), (fit_context, case.search_s)]
                if round_number % 2:
                    sides.reverse()
                for fit, times in sides:
                    result, seconds, calls = await timed(fit, prompt, case.budget, count)
                    times.append(seconds)
                    if case.fit is None:
                        case.fit = result
                    # The comparison means something only if both chose the same turns.
                    assert result == case.fit, f"{case.name}: {result} != {case.fit}"
                    if fit is linear_fit:
                        case.linear_counts = calls
                    else:
                        case.search_counts = calls
        setup = {
            "full": full,
            "turns": args.turns,
            "chars": sum(len(turn.text) for turn in prompt.turns),
            "context_window": backend.context_window,
            "load": (load_before, os.getloadavg()[0]),
        }
    finally:
        await backend.close()
    return cases, setup


def print_report(args: argparse.Namespace, pinned: str, cases: list[Case], setup: dict) -> bool:
    print("botkit context-fit benchmark")
    print(f"  python {platform.python_version()} on {platform.machine()}, {pinned}")
    print(
        f"  embedded SmolLM2 tokenizer (LlamaCppBackend.count_tokens), prompt format {args.prompt_format!r}; "
        f"prompt: system + {setup['turns']} history turns + the message, {setup['chars']:,} characters, "
        f"{setup['full']:,} tokens"
    )
    print(f"  {args.rounds} rounds per case, sides alternating; times are the median round")
    print("  load average before and after: {:.2f}, {:.2f}".format(*setup["load"]))
    print()
    header = (
        f"  {'budget':<36} {'dropped':>7} {'loop ms':>9} {'counts':>6} {'search ms':>9} {'counts':>6} "
        f"{'loop/search':>11}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for case in cases:
        assert case.fit is not None
        print(
            f"  {case.name:<36} {case.fit.dropped:>7} {statistics.median(case.linear_s) * 1000:>9.1f} "
            f"{case.linear_counts:>6} {statistics.median(case.search_s) * 1000:>9.1f} {case.search_counts:>6} "
            f"{case.ratio:>10.1f}x"
        )
    print()
    print("  both sides dropped the same turns and counted the same tokens in every round: yes")
    half = cases[2]
    most_counts = max(case.search_counts - case.linear_counts for case in cases)
    checks = [
        (
            f"{half.name}: search >= {TARGET_SPEEDUP_HALF:g}x faster",
            half.ratio >= TARGET_SPEEDUP_HALF,
            f"{half.ratio:.1f}x",
        ),
        (
            "no case counts more often than the loop",
            most_counts <= 0,
            f"at most {most_counts:+d} counts",
        ),
    ]
    for label, passed, value in checks:
        print(f"  target: {label:<52} {'PASS' if passed else 'FAIL'} ({value})")
    return all(passed for _, passed, _ in checks)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200, help="turns of history (default 200)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every case (default 5)")
    parser.add_argument(
        "--prompt-format", choices=["chat", "alpaca"], default="chat", help="as [backend] prompt_format"
    )
    parser.add_argument("--seed", type=int, default=12, help="seed of the generated history (default 12)")
    parser.add_argument("--cpu", type=int, default=0, help="CPU to pin the process to (default 0)")
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 when a target (set for 200 turns) is missed"
    )
    args = parser.parse_args(argv)
    if args.turns < 4 or args.rounds < 1:
        parser.error("--turns must be at least 4 and --rounds at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    pinned = pin_to_cpu(args.cpu)
    cases, setup = asyncio.run(benchmark(args))
    met = print_report(args, pinned, cases, setup)
    return 0 if met or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
