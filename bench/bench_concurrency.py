"""Concurrency benchmark: 20 conversations at once against one model, compared with the same 20 in series.

Run from the repository root::

    .venv/bin/python bench/bench_concurrency.py                     # llama.cpp in-process, ~1 min
    .venv/bin/python bench/bench_concurrency.py --backend openai    # through python -m llama_cpp.server
    .venv/bin/python bench/bench_concurrency.py --check             # exit 1 when a target is missed

Each of the 20 conversations is a different user in a different channel asking a
different question; sampling is greedy, so every reply must be the same in
both runs. The serial run answers them one after another; the concurrent run
hands all 20 to ``Bot.handle`` at once, in order, the way a busy Slack or
Discord adapter would. Targets (issue 3): every conversation answered, the model
taken in arrival order, and total throughput (completion tokens per second of
wall time) within 5% of the serial run.

``--backend openai`` starts llama-cpp-python's OpenAI-compatible server on the
same embedded GGUF and points botkit's ``openai`` backend at it, with its
default ``concurrency`` of 4 (requests in flight at once), or ``--concurrency``.
With more than one request in flight, which of them the server serves first is
the server's choice, not botkit's: llama-cpp-python's server takes them in no
set order, so only ``--concurrency 1`` can promise arrival order there.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

for _name in [name for name in os.environ if name.startswith("BOTKIT_")]:
    del os.environ[_name]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from botkit import hookimpl
from botkit.backends.llamacpp import embedded_model_path
from botkit.bot import Bot
from botkit.settings import settings_from_mapping
from botkit.types import Message, Reply, ReplyStatus, Responder, User

TARGET_THROUGHPUT_RATIO = 0.95
clock = time.perf_counter


@dataclass
class Conversation:
    """One user's request: when it arrived, when its reply started and ended, and what it said."""

    index: int
    arrived: float = 0.0
    first_update: float | None = None
    ended: float = 0.0
    text: str = ""
    status: ReplyStatus | None = None
    notices: list[str] = field(default_factory=list)


class TimingResponder(Responder):
    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation

    async def send(self, text: str) -> None:
        self.conversation.notices.append(text)  # "The model is busy; N requests ahead of you."

    async def update(self, text: str) -> None:
        if self.conversation.first_update is None:
            self.conversation.first_update = clock()

    async def finish(self, text: str, status: ReplyStatus) -> None:
        self.conversation.ended = clock()
        self.conversation.text, self.conversation.status = text, status


class CountTokens:
    def __init__(self) -> None:
        self.tokens = 0

    @hookimpl
    def botkit_after_reply(self, reply: Reply) -> None:
        self.tokens += reply.completion_tokens


def message(index: int, run: str) -> Message:
    return Message(
        text=f"In two sentences, tell me something interesting about the number {index + 3}.",
        author=User(id=f"user{index}", name=f"user{index}"),
        platform="bench",
        channel_id=f"{run}-channel-{index}",
    )


async def answer(bot: Bot, conversation: Conversation, run: str) -> None:
    conversation.arrived = clock()
    await bot.handle(message(conversation.index, run), TimingResponder(conversation))


async def measure(bot: Bot, counter: CountTokens, count: int, concurrent: bool) -> tuple[list[Conversation], float, int]:
    run = "concurrent" if concurrent else "serial"
    conversations = [Conversation(i) for i in range(count)]
    counter.tokens = 0
    started = clock()
    if concurrent:
        tasks = []
        for conversation in conversations:
            tasks.append(asyncio.ensure_future(answer(bot, conversation, run)))
            await asyncio.sleep(0)  # each request reaches the bot before the next one arrives
        await asyncio.gather(*tasks)
    else:
        for conversation in conversations:
            await answer(bot, conversation, run)
    return conversations, clock() - started, counter.tokens


def backend_config(args: argparse.Namespace, base_url: str | None) -> dict[str, object]:
    common = {"temperature": 0, "seed": args.seed, "max_tokens": args.tokens, "queue_limit": args.conversations}
    if base_url is None:
        return {"type": "llamacpp", "n_ctx": 2048, "n_threads": args.threads, **common}
    config = {"type": "openai", "base_url": base_url, "model": "smollm2", "context_window": 2048, **common}
    if args.concurrency is not None:
        config["concurrency"] = args.concurrency
    return config


