"""Batching benchmark: the transformers backend's aggregate tokens/s against ``model.generate`` on the same batch.

Run from the repository root::

    .venv/bin/python bench/bench_transformers_batch.py            # about 2 minutes on two cores, quiet
    .venv/bin/python bench/bench_transformers_batch.py --check    # exit 1 when the target is missed
    .venv/bin/python bench/bench_transformers_batch.py --device cuda --sizes 1,8,32,64 --tokens 128
    .venv/bin/python bench/bench_transformers_batch.py --device cuda --cache dynamic   # against the static default

For each size N, N conversations ask at once, each its own question. The plain
side is one ``model.generate`` call on the N rendered prompts, left-padded into
one batch with their attention mask (greedy, the same repetition penalty and
token limit): what a transformers user would write for a batch known in
advance. The botkit side is N concurrent ``TransformersBackend.stream`` calls
on the same loaded model (``parallel`` = the largest N): requests arriving one
by one, joining the batch between steps, streamed text cut into words, stop
strings watched. Tokens count what each reply generated (its end token
included); tokens/s is all of them over the wall time from the first request to
the last reply. Both sides must give the same replies, which is reported.

Target: at 8 conversations botkit reaches at least 0.8 of ``model.generate``'s tokens/s.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import sys
import threading
import time
from collections.abc import Sequence

for _name in [name for name in os.environ if name.startswith("BOTKIT_")]:
    del os.environ[_name]

from botkit.backends.transformers import TransformersBackend, TransformersSettings
from botkit.types import Prompt, Role, Turn

TARGET_SIZE = 8
TARGET_RATIO = 0.8
SYSTEM = "You are a helpful assistant."
TOPICS = (
    "a dragon", "a lighthouse keeper", "a robot gardener", "a lost cat", "a pirate ship", "a desert city",
    "a clockmaker", "a snow fox", "an old library", "a mountain train", "a river spirit", "a space station",
    "a bakery at night", "a tiny knight", "a whale singer", "a haunted orchard", "a paper airplane",
    "a glass castle", "a brave turtle", "a forgotten map", "a jazz musician", "a storm chaser",
    "an island school", "a talking tree", "a moon rabbit", "a circus bear", "a painter's ghost",
    "a broken compass", "a winter market", "a kite maker", "a sleepy volcano", "a secret tunnel",
)  # fmt: skip

clock = time.perf_counter


def question(index: int) -> Prompt:
    # Longer and shorter questions, so that the prompts of one batch differ in length.
    extra = " Give every character a name and describe the weather." if index % 3 == 0 else ""
    topic = TOPICS[index % len(TOPICS)]
    return Prompt(SYSTEM, [Turn(Role.USER, f"Write a long story about {topic}.{extra}")])


@dataclasses.dataclass
class Result:
    seconds: float
    tokens: int
    replies: list[str]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def plain_generate(backend: TransformersBackend, prompts: list[Prompt], max_tokens: int) -> Result:
    """One ``model.generate`` call on the left-padded batch of rendered prompts."""
    import torch

    model, tokenizer = backend.model, backend.tokenizer
    eos_ids = model.generation_config.eos_token_id
    eos = {eos_ids} if isinstance(eos_ids, int) else set(eos_ids or [])
    pad = model.generation_config.pad_token_id
    pad = pad if pad is not None else min(eos)
    started = clock()
    ids = [tokenizer(backend.render(prompt))["input_ids"] for prompt in prompts]
    width = max(len(row) for row in ids)
    # Left padding, as a decoder-only batch needs (this tokenizer has no pad token of its own).
    input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in ids], device=model.device)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids], device=model.device)
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_tokens,
            do_sample=False,
            repetition_penalty=1.1,
            pad_token_id=pad,
        )
    generated = output[:, width:].tolist()
    seconds = clock() - started
    tokens, replies = 0, []
    for row in generated:
        # A row that ended early is padded to the batch's length: its tokens stop at its end token.
        end = next((place for place, token in enumerate(row) if token in eos), len(row) - 1)
        tokens += end + 1
        replies.append(
            tokenizer.decode(row[: end + 1], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )
    return Result(seconds, tokens, replies)


async def botkit_batch(backend: TransformersBackend, prompts: list[Prompt], max_tokens: int) -> Result:
    """``len(prompts)`` concurrent streams through the backend."""
    params = dataclasses.replace(backend.settings.sampling(), max_tokens=max_tokens)

    async def one(prompt: Prompt) -> tuple[str, int]:
        text, tokens = "", 0
        async for chunk in backend.stream(prompt, params, threading.Event()):
            text += chunk.text
            tokens += chunk.tokens
        return text, tokens

    started = clock()
    replies = await asyncio.gather(*(one(prompt) for prompt in prompts))
    seconds = clock() - started
    return Result(seconds, sum(tokens for _, tokens in replies), [text for text, _ in replies])


async def benchmark(args: argparse.Namespace) -> list[tuple[int, Result, Result]]:
    settings = TransformersSettings(
        model_path=args.model,
        device=args.device,
        temperature=0,
        repeat_penalty=1.1,
        parallel=max(args.sizes),
        cache_implementation=args.cache,
    )
    backend = TransformersBackend(settings)
    loading = clock()
    await backend.start()
    print(f"  loaded {backend.model_name} in {clock() - loading:.1f} s; {backend.load().slots} slots")
    results = []
    try:
        # Warm-up: first calls allocate and pick kernels.
        await asyncio.to_thread(plain_generate, backend, [question(0)], 4)
        await botkit_batch(backend, [question(0)], 4)
        for size in args.sizes:
            prompts = [question(index) for index in range(size)]
            plains, botkits = [], []
            for round_number in range(args.rounds):
                if round_number % 2 == 0:
                    plains.append(await asyncio.to_thread(plain_generate, backend, prompts, args.tokens))
                    botkits.append(await botkit_batch(backend, prompts, args.tokens))
                else:
                    botkits.append(await botkit_batch(backend, prompts, args.tokens))
                    plains.append(await asyncio.to_thread(plain_generate, backend, prompts, args.tokens))
            middle = len(plains) // 2
            plain = sorted(plains, key=lambda result: result.tokens_per_s)[middle]
            ours = sorted(botkits, key=lambda result: result.tokens_per_s)[middle]
            results.append((size, plain, ours))
            print(f"  {size} conversations done")
    finally:
        await backend.close()
    return results


def report(args: argparse.Namespace, results: list[tuple[int, Result, Result]]) -> bool:
    print()
    print(
        f"  {'conversations':>13} {'generate tok/s':>15} {'botkit tok/s':>13} {'ratio':>7} {'same replies':>13}"
    )
    ratios = {}
    for size, plain, ours in results:
        same = sum(a.strip() == b.strip() for a, b in zip(plain.replies, ours.replies, strict=True))
        ratios[size] = ours.tokens_per_s / plain.tokens_per_s
        print(
            f"  {size:>13} {plain.tokens_per_s:>15.1f} {ours.tokens_per_s:>13.1f} {ratios[size]:>7.3f} "
            f"{same:>6}/{size:<6}"
        )
    if TARGET_SIZE not in ratios:
        print(f"\n  target: not measured ({TARGET_SIZE} conversations not among --sizes)")
        return False
    passed = ratios[TARGET_SIZE] >= TARGET_RATIO
    print(
        f"\n  target: botkit at {TARGET_SIZE} conversations >= {TARGET_RATIO} x generate: "
        f"{'PASS' if passed else 'FAIL'} ({ratios[TARGET_SIZE]:.3f})"
    )
    return passed


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="1,8,32", help="conversations at once, comma-separated (default 1,8,32)"
    )
    parser.add_argument("--tokens", type=int, default=24, help="max_tokens per reply (default 24)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs of each side per size (default 3); the median is kept"
    )
    parser.add_argument("--device", default="cpu", help="'cpu' (default), 'cuda', 'auto'...")
    parser.add_argument(
        "--cache",
        choices=["auto", "dynamic", "static"],
        default="auto",
        help="the backend's cache_implementation",
    )
    parser.add_argument("--model", help="a model folder or .gguf file (default: the embedded SmolLM2)")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when the target is missed")
    args = parser.parse_args(argv)
    args.sizes = [int(size) for size in args.sizes.split(",")]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    print("botkit transformers batching benchmark")
    print(
        f"  python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); device {args.device}"
    )
    print(
        f"  greedy, repeat_penalty 1.1, max_tokens {args.tokens}, {args.rounds} round(s) a size, "
        f"cache_implementation {args.cache}"
    )
    results = asyncio.run(benchmark(args))
    met = report(args, results)
    return 0 if met or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
