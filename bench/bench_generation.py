"""Generation benchmark: the embedded model through botkit's pipeline against raw llama-cpp-python.

Run from the repository root::

    .venv/bin/python bench/bench_generation.py            # about 30 s on two cores
    .venv/bin/python bench/bench_generation.py --check    # exit 1 when a target is missed

Both sides load the same GGUF (the embedded SmolLM2) with the same n_ctx,
n_threads, n_batch and seed, and generate greedily from the very same prompt
text, rendered once by botkit's renderer. The raw side iterates
``Llama.create_completion(stream=True)`` itself; the botkit side is what
``botkit chat`` runs for each line: ``Bot.handle`` with a responder, through
gates, token budget, generation queue, worker thread, output filters and
after-hooks. Rounds alternate which side goes first and the medians are compared.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

# BOTKIT_* variables (BOTKIT_LOAD_PLUGINS, BOTKIT_BACKEND__..., BOTKIT_CONFIG) would change
# what is measured; drop them before botkit reads the environment.
for _name in [name for name in os.environ if name.startswith("BOTKIT_")]:
    del os.environ[_name]

from botkit import hookimpl
from botkit.backends.llamacpp import LlamaCppBackend, embedded_model_path
from botkit.backends.llamacpp_model import safe_llama_class_params
from botkit.bot import Bot
from botkit.settings import settings_from_mapping
from botkit.types import Message, Prompt, Reply, ReplyStatus, Responder, Role, Turn, User

TARGET_TOKENS_PER_S_RATIO = 0.97
TARGET_ADDED_FIRST_TOKEN_MS = 10.0
QUESTION = "Write a long story about a dragon who learns to read."

clock = time.perf_counter


@dataclass
class Run:
    """One generation: when it started, when each piece of text arrived, when it ended."""

    started: float
    arrivals: list[float] = field(default_factory=list)
    ended: float = 0.0
    text: str = ""

    @property
    def tokens(self) -> int:
        return len(self.arrivals)

    @property
    def first_token_ms(self) -> float:
        return (self.arrivals[0] - self.started) * 1000

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first, over the time between the first and the last."""
        return (self.tokens - 1) / (self.arrivals[-1] - self.arrivals[0])

    @property
    def overall_tokens_per_s(self) -> float:
        """Every token over the whole request, prompt evaluation included."""
        return self.tokens / (self.ended - self.started)


class TimingResponder(Responder):
    """Notes when each streamed update reaches the adapter, as a chat platform would see it."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.status: ReplyStatus | None = None

    async def send(self, text: str) -> None:
        raise AssertionError(f"the bot sent a notice instead of streaming: {text!r}")

    async def update(self, text: str) -> None:
        self.run.arrivals.append(clock())
        self.run.text = text

    async def finish(self, text: str, status: ReplyStatus) -> None:
        self.run.ended = clock()
        self.status = status


class RecordReplies:
    """An after-reply plugin that only looks: the prompt and completion token counts."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []

    @hookimpl
    def botkit_after_reply(self, reply: Reply) -> None:
        self.replies.append(reply)


def raw_generate(llama, text: str, params) -> Run:
    """What botkit's backend asks of llama.cpp, called directly on this thread."""
    run = Run(clock())
    for part in llama.create_completion(
        prompt=text,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        repeat_penalty=params.repeat_penalty,
        seed=params.seed,
        stop=None,
        stream=True,
    ):
        piece = part["choices"][0]["text"]
        if piece:
            run.arrivals.append(clock())
            run.text += piece
    run.ended = clock()
    return run


async def botkit_generate(bot: Bot, channel: str) -> Run:
    message = Message(
        text=QUESTION, author=User(id="bench", name="bench"), platform="bench", channel_id=channel
    )
    run = Run(clock())
    responder = TimingResponder(run)
    await bot.handle(message, responder)
    assert responder.status is not None and responder.status.in_history, (responder.status, run.text)  # to its end or max_tokens
    return run