async def benchmark(args: argparse.Namespace, base_url: str | None) -> dict[str, object]:
    counter = CountTokens()
    data_dir = tempfile.TemporaryDirectory(prefix="botkit-bench-")
    config = {
        "backend": backend_config(args, base_url),
        "storage": {"data_dir": data_dir.name},
        # 20 users at once is the point here, not something to limit.
        "plugins": {"ratelimit": {"enabled": False}},
    }
    bot = Bot.load(settings_from_mapping(config), {"count": counter})
    await bot.start()
    try:
        await answer(bot, Conversation(0), "warm-up")
        serial, serial_s, serial_tokens = await measure(bot, counter, args.conversations, concurrent=False)
        together, together_s, together_tokens = await measure(bot, counter, args.conversations, concurrent=True)
        concurrency = bot.queue.concurrency
    finally:
        await bot.stop()
        data_dir.cleanup()
    return {
        "serial": (serial, serial_s, serial_tokens),
        "concurrent": (together, together_s, together_tokens),
        "concurrency": concurrency,
    }


def report(args: argparse.Namespace, results: dict[str, object]) -> bool:
    serial, serial_s, serial_tokens = results["serial"]  # type: ignore[misc]
    together, together_s, together_tokens = results["concurrent"]  # type: ignore[misc]
    answered = sum(1 for c in together if c.status is not None and c.status.in_history and c.text.strip())
    same = sum(1 for a, b in zip(serial, together, strict=True) if a.text == b.text)
    by_start = sorted(together, key=lambda c: c.first_update or float("inf"))
    in_order = [c.index for c in by_start] == list(range(len(together)))
    serial_rate, together_rate = serial_tokens / serial_s, together_tokens / together_s
    ratio = together_rate / serial_rate
    waits = sorted((c.first_update or c.ended) - c.arrived for c in together)
    told = sum(1 for c in together if c.notices)
    print(f"botkit concurrency benchmark: backend {args.backend}")
    print(f"  python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print(
        f"  model {embedded_model_path().name}; greedy, max_tokens {args.tokens}; "
        f"{args.conversations} conversations; backend concurrency {results['concurrency']}"
    )
    print()
    print(f"  serial:     {serial_tokens} tokens in {serial_s:.2f} s = {serial_rate:.1f} tokens/s")
    print(f"  concurrent: {together_tokens} tokens in {together_s:.2f} s = {together_rate:.1f} tokens/s")
    print(f"  throughput concurrent / serial: {ratio:.3f}")
    print(f"  answered: {answered} of {len(together)}; same reply as in the serial run: {same} of {len(together)}")
    print(f"  replies started in arrival order: {'yes' if in_order else 'no: ' + str([c.index for c in by_start])}")
    print(
        f"  wait from arrival to first text: min {waits[0]:.2f} s, median {waits[len(waits) // 2]:.2f} s, "
        f"max {waits[-1]:.2f} s; {told} were told their place in line"
    )
    print()
    checks = [
        ("every conversation answered", answered == len(together), f"{answered}/{len(together)}"),
        ("model taken in arrival order", in_order, "yes" if in_order else "no"),
        (
            f"throughput within {100 - TARGET_THROUGHPUT_RATIO * 100:.0f}% of serial",
            ratio >= TARGET_THROUGHPUT_RATIO,
            f"{ratio:.3f}",
        ),
    ]
    for label, passed, value in checks:
        print(f"  target: {label:<34} {'PASS' if passed else 'FAIL'} ({value})")
    return all(passed for _, passed, _ in checks)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["llamacpp", "openai"], default="llamacpp")
    parser.add_argument("--conversations", type=int, default=20, help="conversations at once (default 20)")
    parser.add_argument("--tokens", type=int, default=48, help="max_tokens per reply (default 48)")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="openai backend: requests in flight at once (default: the backend's own, 4)",
    )
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.conversations < 2 or args.tokens < 1:
        parser.error("--conversations must be at least 2 and --tokens at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.backend == "llamacpp":
        results = asyncio.run(benchmark(args, None))
    else:
        from openai_server import LlamaCppServer

        with tempfile.TemporaryDirectory(prefix="botkit-bench-server-") as folder:
            server = LlamaCppServer(embedded_model_path(), Path(folder) / "server.log")
            server.start()
            try:
                results = asyncio.run(benchmark(args, server.base_url))
            finally:
                server.stop()
    met = report(args, results)
    return 0 if met or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
