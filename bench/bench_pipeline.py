"""Pipeline overhead benchmark: the full botkit message path against the same backend calls made directly.

Run from the repository root::

    .venv/bin/python bench/bench_pipeline.py            # about 30 s on one core
    .venv/bin/python bench/bench_pipeline.py --check    # exit 1 when a target is missed
    .venv/bin/python bench/bench_pipeline.py --metrics  # [metrics] and JSON logs on against off, same run

Both sides use the scripted backend with the same fixed multi-chunk reply and
send it the same prompt (system prompt, the conversation's history as memory
puts it in, the new message), so what the difference measures is botkit
itself: gates, commands, memory (SQLite reads and writes), token budget,
generation queue, output filters, delivery and after-hooks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# BOTKIT_* variables (BOTKIT_LOAD_PLUGINS, BOTKIT_BOT__..., BOTKIT_STORAGE__URL) would
# change what is measured; drop them before botkit reads the environment.
for _name in [name for name in os.environ if name.startswith("BOTKIT_")]:
    del os.environ[_name]

from botkit.backends.scripted import ScriptedBackend, ScriptedSettings  # noqa: E402
from botkit.bot import Bot  # noqa: E402
from botkit.logs import configure_logging  # noqa: E402
from botkit.settings import LoggingSettings, settings_from_mapping  # noqa: E402
from botkit.types import Message, Prompt, ReplyStatus, Responder, Role, Turn, User  # noqa: E402

TARGET_MESSAGES_PER_S = 2000.0
TARGET_P99_ADDED_MS = 5.0
TARGET_METRICS_COST = 0.03  # [metrics] on may cost at most this share of messages/s
BLOCK = 50  # messages each bot answers in turn within a round of the --metrics comparison


class FinalTextResponder(Responder):
    """Keeps only what a benchmark needs: the final text and status."""

    __slots__ = ("final", "status")

    def __init__(self) -> None:
        self.final: str | None = None
        self.status: ReplyStatus | None = None

    async def send(self, text: str) -> None:
        self.final = text

    async def update(self, text: str) -> None:
        pass

    async def finish(self, text: str, status: ReplyStatus) -> None:
        self.final, self.status = text, status


@dataclass
class Result:
    """One run of a case: wall time for all messages and, when sequential, each message's time."""

    messages: int
    seconds: float
    per_message_s: list[float]
    backlog: int = 0

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


@dataclass
class Case:
    """One case measured over several rounds."""

    name: str
    rounds: list[Result] = field(default_factory=list)

    @property
    def rates(self) -> list[float]:
        return sorted(result.rate for result in self.rounds)

    @property
    def rate(self) -> float:
        """The median round's rate: one disturbed round on a shared machine does not move it."""
        return statistics.median(self.rates)

    @property
    def per_message_s(self) -> list[float]:
        return sorted(t for result in self.rounds for t in result.per_message_s)


@dataclass
class Report:
    cases: list[Case]
    added_ms: list[float]  # sorted
    plugins: list[str]
    history_turns: int


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def reply_words(chunks: int) -> str:
    """A reply that the scripted backend streams as exactly ``chunks`` chunks (one per word)."""
    return " ".join(f"word{i}" for i in range(chunks))


def make_messages(count: int, channels: int) -> list[Message]:
    """Fresh messages (new ids: memory stores each one) spread over ``channels`` channels."""
    author = User(id="bench", name="bench")
    return [
        Message(
            text=f"Question {i}: what should I read to learn about asyncio?",
            author=author,
            platform="bench",
            channel_id=f"channel-{i % channels}",
        )
        for i in range(count)
    ]


def pin_to_cpu(cpu: int) -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (os.sched_setaffinity is not available on this platform)"
    allowed = os.sched_getaffinity(0)
    if cpu not in allowed:
        raise SystemExit(f"--cpu {cpu}: this process may only run on CPUs {sorted(allowed)}")
    # Set before any thread starts, so that aiosqlite's threads run on the same core.
    os.sched_setaffinity(0, {cpu})
    return f"pinned to CPU {cpu} with os.sched_setaffinity(0, {{{cpu}}})"


# --- the two ways of answering one message ---------------------------------------------------
# bench_memory.py imports make_messages, percentile, pipeline_answer, reply_words and
# run_concurrent: keep their signatures.

Answer = Callable[[Message], Awaitable[str]]
Settle = Callable[[], Awaitable[int]]


