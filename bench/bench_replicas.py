"""Replicas benchmark: aggregate messages/s and latency of 1 and 2 clustered replicas on one PostgreSQL and Redis.

Run from the repository root::

    .venv/bin/python bench/bench_replicas.py            # about 2 minutes on two cores
    .venv/bin/python bench/bench_replicas.py --check    # exit 1 when a target is missed

Each replica is a process of its own (this script with ``--child``): a ``Bot``
with every default plugin and the scripted backend, ``[storage] url`` on a
throwaway PostgreSQL and, when clustered, ``[cluster] enabled`` with
``redis_url`` on a throwaway redis-server (``tests/servers.py``). Every replica
sends its share of the messages through ``bot.handle`` to conversations drawn at
random from one shared set, a few in flight at once, so a conversation's
messages go from one replica to the other: each takes the conversation's lock
in Redis, reads its history from the database and flushes memory's writes
before the lock passes on (docs/architecture.md, "Several replicas").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# BOTKIT_* variables (BOTKIT_LOAD_PLUGINS, BOTKIT_STORAGE__URL, BOTKIT_CLUSTER__...) would change
# what is measured; drop them before botkit reads the environment (the children inherit this).
for _name in [name for name in os.environ if name.startswith("BOTKIT_")]:
    del os.environ[_name]

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # servers.py: the tests' throwaway PostgreSQL and Redis

from bench_pipeline import Case, FinalTextResponder, Result, percentile, reply_words  # noqa: E402

from botkit.types import Message, ReplyStatus, User  # noqa: E402

TARGET_SCALING = 0.9  # N replicas' messages/s at least this share of one replica's
REPORT = "bench-replicas:"  # prefix of the children's protocol lines on stdout
CHILD_TIMEOUT_S = 300.0
MAX_TURNS = 40  # memory's default max_turns: the history every prompt carries once warm


# --- a replica (the child process) ---------------------------------------------------------------


def say(kind: str, **fields: object) -> None:
    print(REPORT, json.dumps({"kind": kind, **fields}), flush=True)


async def replica(spec: dict) -> None:
    """Build the bot, warm up, wait for the start line on stdin, answer this replica's messages, report."""
    from botkit.bot import Bot
    from botkit.plugins.memory import memory
    from botkit.settings import settings_from_mapping

    reply = reply_words(spec["chunks"])
    config: dict = {
        "bot": {"control_socket": "off"},
        "backend": {"type": "scripted", "default_reply": reply},
        "storage": {"url": spec["db_url"], "data_dir": spec["data_dir"]},
    }
    if spec["clustered"]:
        config["cluster"] = {"enabled": True, "redis_url": spec["redis_url"]}
    bot = Bot.load(settings_from_mapping(config))
    await bot.start()
    try:
        # The scripted backend records every request for tests; keep the last (its prompt is checked).
        bot.backend.requests = deque(maxlen=1)  # type: ignore[attr-defined]
        rng = random.Random(spec["seed"])
        author = User(id="bench", name="bench")
        clock = time.monotonic  # CLOCK_MONOTONIC: the parent compares the replicas' times

        def message(number: int, channel: int) -> Message:
            text = f"Question {number} from replica {spec['index']}: what should I read about asyncio?"
            return Message(text=text, author=author, platform="bench", channel_id=f"channel-{channel}")

        async def answer(item: Message) -> None:
            responder = FinalTextResponder()
            await bot.handle(item, responder)
            if responder.status is not ReplyStatus.COMPLETED or responder.final != reply:
                raise AssertionError(f"wrong reply {responder.final!r} ({responder.status})")

        async def send(count: int, record: list | None) -> None:
            # Conversations at random from the shared set: every replica writes to every one.
            todo = deque(
                (n, n % spec["conversations"] if spec["fill"] else rng.randrange(spec["conversations"]))
                for n in range(count)
            )

            async def worker() -> None:
                while todo:
                    number, channel = todo.popleft()
                    await asyncio.sleep(0)  # one loop turn, as when a message arrives from a socket
                    started = clock()
                    await answer(message(number, channel))
                    if record is not None:
                        record.append((channel, started, clock()))

            await asyncio.gather(*(worker() for _ in range(spec["in_flight"])))

        await send(spec["warmup"], None)
        store = memory(bot)
        assert await store.flush(120.0), "memory did not finish writing its warm-up within 120 s"
        say("ready")
        if not spec["fill"]:
            if sys.stdin.readline().strip() != "go":
                return  # the parent went away: nothing to measure
            record: list[tuple[int, float, float]] = []
            cpu = os.times()
            started = clock()
            await send(spec["messages"], record)
            # Done when every exchange is stored, not when the last reply went out (bench_pipeline).
            assert await store.flush(120.0), "memory did not finish writing within 120 s"
            ended = clock()
            cpu_s = sum(os.times()[:2]) - sum(cpu[:2])
            assert not store.outage and store.lost == 0, "memory lost records or the database"
            say("done", started=started, ended=ended, cpu_s=cpu_s, messages=record)
        turns = len(bot.backend.requests[-1].prompt.turns)  # type: ignore[attr-defined]
        say("turns", turns=turns)
    finally:
        await bot.stop()


