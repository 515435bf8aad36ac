"""How fast ``botkit finetune synth`` filters, and how much memory it holds, at 2K, 10K and 52K instructions.

No teacher: the instructions are made by the bench (tests/synth_data.py: Zipf-like
word choice, one in five a near copy of an earlier one), 175 others serve as the
seed tasks. For each size it runs, in one process:

- the whole filter chain (``InstructionFilter``: length, unsuitable, exact and near
  duplicates, ROUGE-L with the prefix index), in a child process of its own:
  instructions per second, and how much its peak resident memory grew over what
  the process held once the instructions were made (``ru_maxrss``);
- the ROUGE-L filter alone with the prefix index, and for 2K and 10K the exhaustive
  one (every new instruction against every kept one, LCS bit-parallel in numpy), which
  must keep exactly the same instructions.

``--check`` exits 1 when the prefix filter keeps another set than the exhaustive one,
when it is not faster at 10K, or when its time per instruction grows more than
``--max-growth`` times from 2K to 52K (a quadratic filter's grows about 26 times).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from synth_data import synthetic_instructions  # noqa: E402

from botkit.finetune.synth_filter import (  # noqa: E402
    ExhaustiveRouge,
    InstructionFilter,
    PrefixRouge,
    rouge_tokenizer,
)

SIZES = (2_000, 10_000, 52_000)
EXHAUSTIVE_UP_TO = 10_000


def measure(action):  # type: ignore[no-untyped-def]
    """``action()``'s result and seconds."""
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(size: int) -> None:
    """The whole filter chain on ``size`` instructions; prints kept, seconds, peak memory growth (MiB)."""
    seeds, texts = synthetic_instructions(175, seed=99), synthetic_instructions(size)
    checks = InstructionFilter()
    before = peak_mib()
    started = time.perf_counter()
    checks.seed(seeds)
    kept = sum(checks.reason(text) is None for text in texts)
    print(json.dumps({"kept": kept, "seconds": time.perf_counter() - started, "mib": peak_mib() - before}))


def run_child(size: int) -> dict:
    command = [sys.executable, __file__, "--child", str(size)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--max-growth", type=float, default=5.0)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    tokenizer = rouge_tokenizer()
    seeds = synthetic_instructions(175, seed=99)
    seed_tokens = [tokenizer.tokenize(text) for text in seeds]
    counts = Counter(token for tokens in seed_tokens for token in tokens)
    rows, per_instruction, failures = [], {}, []
    for size in args.sizes:
        texts = synthetic_instructions(size)
        tokens = [tokenizer.tokenize(text) for text in texts]

        chain = run_child(size)

        def prefix(tokens=tokens):  # type: ignore[no-untyped-def]
            index = PrefixRouge(rank_counts=counts)
            for seed in seed_tokens:
                index.similar_or_add(seed)
            return [not index.similar_or_add(t) for t in tokens], index.comparisons

        (kept_prefix, comparisons), prefix_s = measure(prefix)
        per_instruction[size] = prefix_s / size
        exhaustive = "-"
        if size <= EXHAUSTIVE_UP_TO:

            def reference(tokens=tokens):  # type: ignore[no-untyped-def]
                index = ExhaustiveRouge()
                for seed in seed_tokens:
                    index.similar_or_add(seed)
                return [not index.similar_or_add(t) for t in tokens]

            kept_reference, reference_s = measure(reference)
            exhaustive = f"{reference_s:.1f} s ({reference_s / prefix_s:.1f}x)"
            if kept_reference != kept_prefix:
                failures.append(f"{size}: the prefix filter kept another set than the exhaustive one")
            if size == EXHAUSTIVE_UP_TO and reference_s <= prefix_s:
                failures.append(f"{size}: the prefix filter was not faster than the exhaustive one")
        rows.append(
            f"| {size:,} | {chain['kept']:,} | {chain['seconds']:.1f} s ({size / chain['seconds']:,.0f}/s) | "
            f"{chain['mib']:.0f} MiB | {sum(kept_prefix):,} | {prefix_s:.1f} s | {comparisons:,} | {exhaustive} |"
        )
        print(rows[-1], flush=True)
    print(
        "\n| instructions | kept (all filters) | all filters | their peak memory | kept (ROUGE-L only) "
        "| ROUGE-L, prefix index | ROUGE-L computed | ROUGE-L, exhaustive (x prefix) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if len(per_instruction) > 1:
        smallest, largest = min(per_instruction), max(per_instruction)
        growth = per_instruction[largest] / per_instruction[smallest]
        print(f"\ntime per instruction, {largest:,} against {smallest:,}: {growth:.1f}x")
        if growth > args.max_growth:
            failures.append(f"time per instruction grew {growth:.1f}x (target: at most {args.max_growth:g}x)")
    for failure in failures:
        print("MISSED:", failure)
    return 1 if args.check and failures else 0


if __name__ == "__main__":
    sys.exit(main())