def direct_answer(backend: ScriptedBackend, system: list[str], history: list[Turn]) -> Answer:
    """The baseline: the backend calls botkit makes for one message, without botkit.

    ``system[0]`` and ``history`` are filled in once botkit's conversations are warm,
    so that the prompt is the one botkit sends (same turns, same rendered length).
    """
    params = backend.settings.sampling()

    async def answer(message: Message) -> str:
        prompt = Prompt(system=system[0], turns=[*history, Turn(Role.USER, message.text)])
        await backend.count_tokens(prompt)
        chunks = [chunk.text async for chunk in backend.stream(prompt, params, threading.Event())]
        return "".join(chunks)

    return answer


def pipeline_answer(bot: Bot) -> Answer:
    """botkit: ``bot.handle`` with a responder that keeps the final text."""

    async def answer(message: Message) -> str:
        responder = FinalTextResponder()
        await bot.handle(message, responder)
        assert responder.status is ReplyStatus.COMPLETED, (responder.status, responder.final)
        return responder.final or ""

    return answer


def memory_settle(bot: Bot) -> Settle:
    """Waits until memory has stored every exchange; returns how many were still unwritten.

    A run is done when its conversations are stored, not when the last reply went
    out: a writer that falls behind would otherwise look like free throughput.
    """

    async def settle() -> int:
        if "memory" not in bot.host.pm_names():
            return 0
        from botkit.plugins.memory import memory

        store = memory(bot)
        backlog = len(store.pending)
        assert await store.flush(120.0), "memory did not finish writing within 120 s"
        assert not store.outage and store.lost == 0, "memory lost records or the database"
        return backlog

    return settle


# --- the measurements ------------------------------------------------------------------------


async def run_sequential(
    name: str, answer: Answer, messages: list[Message], expected: str, settle: Settle | None = None
) -> Result:
    """One message after the other; times each. ``settle`` ends the run, inside its time."""
    times: list[float] = []
    clock = time.perf_counter
    gc.collect()
    started = clock()
    for message in messages:
        # One loop turn between messages, as when each arrives from an adapter's socket.
        # Without it a backend that never suspends would keep the loop from running, and
        # the cancelled timers of asyncio.timeout() would pile up in its heap.
        await asyncio.sleep(0)
        before = clock()
        text = await answer(message)
        times.append(clock() - before)
        if text != expected:
            raise AssertionError(f"{name}: wrong reply {text!r}, expected {expected!r}")
    backlog = await settle() if settle is not None else 0
    return Result(len(messages), clock() - started, times, backlog)


async def run_concurrent(
    name: str,
    answer: Answer,
    messages: list[Message],
    conversations: int,
    expected: str,
    settle: Settle | None = None,
) -> Result:
    """``conversations`` tasks at once, each sending its own channel's messages in order.

    ``settle`` ends the run, inside its time.
    """
    by_channel: dict[str, list[Message]] = {}
    for message in messages:
        by_channel.setdefault(message.channel_id, []).append(message)
    assert len(by_channel) == conversations, "every conversation needs its own channel"
    replies: dict[str, str] = {}

    async def converse(own: list[Message]) -> None:
        for message in own:
            await asyncio.sleep(0)  # let the other conversations in, as real arrivals would
            replies[message.message_id] = await answer(message)

    gc.collect()
    started = time.perf_counter()
    await asyncio.gather(*(converse(own) for own in by_channel.values()))
    backlog = await settle() if settle is not None else 0
    seconds = time.perf_counter() - started
    missing = len(messages) - len(replies)
    wrong = sum(1 for text in replies.values() if text != expected)
    assert missing == 0 and wrong == 0, f"{name}: {missing} messages unanswered, {wrong} wrong"
    return Result(len(messages), seconds, [], backlog)