def child_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    if spec["cpu"] is not None:
        os.sched_setaffinity(0, {spec["cpu"]})  # before any thread starts
    asyncio.run(replica(spec))
    return 0


# --- the parent: servers, cases, rounds ----------------------------------------------------------


@dataclass
class ReplicaProcess:
    process: asyncio.subprocess.Process
    log: Path

    async def expect(self, kind: str) -> dict:
        """The next protocol line of ``kind``; other stdout lines (none expected) are skipped."""
        while True:
            line = await asyncio.wait_for(self.process.stdout.readline(), CHILD_TIMEOUT_S)  # type: ignore[union-attr]
            if not line:
                tail = self.log.read_text(encoding="utf-8", errors="replace")[-3000:]
                raise RuntimeError(f"a replica exited (status {await self.process.wait()}):\n{tail}")
            text = line.decode().strip()
            if text.startswith(REPORT):
                report = json.loads(text.removeprefix(REPORT))
                if report["kind"] != kind:
                    raise RuntimeError(f"a replica said {report['kind']!r}, expected {kind!r}")
                return report


def ticks(stat_line: str) -> list[int]:
    """utime, stime, cutime, cstime of a /proc/PID/stat line, in clock ticks."""
    fields = stat_line[stat_line.rindex(")") + 2 :].split()
    return [int(value) for value in fields[11:15]]