@dataclass
class Side:
    name: str
    runs: list[Run] = field(default_factory=list)

    def median(self, metric: str) -> float:
        return statistics.median(getattr(run, metric) for run in self.runs)

    def spread(self, metric: str) -> str:
        values = sorted(getattr(run, metric) for run in self.runs)
        return f"{values[0]:.1f}-{values[-1]:.1f}"


async def benchmark(args: argparse.Namespace) -> tuple[Side, Side, dict[str, object]]:
    from llama_cpp import Llama

    backend_config = {
        "type": "llamacpp",
        "n_ctx": args.n_ctx,
        "n_threads": args.threads,
        "n_batch": args.n_batch,
        "seed": args.seed,
        "temperature": 0,
        "max_tokens": args.tokens,
    }
    load_before = os.getloadavg()[0]
    recorder = RecordReplies()
    # A data folder of its own: stored history from an earlier run must not join the prompt,
    # and the benchmark must not write into the user's conversations.
    data_dir = tempfile.TemporaryDirectory(prefix="botkit-bench-")
    config = {
        "backend": backend_config,
        "storage": {"data_dir": data_dir.name},
        "plugins": {name: {"enabled": False} for name in args.disable},
    }
    bot = Bot.load(settings_from_mapping(config), {"bench": recorder})
    backend = bot.backend
    assert isinstance(backend, LlamaCppBackend)
    await bot.start()
    try:
        params = bot.backend_settings.sampling()
        # The prompt the pipeline builds for a first message, rendered by botkit's one renderer.
        prompt = Prompt(system=bot.settings.bot.system_prompt, turns=[Turn(Role.USER, QUESTION)])
        text = backend.render(prompt)
        with safe_llama_class_params():  # the weights as botkit loads them
            llama = Llama(
                model_path=str(embedded_model_path()),
                n_ctx=args.n_ctx,
                n_threads=args.threads,
                n_batch=args.n_batch,
                seed=args.seed,
                verbose=False,
            )
        prompt_tokens = len(llama.tokenize(text.encode("utf-8"), special=True))
        raw, through_bot = Side("raw llama-cpp-python"), Side("botkit Bot.handle")

        # Warm-up: the first evaluation of a fresh context is slower on both sides.
        reference = raw_generate(llama, text, params)
        await botkit_generate(bot, "warm-up")
        for round_number in range(args.rounds):
            # A new channel each round, so that no conversation history joins the prompt.
            channel = f"bench-{round_number}"
            if round_number % 2 == 0:
                raw.runs.append(raw_generate(llama, text, params))
                through_bot.runs.append(await botkit_generate(bot, channel))
            else:
                through_bot.runs.append(await botkit_generate(bot, channel))
                raw.runs.append(raw_generate(llama, text, params))

        # The comparison means something only if both sides did the same work.
        for run in raw.runs + through_bot.runs:
            assert run.text == reference.text, f"different output: {run.text!r}"
            assert run.tokens == reference.tokens, (run.tokens, reference.tokens)
        for reply in recorder.replies:
            assert reply.prompt_tokens == prompt_tokens, (reply.prompt_tokens, prompt_tokens)
            assert reply.completion_tokens == reference.tokens
        llama.close()
        setup = {
            "threads": llama.n_threads,
            "threads_batch": llama.n_threads_batch,
            "prompt_tokens": prompt_tokens,
            "tokens": reference.tokens,
            "plugins": sorted(bot.host.pm_names()),
            "load_before": load_before,
            "load_after": os.getloadavg()[0],
        }
    finally:
        await bot.stop()
        data_dir.cleanup()
    return raw, through_bot, setup