async def benchmark(args: argparse.Namespace, data_dir: Path) -> Report:
    reply = reply_words(args.chunks)
    backend_config = {"type": "scripted", "default_reply": reply, "chunk_delay": args.chunk_delay}
    settings = settings_from_mapping(
        {
            "backend": backend_config,
            "storage": {"data_dir": str(data_dir), "sqlite_synchronous": args.sqlite_synchronous},
            "plugins": {name: {"enabled": False} for name in args.disable},
        }
    )
    bot = Bot.load(settings)
    assert isinstance(bot.backend, ScriptedBackend)
    plugins = bot.host.pm_names()
    await bot.start()
    try:
        baseline_backend = ScriptedBackend(ScriptedSettings.model_validate(backend_config))
        await baseline_backend.start()
        # The scripted backend records every request for tests; over many messages that
        # record would make each full garbage collection slower, on both sides. Keep the last.
        for backend in (bot.backend, baseline_backend):
            backend.requests = deque(maxlen=1)  # type: ignore[assignment]
        system, history = [settings.bot.system_prompt], []
        direct = direct_answer(baseline_backend, system, history)
        through_bot = pipeline_answer(bot)
        stored = memory_settle(bot)
        conversations = args.conversations

        # Warm up botkit until every conversation's history is as long as memory lets it
        # be; from then on botkit's prompts keep one size, and the baseline sends the same.
        for message in make_messages(args.warmup, conversations):
            assert await through_bot(message) == reply
        await stored()
        warm = bot.backend.requests[-1].prompt
        system[0], history[:] = warm.system, warm.turns[:-1]
        for message in make_messages(args.warmup, conversations):
            assert await direct(message) == reply

        def check_steady(case: Case) -> None:
            turns = len(bot.backend.requests[-1].prompt.turns)
            assert turns == len(history) + 1, (
                f"{case.name}: botkit sent {turns} turns, the baseline {len(history) + 1}; "
                "raise --warmup so that conversations reach their full history first"
            )

        cases = [
            Case("baseline: backend calls"),
            Case("botkit: bot.handle"),
            Case(f"baseline: {conversations} conversations"),
            Case(f"botkit: {conversations} conversations"),
        ]
        added: list[float] = []
        for round_number in range(args.rounds):
            # Alternate which side goes first, so that drift in the machine's load and the
            # database's growth do not always favour the same side.
            one_by_one = [(cases[0], direct, None), (cases[1], through_bot, stored)]
            together = [(cases[2], direct, None), (cases[3], through_bot, stored)]
            if round_number % 2:
                one_by_one.reverse()
                together.reverse()
            for case, answer, settle in one_by_one:
                messages = make_messages(args.messages, conversations)
                case.rounds.append(await run_sequential(case.name, answer, messages, reply, settle))
            check_steady(cases[1])
            for case, answer, settle in together:
                messages = make_messages(args.messages, conversations)
                case.rounds.append(
                    await run_concurrent(case.name, answer, messages, conversations, reply, settle)
                )
            check_steady(cases[3])
            # Added latency against the baseline of the same round, measured next to it.
            baseline_median = statistics.median(cases[0].rounds[-1].per_message_s)
            added += [(t - baseline_median) * 1000 for t in cases[1].rounds[-1].per_message_s]
        assert len(bot.pipeline.lanes) == 0, "conversation lanes left behind"
        assert bot.queue.running == 0 and bot.queue.waiting == 0, "generation queue not empty"
    finally:
        await bot.stop()
    return Report(cases, sorted(added), plugins, len(history))


async def metrics_cost(args: argparse.Namespace, data_dir: Path) -> list[Case]:
    """Two bots in one run, ``[metrics]`` off and on, answering the same messages in alternating rounds.

    The bot with metrics on is scraped (``exposition()``, what ``/metrics`` answers) once per
    round, inside its time: a scrape every few seconds is what a Prometheus server does.
    """
    reply = reply_words(args.chunks)
    backend_config = {"type": "scripted", "default_reply": reply, "chunk_delay": args.chunk_delay}
    bots: list[tuple[Case, Bot, Answer, Settle]] = []
    log_file = (data_dir / "bench.log").open("w", encoding="utf-8")
    for name, enabled in (("metrics off", False), ("metrics on", True)):
        folder = data_dir / name.replace(" ", "-")
        settings = settings_from_mapping(
            {
                "backend": backend_config,
                "storage": {"data_dir": str(folder), "sqlite_synchronous": args.sqlite_synchronous},
                "plugins": {plugin: {"enabled": False} for plugin in args.disable},
                "metrics": {"enabled": enabled},
            }
        )
        bot = Bot.load(settings)
        await bot.start()
        bot.backend.requests = deque(maxlen=1)  # type: ignore[attr-defined]
        label = "metrics on, JSON logs at INFO" if enabled else "metrics off, logs at WARNING"
        bots.append((Case(f"botkit, {label}"), bot, pipeline_answer(bot), memory_settle(bot)))
    # One log set-up for the whole run, as a service has one: JSON lines at INFO (the `answered`
    # line of every message, its fields), written to a file as a service's stderr is (journald,
    # a container runtime). The bot with metrics off runs its blocks with the root logger at
    # WARNING, botkit's default level (no line per message). The handler and its writer thread
    # live through the run, as in a service.
    try:
        with contextlib.redirect_stderr(log_file):
            handler = configure_logging(LoggingSettings(level="INFO", format="json"), force=True)
            assert handler is not None
            await alternate_rounds(args, bots, handler, reply)
            configure_logging(LoggingSettings(), force=True)  # writes what is queued
    finally:
        configure_logging(LoggingSettings(), force=True)
        for _, bot, _, _ in bots:
            await bot.stop()
        log_file.close()
    lines = (data_dir / "bench.log").read_text(encoding="utf-8").splitlines()
    answered = sum('"event": "answered' in line for line in lines)
    expected = args.rounds * args.messages
    assert answered >= expected, f"the JSON log holds {answered} answered lines, expected {expected}"
    print(f"  JSON log: {len(lines) / expected:.2f} lines per message measured ({len(lines):,} lines)")
    return [case for case, _, _, _ in bots]