def process_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid``, its threads, and the children it has reaped."""
    return sum(ticks(Path(f"/proc/{pid}/stat").read_text())) / os.sysconf("SC_CLK_TCK")


def children_cpu_s(parent: int) -> float:
    """CPU seconds of the live children of ``parent`` (PostgreSQL's backends and helpers)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            line = stat.read_text()
            if int(line[line.rindex(")") + 2 :].split()[1]) == parent:
                total += sum(ticks(line)[:2])
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds every core of the machine spent busy (not idle, not waiting for I/O), all processes."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuSplit:
    """CPU seconds spent during one round's measured window."""

    replicas: float
    postgres: float
    redis: float
    machine: float  # every process on the machine, the other job's included


@dataclass
class RoundResult(Result):
    """One round of a case; ``per_message_s`` holds every message of every replica."""

    handed_over: int = 0  # messages whose conversation's previous message another replica answered
    cpu: CpuSplit = field(default_factory=lambda: CpuSplit(0.0, 0.0, 0.0, 0.0))


@dataclass
class ReplicaCase(Case):
    """A case: this many replica processes, clustered or not."""

    replicas: int = 1
    clustered: bool = True
    rounds: list[RoundResult] = field(default_factory=list)  # type: ignore[assignment]


class Cluster:
    """The servers and the replica processes; ``end_children`` and ``stop_servers`` end them, whatever happened."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.children: list[ReplicaProcess] = []
        self.pg_root: Path | None = None
        self.postgres = None
        self.redis = None
        self.db_url = ""
        self.spawned = 0

    def start_servers(self) -> None:
        from servers import start_postgres, start_redis

        # Not under the 0700 temporary folder: the server runs as the 'postgres' user, who must reach it.
        self.pg_root = Path(tempfile.mkdtemp(prefix="botkit-bench-pg-"))
        self.postgres = start_postgres(self.pg_root)
        self.db_url = self.postgres.create_database("bench")
        self.redis = start_redis(self.root)

    def stop_servers(self) -> None:
        from servers import remove_tree

        if self.redis is not None:
            with contextlib.suppress(Exception):
                self.redis.stop()
        if self.postgres is not None:
            self.postgres.stop()
        if self.pg_root is not None:
            remove_tree(self.pg_root)

    async def spawn(
        self, index: int, *, clustered: bool, messages: int, in_flight: int, fill: bool
    ) -> ReplicaProcess:
        self.spawned += 1
        folder = self.root / f"replica-{self.spawned}"
        folder.mkdir()
        cpus = self.args.cpus
        spec = {
            "index": index,
            "clustered": clustered,
            "db_url": self.db_url,
            "redis_url": self.redis.url,  # type: ignore[union-attr]
            "data_dir": str(folder / "data"),
            "chunks": self.args.chunks,
            "conversations": self.args.conversations,
            "warmup": self.args.conversations * (MAX_TURNS // 2 + 5) if fill else self.args.warmup,
            "messages": messages,
            "in_flight": in_flight,
            "seed": self.spawned,
            "cpu": cpus[index % len(cpus)] if cpus else None,
            "fill": fill,
        }
        log = folder / "stderr.log"
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(Path(__file__).resolve()),
                "--child",
                json.dumps(spec),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                limit=64 * 1024 * 1024,  # the report of every message's latency is one line
            )
        child = ReplicaProcess(process, log)
        self.children.append(child)
        return child

    async def end_children(self) -> None:
        for child in self.children:
            if child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.terminate()
        for child in self.children:
            try:
                await asyncio.wait_for(child.process.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                await child.process.wait()
        self.children.clear()

    async def fill(self) -> int:
        """Fill every conversation's history once, so that every case's prompts carry MAX_TURNS turns."""
        child = await self.spawn(0, clustered=True, messages=0, in_flight=self.args.in_flight, fill=True)
        await child.expect("ready")
        turns = (await child.expect("turns"))["turns"]
        assert await child.process.wait() == 0, "the replica filling the histories failed"
        self.children.clear()
        return turns

    async def measure(self, case: ReplicaCase) -> RoundResult:
        """One round of a case: start its replicas, warm them, release them at once, collect."""
        share = self.args.messages // case.replicas
        in_flight = self.args.in_flight // case.replicas
        children = [
            await self.spawn(i, clustered=case.clustered, messages=share, in_flight=in_flight, fill=False)
            for i in range(case.replicas)
        ]
        for child in children:
            await child.expect("ready")
        servers_before, machine_before = self.servers_cpu_s(), machine_busy_s()
        for child in children:  # the barrier: every replica is warm; start them together
            child.process.stdin.write(b"go\n")  # type: ignore[union-attr]
        await asyncio.gather(*(child.process.stdin.drain() for child in children))  # type: ignore[union-attr]
        reports = await asyncio.gather(*(child.expect("done") for child in children))
        servers_after, machine_after = self.servers_cpu_s(), machine_busy_s()
        cpu = CpuSplit(
            replicas=sum(r["cpu_s"] for r in reports),
            postgres=servers_after[0] - servers_before[0],
            redis=servers_after[1] - servers_before[1],
            machine=machine_after - machine_before,
        )
        for child in children:
            turns = (await child.expect("turns"))["turns"]
            assert turns == MAX_TURNS + 1, (
                f"{case.name}: a prompt had {turns} turns, expected {MAX_TURNS + 1}"
            )
            assert await child.process.wait() == 0, f"{case.name}: a replica failed"
        self.children.clear()
        answered = [
            (channel, ended, index)
            for index, report in enumerate(reports)
            for channel, _, ended in report["messages"]
        ]
        assert len(answered) == share * case.replicas, f"{case.name}: {len(answered)} answers"
        previous: dict[int, int] = {}
        handed_over = 0
        for channel, _, index in sorted(answered, key=lambda item: item[1]):
            handed_over += previous.get(channel, index) != index
            previous[channel] = index
        return RoundResult(
            messages=len(answered),
            seconds=max(r["ended"] for r in reports) - min(r["started"] for r in reports),
            per_message_s=[ended - started for r in reports for _, started, ended in r["messages"]],
            handed_over=handed_over,
            cpu=cpu,
        )

    def servers_cpu_s(self) -> tuple[float, float]:
        """CPU seconds PostgreSQL (the postmaster, its reaped and live children) and Redis used so far."""
        assert self.pg_root is not None and self.redis is not None, "servers not started"
        postmaster = int((self.pg_root / "data" / "postmaster.pid").read_text().split()[0])
        postgres = process_cpu_s(postmaster) + children_cpu_s(postmaster)
        return postgres, process_cpu_s(self.redis.process.pid)  # type: ignore[union-attr]

    def stored_messages(self) -> int:
        return int(self.postgres.psql("SELECT count(*) FROM messages", "bench"))  # type: ignore[union-attr]


async def benchmark(args: argparse.Namespace, cluster: Cluster) -> tuple[list[ReplicaCase], int]:
    cases = [ReplicaCase("1 replica, clustered", replicas=1)]
    cases += [ReplicaCase(f"{n} replicas, clustered", replicas=n) for n in range(2, args.replicas + 1)]
    cases.append(ReplicaCase("1 replica, not clustered", replicas=1, clustered=False))
    try:
        turns = await cluster.fill()
        for round_number in range(args.rounds):
            # Alternate the order, so that drift in the machine's load and the database's growth
            # do not always favour the same case.
            for case in cases if round_number % 2 == 0 else cases[::-1]:
                before = cluster.stored_messages()
                result = await cluster.measure(case)
                stored = cluster.stored_messages() - before
                expected = 2 * (result.messages + args.warmup * case.replicas)  # questions and replies
                assert stored == expected, f"{case.name}: {stored} messages stored, expected {expected}"
                case.rounds.append(result)
    finally:
        await cluster.end_children()
    return cases, turns


def print_report(args: argparse.Namespace, cases: list[ReplicaCase], turns: int) -> bool:
    one = cases[0]
    cpus = ", ".join(map(str, args.cpus)) if args.cpus else "not pinned"
    print("botkit replicas benchmark: replica processes on one PostgreSQL and one Redis")
    print(f"  python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; {load()}")
    print(f"  replica k pinned to CPU {cpus} (k mod count); PostgreSQL and Redis not pinned")
    print(
        f"  {args.rounds} rounds x {args.messages:,} messages per case, split over its replicas; "
        f"{args.in_flight} in flight in all; {args.conversations} conversations drawn at random"
    )
    print(
        f"  scripted backend, reply of {args.chunks} chunks; every default plugin; each prompt carries "
        f"{turns - 1} history turns; each replica warmed with {args.warmup} messages before the start line"
    )
    print()
    header = (
        f"  {'case':<27} {'messages/s':>10} {'rounds min-max':>16} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'other replica':>13}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for case in cases:
        times = case.per_message_s
        p50, p99 = percentile(times, 0.50) * 1000, percentile(times, 0.99) * 1000
        spread = f"{case.rates[0]:,.0f}-{case.rates[-1]:,.0f}"
        handed = sum(r.handed_over for r in case.rounds) / sum(r.messages for r in case.rounds)
        print(f"  {case.name:<27} {case.rate:>10,.0f} {spread:>16} {p50:7.2f} {p99:7.2f} {handed:>13.0%}")
    print()
    print("  other replica: messages whose conversation's previous message another replica answered")
    print()
    print("  CPU ms per message, all rounds, during the measured time (2 cores = 2,000 ms per second):")
    header = f"  {'case':<27} {'replicas':>9} {'PostgreSQL':>10} {'Redis':>6} {'rest':>6} {'cores busy':>10}"
    print(header)
    print("  " + "-" * (len(header) - 2))
    for case in cases:
        messages = sum(r.messages for r in case.rounds)
        split = [sum(getattr(r.cpu, part) for r in case.rounds) for part in ("replicas", "postgres", "redis")]
        machine = sum(r.cpu.machine for r in case.rounds)
        rest = machine - sum(split)  # this script, the other jobs on the machine
        busy = machine / sum(r.seconds for r in case.rounds)
        per = [value * 1000 / messages for value in (*split, rest)]
        print(f"  {case.name:<27} {per[0]:>9.2f} {per[1]:>10.2f} {per[2]:>6.2f} {per[3]:>6.2f} {busy:>10.2f}")
    print()
    checks = []
    for case in [c for c in cases if c.replicas > 1]:
        ratios = sorted(mine.rate / base.rate for mine, base in zip(case.rounds, one.rounds, strict=True))
        added = sorted(
            (t - statistics.median(base.per_message_s)) * 1000
            for mine, base in zip(case.rounds, one.rounds, strict=True)
            for t in mine.per_message_s
        )
        print(
            f"  {case.name} / 1 replica: {case.rate / one.rate:.2f}x messages/s "
            f"(rounds {ratios[0]:.2f}-{ratios[-1]:.2f}); added latency against 1 replica's median: "
            f"p50 {percentile(added, 0.5):.2f} ms, p99 {percentile(added, 0.99):.2f} ms"
        )
        checks.append(
            (
                f"{case.replicas} replicas >= {TARGET_SCALING:g}x one replica's messages/s",
                case.rate / one.rate >= TARGET_SCALING,
                f"{case.rate / one.rate:.2f}x",
            )
        )
    alone = cases[-1]
    cost = statistics.median(one.per_message_s) - statistics.median(alone.per_message_s)
    print(
        f"  clustering itself (1 replica clustered / not clustered): {one.rate / alone.rate:.2f}x "
        f"messages/s, {cost * 1000:+.2f} ms per message at the median"
    )
    answered = sum(r.messages for c in cases for r in c.rounds)
    print(f"  every message got the expected reply and is stored: yes ({answered:,} through bot.handle)")
    print()
    for label, passed, value in checks:
        print(f"  target: {label:<44} {'PASS' if passed else 'FAIL'} ({value})")
    return all(passed for _, passed, _ in checks)


def load() -> str:
    with contextlib.suppress(OSError):
        return "load average " + ", ".join(f"{value:.2f}" for value in os.getloadavg()) + " at the end"
    return "load average unknown"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--messages",
        type=int,
        default=2_000,
        help="messages per case and round, all replicas together (default 2000)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every case (default 3)")
    parser.add_argument("--replicas", type=int, default=2, help="the most replicas measured (default 2)")
    parser.add_argument(
        "--conversations", type=int, default=20, help="conversations the messages go to (default 20)"
    )
    parser.add_argument(
        "--in-flight",
        type=int,
        default=8,
        help="messages in flight at once, all replicas together, split evenly (default 8)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=200,
        help="unmeasured messages per replica before the start (default 200)",
    )
    parser.add_argument("--chunks", type=int, default=8, help="chunks in the scripted reply (default 8)")
    parser.add_argument(
        "--cpus",
        default=None,
        help="comma-separated CPUs the replicas are pinned to, replica k on the k-th (mod count); "
        "'none': not pinned (default: every CPU this process may use)",
    )
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.replicas < 2:
        parser.error("--replicas must be at least 2")
    if args.rounds < 1 or args.conversations < 1:
        parser.error("--rounds and --conversations must be at least 1")
    if args.in_flight % _lcm(args.replicas) or args.messages % _lcm(args.replicas):
        parser.error(f"--in-flight and --messages must divide evenly among 1 to {args.replicas} replicas")
    if args.cpus is None:
        args.cpus = sorted(os.sched_getaffinity(0))
    elif args.cpus == "none":
        args.cpus = []
    else:
        args.cpus = [int(cpu) for cpu in args.cpus.split(",")]
    return args


def _lcm(replicas: int) -> int:
    import math

    return math.lcm(*range(1, replicas + 1))


def interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--child"]:
        return child_main(argv[1])
    args = parse_args(argv)
    # A kill ends the run as Ctrl-C does: the replicas and the servers are stopped on the way out.
    signal.signal(signal.SIGTERM, interrupted)
    root = Path(tempfile.mkdtemp(prefix="botkit-bench-replicas-"))
    cluster = Cluster(args, root)
    try:
        cluster.start_servers()
        cases, turns = asyncio.run(benchmark(args, cluster))
    finally:
        # Also on an error or Ctrl-C: asyncio.run cancelled benchmark(), whose finally ended the replicas.
        cluster.stop_servers()
        from servers import remove_tree

        remove_tree(root)
    met = print_report(args, cases, turns)
    return 0 if met or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