def print_report(args: argparse.Namespace, raw: Side, through_bot: Side, setup: dict) -> bool:
    print("botkit generation benchmark")
    print(f"  python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print(
        f"  model {embedded_model_path().name}; n_ctx {args.n_ctx}, n_batch {args.n_batch}, "
        f"n_threads {setup['threads']} (batch {setup['threads_batch']}), seed {args.seed}, "
        "temperature 0"
    )
    print(
        f"  prompt {setup['prompt_tokens']} tokens (identical text both ways), "
        f"{setup['tokens']} tokens generated per run (max_tokens {args.tokens}), "
        f"{args.rounds} rounds alternating + 1 warm-up each"
    )
    print(
        "  llama-cpp-python keeps the previous run's prompt in its KV cache on both sides, so\n"
        "  first-token time is one token's evaluation plus each side's own overhead"
    )
    print(f"  plugins loaded: {', '.join(setup['plugins'])}")
    before, after = setup["load_before"], setup["load_after"]
    print(f"  1-minute load average: {before:.2f} before, {after:.2f} after (other processes add noise)")
    print()
    header = (
        f"  {'path':<22} {'first token ms':>14} {'(min-max)':>13} "
        f"{'decode tok/s':>12} {'(min-max)':>13} {'overall tok/s':>13}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for side in (raw, through_bot):
        print(
            f"  {side.name:<22} {side.median('first_token_ms'):>14.1f} "
            f"{side.spread('first_token_ms'):>13} "
            f"{side.median('decode_tokens_per_s'):>12.1f} {side.spread('decode_tokens_per_s'):>13} "
            f"{side.median('overall_tokens_per_s'):>13.1f}"
        )
    print()
    # Each botkit run against the raw run of the same round: drift in the machine's load
    # (other processes on a shared host) hits both runs of a round alike and cancels out.
    pairs = list(zip(raw.runs, through_bot.runs, strict=True))
    ratios = [b.decode_tokens_per_s / r.decode_tokens_per_s for r, b in pairs]
    overall = [b.overall_tokens_per_s / r.overall_tokens_per_s for r, b in pairs]
    paired = [b.first_token_ms - r.first_token_ms for r, b in pairs]
    ratio, added = statistics.median(ratios), statistics.median(paired)
    print(
        f"  tokens/s botkit / raw (median of per-round ratios): {ratio:.3f} decoding "
        f"(rounds {min(ratios):.3f} to {max(ratios):.3f}), {statistics.median(overall):.3f} overall"
    )
    print(
        f"  added time to first token (median of per-round differences): {added:+.1f} ms "
        f"(rounds {min(paired):+.1f} to {max(paired):+.1f} ms)"
    )
    print("  same output and token counts both ways: yes")
    print()
    checks = [
        (
            f"tokens/s ratio >= {TARGET_TOKENS_PER_S_RATIO}",
            ratio >= TARGET_TOKENS_PER_S_RATIO,
            f"{ratio:.3f}",
        ),
        (
            f"added first-token time < {TARGET_ADDED_FIRST_TOKEN_MS:g} ms",
            added < TARGET_ADDED_FIRST_TOKEN_MS,
            f"{added:+.1f} ms",
        ),
    ]
    for label, passed, value in checks:
        print(f"  target: {label:<36} {'PASS' if passed else 'FAIL'} ({value})")
    return all(passed for _, passed, _ in checks)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=96, help="max_tokens per run (default 96)")
    parser.add_argument("--rounds", type=int, default=11, help="runs of each side (default 11)")
    parser.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) // 2),
        help="n_threads for both sides (default: half the CPUs, llama-cpp-python's own default)",
    )
    parser.add_argument("--n-ctx", type=int, default=2048, help="context window (default 2048)")
    parser.add_argument("--n-batch", type=int, default=512, help="n_batch (default 512)")
    parser.add_argument("--seed", type=int, default=1, help="sampling seed (default 1)")
    parser.add_argument(
        "--disable",
        action="append",
        default=[],
        metavar="PLUGIN",
        help="leave a plugin out of the botkit side, to see what it costs (repeatable)",
    )
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.tokens < 2:
        parser.error("--rounds must be at least 1 and --tokens at least 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    raw, through_bot, setup = asyncio.run(benchmark(args))
    met = print_report(args, raw, through_bot, setup)
    return 0 if met or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