async def alternate_rounds(
    args: argparse.Namespace,
    bots: list[tuple[Case, Bot, Answer, Settle]],
    handler: logging.Handler,
    reply: str,
) -> None:
    """The warm-up, then ``args.rounds`` rounds of the two bots taking turns; each round's time goes to its case."""

    def log_level_of(bot: Bot) -> None:
        logging.getLogger().setLevel(logging.INFO if bot.metrics.enabled else logging.WARNING)

    for _, bot, answer, settle in bots:
        log_level_of(bot)
        for message in make_messages(args.warmup, args.conversations):
            assert await answer(message) == reply
        await settle()
    for _ in range(args.rounds):
        # Blocks of BLOCK messages, the bots alternating which goes first: a drift of the
        # machine's speed within a round hits both bots alike. Each block is done, inside its
        # bot's time, when its exchanges are stored and its log lines written: memory's writer
        # waits up to write_delay for a fuller batch, and a log line is formatted after it was
        # logged, so either would otherwise land in the other bot's next block, or in no time.
        messages = make_messages(args.messages, args.conversations)
        spent = {id(bot): Result(0, 0.0, []) for _, bot, _, _ in bots}
        for number, start in enumerate(range(0, len(messages), BLOCK)):
            block = messages[start : start + BLOCK]
            for case, bot, answer, settle in bots if number % 2 == 0 else bots[::-1]:
                log_level_of(bot)
                result = await run_sequential(case.name, answer, block, reply, settle)
                started = time.perf_counter()
                handler.flush()
                total = spent[id(bot)]
                total.messages += result.messages
                total.seconds += result.seconds + time.perf_counter() - started
                total.per_message_s += result.per_message_s
                total.backlog = max(total.backlog, result.backlog)
        for case, bot, _, _ in bots:
            if bot.metrics.enabled:
                started = time.perf_counter()
                bot.metrics.exposition()  # a scrape per round, as Prometheus does every few seconds
                spent[id(bot)].seconds += time.perf_counter() - started
            case.rounds.append(spent[id(bot)])


def print_metrics_report(args: argparse.Namespace, pinned: str, cases: list[Case]) -> bool:
    print("botkit pipeline benchmark: [metrics] and JSON logs at INFO on against off, in the same run")
    print(f"  python {platform.python_version()} on {platform.machine()}, {pinned}")
    print(f"  {args.rounds} rounds x {args.messages:,} messages per bot, one at a time, alternating")
    print()
    for case in cases:
        spread = f"{case.rates[0]:,.0f}-{case.rates[-1]:,.0f}"
        print(f"  {case.name:<40} {case.rate:>10,.0f} messages/s (rounds {spread})")
    # Each round ran both bots back to back (in alternating order): the ratio of a round's
    # pair is the least disturbed by the machine's drift; the median of them is the cost.
    ratios = sorted(on.rate / off.rate for off, on in zip(cases[0].rounds, cases[1].rounds, strict=True))
    cost = 1 - statistics.median(ratios)
    passed = cost <= TARGET_METRICS_COST
    print(
        f"  on / off per round: {', '.join(f'{r:.3f}' for r in ratios)} (medians' ratio {cases[1].rate / cases[0].rate:.3f})"
    )
    print()
    print(
        f"  target: metrics and logs cost <= {TARGET_METRICS_COST:.0%} of messages/s"
        f"{'':<14} {'PASS' if passed else 'FAIL'} ({cost:+.1%})"
    )
    return passed


