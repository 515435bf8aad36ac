"""Release benchmark: a platform rate limit on one reply must add nothing to another conversation's wait.

Run from the repository root::

    .venv/bin/python bench/bench_release.py            # about 25 s
    .venv/bin/python bench/bench_release.py --check    # exit 1 when the target is missed

Two conversations on one model slot (the scripted backend, ``concurrency`` 1,
each chunk taking ``--chunk-delay`` seconds, so a reply takes about
``--chunks`` x that). Conversation A asks first; the moment its final text goes
to the platform, conversation B asks. Each round runs twice: once with a
platform that delivers A's final text at once, once with one that makes it
wait ``--rate-limit`` seconds (an HTTP 429's Retry-After on the final edit).
B's latency, from its message to its delivered reply, must not grow by more
than ``--tolerance`` seconds, and B must never be told the model is busy.
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

for _name in [name for name in os.environ if name.startswith("BOTKIT_")]:
    del os.environ[_name]

from botkit.bot import Bot
from botkit.settings import settings_from_mapping
from botkit.types import Message, ReplyStatus, Responder, User

clock = time.perf_counter


@dataclass
class Delivery:
    """One conversation's message: when it arrived, when its reply was delivered, what the user saw."""

    arrived: float = 0.0
    delivered: float = 0.0
    final: str = ""
    status: ReplyStatus | None = None
    notices: list[str] = field(default_factory=list)

    @property
    def latency(self) -> float:
        return self.delivered - self.arrived


class PlatformResponder(Responder):
    """A platform whose final delivery takes ``finish_delay`` seconds (a rate limit waited out)."""

    def __init__(self, delivery: Delivery, finish_delay: float = 0.0) -> None:
        self.delivery = delivery
        self.finish_delay = finish_delay
        self.finishing = asyncio.Event()

    async def send(self, text: str) -> None:
        self.delivery.notices.append(text)

    async def update(self, text: str) -> None:
        pass

    async def finish(self, text: str, status: ReplyStatus) -> None:
        self.finishing.set()
        if self.finish_delay:
            await asyncio.sleep(self.finish_delay)
        self.delivery.delivered = clock()
        self.delivery.final, self.delivery.status = text, status


def message(user: str, text: str) -> Message:
    return Message(text=text, author=User(id=user, name=user), platform="bench", channel_id=f"{user}-channel")


async def handle(bot: Bot, delivery: Delivery, responder: PlatformResponder, msg: Message) -> None:
    delivery.arrived = clock()
    await bot.handle(msg, responder)


async def one_round(bot: Bot, rate_limit: float, index: int) -> tuple[Delivery, Delivery]:
    """A asks; when A's final text goes to the platform, B asks. Returns (A, B) once both are delivered."""
    first, second = Delivery(), Delivery()
    held = PlatformResponder(first, finish_delay=rate_limit)
    first_task = asyncio.ensure_future(handle(bot, first, held, message("a", f"question {index}")))
    await held.finishing.wait()
    await handle(bot, second, PlatformResponder(second), message("b", f"question {index}"))
    await first_task
    return first, second


async def benchmark(args: argparse.Namespace) -> dict[str, list[tuple[Delivery, Delivery]]]:
    data_dir = tempfile.TemporaryDirectory(prefix="botkit-bench-")
    config = {
        "backend": {
            "type": "scripted",
            "default_reply": " ".join(f"word{i}" for i in range(args.chunks)),
            "chunk_delay": args.chunk_delay,
        },
        "storage": {"data_dir": data_dir.name},
        "plugins": {"ratelimit": {"enabled": False}},
    }
    bot = Bot.load(settings_from_mapping(config))
    await bot.start()
    results: dict[str, list[tuple[Delivery, Delivery]]] = {"no rate limit": [], "rate limit": []}
    try:
        await one_round(bot, 0.0, -1)  # warm-up: database, plugins
        for index in range(args.rounds):
            results["no rate limit"].append(await one_round(bot, 0.0, index))
            results["rate limit"].append(await one_round(bot, args.rate_limit, index))
    finally:
        await bot.stop()
        data_dir.cleanup()
    return results


def report(args: argparse.Namespace, results: dict[str, list[tuple[Delivery, Delivery]]]) -> bool:
    print("botkit release benchmark: a platform rate limit on one reply, another conversation's latency")
    print(f"  python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print(
        f"  scripted backend, concurrency 1, {args.chunks} chunks x {args.chunk_delay:g} s; "
        f"rate limit {args.rate_limit:g} s on A's final delivery; {args.rounds} rounds, medians"
    )
    print()
    print(
        "| platform for A's final text | A: message to delivered, s | B: message to delivered, s | B told busy |"
    )
    print("|---|---:|---:|---:|")
    medians = {}
    for name, rounds in results.items():
        a = statistics.median(first.latency for first, _ in rounds)
        b = statistics.median(second.latency for _, second in rounds)
        told = sum(1 for _, second in rounds if second.notices)
        medians[name] = b
        label = "at once" if name == "no rate limit" else f"waits {args.rate_limit:g} s"
        print(f"| {label} | {a:.2f} | {b:.2f} | {told} of {len(rounds)} |")
    added = medians["rate limit"] - medians["no rate limit"]
    answered = all(
        delivery.status is ReplyStatus.COMPLETED
        for rounds in results.values()
        for pair in rounds
        for delivery in pair
    )
    never_busy = not any(second.notices for rounds in results.values() for _, second in rounds)
    print()
    print(f"  B's latency added by A's rate limit: {added * 1000:+.0f} ms")
    checks = [
        ("every reply delivered", answered),
        ("B never told the model is busy", never_busy),
        (f"B's latency grows by <= {args.tolerance:g} s", added <= args.tolerance),
    ]
    for label, passed in checks:
        print(f"  target: {label:<36} {'PASS' if passed else 'FAIL'}")
    return all(passed for _, passed in checks)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rate-limit", type=float, default=6.0, help="seconds A's final delivery waits (default 6)"
    )
    parser.add_argument("--chunks", type=int, default=20, help="chunks per reply (default 20)")
    parser.add_argument("--chunk-delay", type=float, default=0.02, help="seconds per chunk (default 0.02)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each kind (default 3)")
    parser.add_argument("--tolerance", type=float, default=0.5, help="most seconds B may lose (default 0.5)")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.chunks < 1 or args.rate_limit < 0 or args.chunk_delay < 0:
        parser.error("--rounds and --chunks must be at least 1; --rate-limit and --chunk-delay not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    met = report(args, asyncio.run(benchmark(args)))
    return 0 if met or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