def print_report(args: argparse.Namespace, pinned: str, report: Report) -> bool:
    cases, added = report.cases, report.added_ms
    print("botkit pipeline benchmark")
    print(f"  python {platform.python_version()} on {platform.machine()}, {pinned}")
    print(
        f"  {args.rounds} rounds x {args.messages:,} messages per case "
        f"(after {args.warmup:,} warm-up messages each way)"
    )
    print(
        f"  scripted backend, reply of {args.chunks} chunks; prompt: system + "
        f"{report.history_turns} history turns + the message, the same on both sides"
    )
    print(f"  plugins loaded: {', '.join(sorted(report.plugins))}")
    if args.disable:
        print(f"  plugins disabled (--disable): {', '.join(args.disable)}; not the default set")
    print("  storage: SQLite in a temporary folder; botkit's time includes storing every exchange")
    print()
    header = f"  {'case':<31} {'messages/s':>10} {'rounds min-max':>16} {'p50 ms':>7} {'p99 ms':>7}"
    print(header)
    print("  " + "-" * (len(header) - 2))
    for case in cases:
        times = case.per_message_s
        if times:
            p50 = f"{percentile(times, 0.50) * 1000:7.3f}"
            p99 = f"{percentile(times, 0.99) * 1000:7.3f}"
        else:
            p50 = p99 = f"{'-':>7}"
        spread = f"{case.rates[0]:,.0f}-{case.rates[-1]:,.0f}"
        print(f"  {case.name:<31} {case.rate:>10,.0f} {spread:>16} {p50} {p99}")
    print()
    ratio = cases[1].rate / cases[0].rate
    concurrent_ratio = cases[3].rate / cases[2].rate
    p50, p99 = percentile(added, 0.50), percentile(added, 0.99)
    print(
        f"  throughput botkit / baseline: {ratio:.3f} one at a time, "
        f"{concurrent_ratio:.3f} with {args.conversations} conversations at once"
    )
    print(
        f"  added latency per message (botkit time - baseline median): "
        f"p50 {p50:.3f} ms, p99 {p99:.3f} ms, max {added[-1]:.3f} ms"
    )
    backlog = max(result.backlog for case in (cases[1], cases[3]) for result in case.rounds)
    print(f"  most exchanges still unwritten when a run's last reply went out: {backlog:,}")
    answered = 2 * args.rounds * args.messages
    print(f"  every message got the expected reply: yes ({answered:,} through botkit)")
    print()
    rate = cases[1].rate
    checks = [
        (
            f"botkit >= {TARGET_MESSAGES_PER_S:,.0f} messages/s on one core",
            rate >= TARGET_MESSAGES_PER_S,
            f"{rate:,.0f}",
        ),
        (
            f"p99 added latency < {TARGET_P99_ADDED_MS:g} ms",
            p99 < TARGET_P99_ADDED_MS,
            f"{p99:.3f} ms",
        ),
    ]
    for label, passed, value in checks:
        print(f"  target: {label:<44} {'PASS' if passed else 'FAIL'} ({value})")
    return all(passed for _, passed, _ in checks)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--messages", type=int, default=2_000, help="messages per case and round (default 2000)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every case (default 3)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=2_000,
        help="unmeasured messages each way first; enough to fill every history (default 2000)",
    )
    parser.add_argument("--chunks", type=int, default=8, help="chunks in the scripted reply (default 8)")
    parser.add_argument(
        "--conversations",
        type=int,
        default=50,
        help="concurrent conversations, one channel each (default 50)",
    )
    parser.add_argument(
        "--chunk-delay",
        type=float,
        default=0.0,
        help="seconds the scripted backend sleeps before each chunk (default 0: it never suspends)",
    )
    parser.add_argument(
        "--disable",
        action="append",
        default=[],
        metavar="PLUGIN",
        help="leave a default plugin out, to see what it costs (repeatable)",
    )
    parser.add_argument(
        "--sqlite-synchronous",
        choices=["normal", "full"],
        default="normal",
        help="[storage] sqlite_synchronous: 'full' fsyncs every commit and journal append (default normal)",
    )
    parser.add_argument("--cpu", type=int, default=0, help="CPU to pin the process to (default 0)")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a target is missed")
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="instead: the same messages through a bot with [metrics] on and one with it off",
    )
    args = parser.parse_args(argv)
    if args.conversations < 1 or args.messages < args.conversations:
        parser.error("--conversations must be at least 1 and --messages at least --conversations")
    if args.warmup < args.conversations:
        parser.error("--warmup must be at least --conversations")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.chunks < 1:
        parser.error("--chunks must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    pinned = pin_to_cpu(args.cpu)
    with tempfile.TemporaryDirectory(prefix="botkit-bench-") as data_dir:
        if args.metrics:
            cases = asyncio.run(metrics_cost(args, Path(data_dir)))
        else:
            report = asyncio.run(benchmark(args, Path(data_dir)))
    met = print_metrics_report(args, pinned, cases) if args.metrics else print_report(args, pinned, report)
    return 0 if met or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
