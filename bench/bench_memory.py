"""Memory benchmark: context loading at 1K-1M stored messages, write throughput, the pipeline with memory on.

Run from the repository root::

    .venv/bin/python bench/bench_memory.py                    # about 3 minutes on two cores
    .venv/bin/python bench/bench_memory.py --skip-postgres --sizes 1000,100000
    .venv/bin/python bench/bench_memory.py --check            # exit 1 when a target is missed

Three measurements, each through the code the memory plugin runs:

1. Context loading: one SQLite database per size, created by the real Alembic
   migrations and seeded with bulk INSERTs (sqlite3, one transaction), 100
   messages per conversation, conversations interleaved in time; then
   ``MemoryStore.history(scope_key, max_turns)`` (history cache off) is timed for
   random conversations, in rounds that alternate between the sizes.
2. Writes: exchange records shaped as ``botkit_after_reply`` builds them go
   through ``MemoryStore.add`` and ``flush``, on SQLite and on a throwaway
   PostgreSQL (``tests/servers.py``).
3. The pipeline: ``bench_pipeline``'s concurrent case (50 conversations) through
   a ``Bot`` with the default plugins, memory on, SQLite in a temporary folder;
   every reply is checked and every exchange must be in the database after flush.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

# BOTKIT_* variables (BOTKIT_LOAD_PLUGINS, BOTKIT_STORAGE__..., BOTKIT_CONFIG) would change
# what is measured; drop them before botkit reads the environment.
for _name in [name for name in os.environ if name.startswith("BOTKIT_")]:
    del os.environ[_name]

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # servers.py: the tests' throwaway PostgreSQL

from bench_pipeline import make_messages, percentile, pipeline_answer, reply_words, run_concurrent
from sqlalchemy import func, select

from botkit.backends.scripted import ScriptedBackend
from botkit.bot import Bot
from botkit.plugins.memory import MemorySettings, memory
from botkit.plugins.memory.spool import Spool
from botkit.plugins.memory.store import MemoryStore
from botkit.settings import settings_from_mapping
from botkit.storage import Database, MessageRecord, Migrator, StorageSettings

TARGET_LOAD_RATIO = 1.5
TARGET_PIPELINE_MESSAGES_PER_S = 1000.0
MESSAGES_PER_CONVERSATION = 100
MAX_TURNS = MemorySettings().max_turns
SPOOL_BYTES = MemorySettings().spool_max_bytes


# --- realistic text ----------------------------------------------------------------------------

WORDS = (
    "the a to of and in is it you that for on with as this be are have not can what how "
    "asyncio python database server error message question answer please thanks could would "
    "should config file install version update function return value example problem because "
    "maybe really think know want need make sure about there which when where why just also "
    "model token prompt reply channel thread user bot memory history context plugin backend"
).split()


def text_pool(rng: random.Random, count: int, median_chars: int, most_chars: int) -> list[str]:
    """Sentences of log-normally distributed length: most short, a few long."""
    pool = []
    for _ in range(count):
        length = min(most_chars, max(2, int(rng.lognormvariate(0, 0.8) * median_chars)))
        words: list[str] = []
        size = 0
        while size < length:
            word = rng.choice(WORDS)
            words.append(word)
            size += len(word) + 1
        pool.append(" ".join(words).capitalize() + rng.choice(".?!"))
    return pool


@dataclass
class Texts:
    questions: list[str]
    answers: list[str]

    @classmethod
    def make(cls, seed: int = 1) -> Texts:
        rng = random.Random(seed)
        # A chat question: a line or two. A reply: a paragraph or a few.
        return cls(text_pool(rng, 4096, 80, 2000), text_pool(rng, 4096, 400, 4000))


def tokens(text: str) -> int:
    """What the scripted backend's ``count_text`` gives: about four characters a token."""
    return len(text) // 4 + 1


# --- databases ---------------------------------------------------------------------------------


async def migrated(settings: StorageSettings) -> Database:
    """A database with the schema the real migrations create (the core branch; memory adds none)."""
    db = Database(settings)
    await db.connect()
    await Migrator(db, []).upgrade()
    return db


def new_store(db: Database, folder: Path) -> MemoryStore:
    return MemoryStore(db, Spool(folder / "spool" / "memory.jsonl", SPOOL_BYTES), retry_interval=5.0)


def sqlite_time(moment: datetime) -> str:
    """How SQLAlchemy's SQLite dialect stores a DateTime (UTC, no zone)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


MESSAGE_COLUMNS = (
    "id, conversation_id, user_id, reply_to_id, role, text, speaker, platform, channel_id, thread_id, "
    "author_id, platform_message_id, created_at, token_count, backend, model, adapter, prompt_tokens, "
    "completion_tokens, latency_ms, status, flags"
)


class Seeder:
    """Grows a migrated SQLite database to a number of messages with bulk INSERTs.

    Every conversation holds ``MESSAGE_COLUMNS``-shaped rows as ``MemoryStore``
    writes them: a user message and the reply to it, 100 messages per
    conversation. Conversations of one growth step take turns, as in a busy
    bot, so a conversation's rows are spread over the table. One scope in ten
    also has an earlier conversation ended by ``/reset``.
    """

    def __init__(self, path: Path, texts: Texts) -> None:
        self.path = path
        self.texts = texts
        self.messages = 0
        self.conversations = 0
        self.users = 0
        self.scopes: list[str] = []  # scope keys with an active conversation
        self.clock = datetime(2026, 1, 1, tzinfo=UTC)
        self.rng = random.Random(3)

    def grow_to(self, total: int) -> float:
        """Add messages until there are ``total``; returns the seconds it took."""
        started = time.perf_counter()
        new_conversations = max(1, (total - self.messages) // MESSAGES_PER_CONVERSATION)
        connection = sqlite3.connect(self.path, isolation_level=None)
        try:
            connection.execute("PRAGMA synchronous=OFF")
            connection.execute("BEGIN")
            conversations = self._conversations(connection, new_conversations)
            users = self._users(connection, max(1, new_conversations // 2))
            connection.executemany(
                f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES ({', '.join('?' * 22)})",
                self._messages(conversations, users),
            )
            connection.execute("COMMIT")
            # A running bot checkpoints the WAL as it goes; do not read through a huge one.
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.messages = connection.execute("SELECT count(*) FROM messages").fetchone()[0]
        finally:
            connection.close()
        return time.perf_counter() - started

    def _users(self, connection: sqlite3.Connection, count: int) -> list[tuple[int, str]]:
        created = sqlite_time(self.clock)
        rows = [
            (self.users + i + 1, "bench", f"u{self.users + i}", f"User {self.users + i}", created, created)
            for i in range(count)
        ]
        connection.executemany(
            "INSERT INTO users (id, platform, platform_user_id, display_name, created_at, last_seen_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        self.users += count
        return [(row[0], row[2]) for row in rows]

    def _conversations(self, connection: sqlite3.Connection, count: int) -> list[tuple[int, str]]:
        """``(id, channel)`` of each new conversation; ended ones come right before their scope's next."""
        rows = []
        ids = []
        started = sqlite_time(self.clock)
        for i in range(count):
            number = self.conversations + i
            conversation_id = number + 1
            # Conversation 10k is ended by /reset and 10k+1 continues in the same scope.
            channel = f"channel-{number - 1 if number % 10 == 1 else number}"
            ended = sqlite_time(self.clock + timedelta(days=1)) if number % 10 == 0 else None
            rows.append((conversation_id, f"bench:{channel}", "bench", channel, None, 0, started, ended))
            ids.append((conversation_id, channel))
            if ended is None:
                self.scopes.append(f"bench:{channel}")
        connection.executemany(
            "INSERT INTO conversations (id, scope_key, platform, channel_id, thread_id, is_dm, started_at, ended_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        self.conversations += count
        return ids

    def _messages(
        self, conversations: list[tuple[int, str]], users: list[tuple[int, str]]
    ) -> Iterator[tuple]:
        questions, answers = self.texts.questions, self.texts.answers
        message_id = self.messages + 1
        step = timedelta(milliseconds=250)
        moment = self.clock
        random = self.rng.random
        n = 0
        for _ in range(MESSAGES_PER_CONVERSATION // 2):
            for conversation_id, channel in conversations:
                user_id, author = users[(conversation_id * 7 + n) % len(users)]
                question = questions[(n * 31 + conversation_id) % len(questions)]
                answer = answers[(n * 17 + conversation_id) % len(answers)]
                moment += step
                at = sqlite_time(moment)
                status = "stopped" if random() < 0.02 else "completed"
                yield (
                    message_id,
                    conversation_id,
                    user_id,
                    None,
                    "user",
                    question,
                    f"User {author[1:]}",
                    "bench",
                    channel,
                    None,
                    author,
                    uuid.UUID(int=message_id).hex,
                    at,
                    tokens(question),
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    "{}",
                )
                yield (
                    message_id + 1,
                    conversation_id,
                    None,
                    message_id,
                    "assistant",
                    answer,
                    None,
                    "bench",
                    channel,
                    None,
                    None,
                    None,
                    at,
                    tokens(answer),
                    "scripted",
                    "scripted",
                    None,
                    900,
                    tokens(answer),
                    1200,
                    status,
                    "{}",
                )
                message_id += 2
                n += 1
        self.clock = moment


@dataclass
class LoadResult:
    size: int
    seed_s: float
    p50_ms: float
    p99_ms: float
    rounds: int
    samples: int
    turns: int


async def time_history(
    store: MemoryStore, scopes: list[str], rng: random.Random, samples: int
) -> list[float]:
    clock = time.perf_counter
    times = []
    gc.collect()
    for scope in rng.choices(scopes, k=samples):
        before = clock()
        turns = await store.history(scope, MAX_TURNS)
        times.append(clock() - before)
        # A stopped reply is not history: a few of the newest rows are left out.
        assert len(turns) >= MAX_TURNS * 0.8, (scope, len(turns))
    times.sort()
    return times


async def context_loading(args: argparse.Namespace, folder: Path) -> list[LoadResult]:
    """One database per size; rounds alternate between them, so a busy moment of the machine
    falls on every size alike instead of on whichever was being measured."""
    seeded = []
    for size in args.sizes:
        settings = StorageSettings(data_dir=folder / f"load-{size}")
        db = await migrated(settings)
        await db.close()
        assert db.sqlite_path is not None
        seeder = Seeder(db.sqlite_path, Texts.make())
        seed_s = seeder.grow_to(size)
        print(
            f"  seeded {seeder.messages:>9,} messages, {seeder.conversations:,} conversations in {seed_s:5.1f} s",
            flush=True,
        )
        seeded.append((settings, seeder, seed_s))
    rng = random.Random(7)
    stores = []
    try:
        for settings, _, _ in seeded:
            stores.append(new_store(Database(settings), settings.data_dir))
        for store, (_, seeder, _) in zip(stores, seeded, strict=True):
            await time_history(store, seeder.scopes, rng, args.warmup_reads)
        rounds: list[list[list[float]]] = [[] for _ in seeded]
        for number in range(args.load_rounds):
            order = list(range(len(seeded)))
            shift = number % len(order)
            for index in order[shift:] + order[:shift]:
                rounds[index].append(
                    await time_history(stores[index], seeded[index][1].scopes, rng, args.reads)
                )
        turns = [
            len(await store.history(seeder.scopes[0], MAX_TURNS))
            for store, (_, seeder, _) in zip(stores, seeded, strict=True)
        ]
    finally:
        for store in stores:
            await store.db.close()
    return [
        LoadResult(
            seeder.messages,
            seed_s,
            statistics.median(percentile(r, 0.50) for r in size_rounds) * 1000,
            statistics.median(percentile(r, 0.99) for r in size_rounds) * 1000,
            len(size_rounds),
            args.reads,
            size_turns,
        )
        for (_, seeder, seed_s), size_rounds, size_turns in zip(seeded, rounds, turns, strict=True)
    ]


# --- writes ------------------------------------------------------------------------------------


def exchange(texts: Texts, n: int, channels: int, users: int) -> dict:
    """A record exactly as ``botkit_after_reply`` builds it for a completed reply."""
    question = texts.questions[n % len(texts.questions)]
    answer = texts.answers[(n * 7) % len(texts.answers)]
    channel = f"channel-{n % channels}"
    author = f"u{(n * 13) % users}"
    sent_at = datetime.now(UTC).isoformat()
    message_id = uuid.uuid4().hex
    return {
        "id": message_id,
        "kind": "exchange",
        "scope_key": f"bench:{channel}",
        "platform": "bench",
        "channel_id": channel,
        "thread_id": None,
        "is_dm": False,
        "at": sent_at,
        "user": {
            "author_id": author,
            "name": author,
            "speaker": author,
            "message_id": message_id,
            "text": question,
            "at": sent_at,
            "tokens": tokens(question),
        },
        "reply": {
            "text": answer.replace("\x00", ""),
            "status": "completed",
            "backend": "scripted",
            "model": "scripted",
            "prompt_tokens": 900,
            "completion_tokens": tokens(answer),
            "latency_ms": 1200,
            "at": datetime.now(UTC).isoformat(),
            "tokens": tokens(answer),
        },
    }


@dataclass
class WriteResult:
    database: str
    burst_messages_per_s: float  # many exchanges pending at once: the writer batches them
    single_p50_ms: float  # one exchange, added and flushed alone: a quiet bot's commit
    single_p99_ms: float
    stored: int


async def write_throughput(
    args: argparse.Namespace, name: str, settings: StorageSettings, folder: Path
) -> WriteResult:
    texts = Texts.make(seed=2)
    db = await migrated(settings)
    store = new_store(db, folder)
    store.start()
    made = 0

    def records(count: int) -> list[dict]:
        nonlocal made
        batch = [exchange(texts, made + i, args.write_channels, args.write_users) for i in range(count)]
        made += count
        return batch

    try:
        # Warm up: every user and conversation exists, as in a bot that has run a while.
        for record in records(args.write_channels + args.write_users):
            store.add(record)
        assert await store.flush(120), "warm-up writes did not finish"
        rates = []
        for _ in range(args.write_rounds):
            batch = records(args.write_exchanges)
            gc.collect()
            started = time.perf_counter()
            for record in batch:
                store.add(record)
            assert await store.flush(300), f"{name}: writes did not finish"
            rates.append(2 * len(batch) / (time.perf_counter() - started))
        single = []
        for record in records(args.single_writes):
            started = time.perf_counter()
            store.add(record)
            assert await store.flush(30), f"{name}: a single write did not finish"
            single.append(time.perf_counter() - started)
        single.sort()
        async with db.sessions() as session:
            stored = await session.scalar(select(func.count()).select_from(MessageRecord))
        assert stored == 2 * made, f"{name}: {stored} messages stored, expected {2 * made}"
        assert store.lost == 0 and not store.outage
    finally:
        await store.close(10)
        await db.close()
    return WriteResult(
        name,
        statistics.median(rates),
        percentile(single, 0.50) * 1000,
        percentile(single, 0.99) * 1000,
        stored,
    )


async def writes(args: argparse.Namespace, folder: Path) -> list[WriteResult]:
    results = [
        await write_throughput(
            args, "SQLite", StorageSettings(data_dir=folder / "writes-sqlite"), folder / "writes-sqlite"
        )
    ]
    if args.skip_postgres:
        return results
    from servers import remove_tree, start_postgres

    # Not under the 0700 temporary folder: the server runs as the 'postgres' user, who must reach it.
    root = Path(tempfile.mkdtemp(prefix="botkit-bench-pg-"))
    try:
        server = start_postgres(root)
        try:
            url = server.create_database("bench")
            settings = StorageSettings(data_dir=folder / "writes-pg", url=url)
            results.append(await write_throughput(args, "PostgreSQL", settings, folder / "writes-pg"))
        finally:
            server.stop()
    finally:
        remove_tree(root)
    return results


# --- the pipeline with memory on ----------------------------------------------------------------


@dataclass
class PipelineResult:
    name: str
    replies_per_s: float  # replies delivered
    stored_per_s: float  # replies delivered and their exchanges committed
    rounds: list[float]
    stored: int


async def pipeline(args: argparse.Namespace, folder: Path, memory_on: bool) -> PipelineResult:
    reply = reply_words(args.chunks)
    config = {
        "backend": {"type": "scripted", "default_reply": reply},
        "storage": {"data_dir": str(folder / ("pipeline-memory" if memory_on else "pipeline-no-memory"))},
        "plugins": {"memory": {"enabled": memory_on}},
    }
    bot = Bot.load(settings_from_mapping(config))
    assert isinstance(bot.backend, ScriptedBackend)
    await bot.start()
    name = f"{args.conversations} conversations, memory {'on' if memory_on else 'off'}"
    try:
        # The scripted backend records every request for tests; keep only the last.
        bot.backend.requests = deque(maxlen=1)  # type: ignore[assignment]
        answer = pipeline_answer(bot)
        handled = 0
        for message in make_messages(args.warmup, args.conversations):
            assert await answer(message) == reply
            handled += 1
        store = memory(bot) if memory_on else None
        if store is not None:
            assert await store.flush(60)
        delivered, stored_rates = [], []
        for _ in range(args.pipeline_rounds):
            messages = make_messages(args.messages, args.conversations)
            started = time.perf_counter()
            result = await run_concurrent(name, answer, messages, args.conversations, reply)
            if store is not None:
                assert await store.flush(120), "memory writes did not finish"
            delivered.append(result.rate)
            stored_rates.append(len(messages) / (time.perf_counter() - started))
            handled += len(messages)
        async with bot.db.sessions() as session:
            stored = await session.scalar(select(func.count()).select_from(MessageRecord)) or 0
        expected = 2 * handled if memory_on else 0
        assert stored == expected, f"{name}: {stored} messages in the database, expected {expected}"
    finally:
        await bot.stop()
    return PipelineResult(
        name, statistics.median(delivered), statistics.median(stored_rates), sorted(stored_rates), stored
    )


# --- report ------------------------------------------------------------------------------------


def print_report(
    args: argparse.Namespace,
    loads: list[LoadResult],
    written: list[WriteResult],
    piped: list[PipelineResult],
    seconds: float,
) -> bool:
    checks: list[tuple[str, bool, str]] = []
    print()
    print("botkit memory benchmark")
    print(
        f"  python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end, {seconds:.0f} s in all"
    )
    print()
    print(f"  1. context loading: MemoryStore.history(scope_key, max_turns={MAX_TURNS}) on SQLite")
    print(
        f"     {MESSAGES_PER_CONVERSATION} messages per conversation; median of {args.load_rounds} rounds x {args.reads} random conversations"
    )
    header = f"     {'stored messages':>15} {'seed s':>7} {'turns':>6} {'p50 ms':>8} {'p99 ms':>8}"
    print(header)
    print("     " + "-" * (len(header) - 5))
    for load in loads:
        print(
            f"     {load.size:>15,} {load.seed_s:>7.1f} {load.turns:>6} {load.p50_ms:>8.3f} {load.p99_ms:>8.3f}"
        )
    if len(loads) > 1:
        first, last = loads[0], loads[-1]
        p50_ratio, p99_ratio = last.p50_ms / first.p50_ms, last.p99_ms / first.p99_ms
        print(f"     ratio {last.size:,} / {first.size:,}: p50 {p50_ratio:.2f}, p99 {p99_ratio:.2f}")
        checks.append(
            (
                f"context p50 ratio <= {TARGET_LOAD_RATIO:g}",
                p50_ratio <= TARGET_LOAD_RATIO,
                f"{p50_ratio:.2f}",
            )
        )
        checks.append(
            (
                f"context p99 ratio <= {TARGET_LOAD_RATIO:g}",
                p99_ratio <= TARGET_LOAD_RATIO,
                f"{p99_ratio:.2f}",
            )
        )
    print()
    print(
        f"  2. writes through MemoryStore.add + flush (after_reply records, {args.write_channels} conversations, {args.write_users} users)"
    )
    header = f"     {'database':<11} {'burst messages/s':>16} {'1 exchange p50 ms':>18} {'p99 ms':>8} {'rows checked':>13}"
    print(header)
    print("     " + "-" * (len(header) - 5))
    for write in written:
        print(
            f"     {write.database:<11} {write.burst_messages_per_s:>16,.0f} {write.single_p50_ms:>18.2f} "
            f"{write.single_p99_ms:>8.2f} {write.stored:>13,}"
        )
    print(
        f"     burst: median of {args.write_rounds} rounds of {args.write_exchanges:,} exchanges (2 messages each) added at once"
    )
    print()
    print(
        f"  3. the pipeline (bench_pipeline's concurrent case), scripted backend, {args.chunks}-chunk reply, SQLite"
    )
    header = f"     {'case':<32} {'replies/s':>10} {'replies+stored/s':>17} {'rounds min-max':>15} {'rows checked':>13}"
    print(header)
    print("     " + "-" * (len(header) - 5))
    for result in piped:
        spread = f"{result.rounds[0]:,.0f}-{result.rounds[-1]:,.0f}"
        print(
            f"     {result.name:<32} {result.replies_per_s:>10,.0f} {result.stored_per_s:>17,.0f} {spread:>15} {result.stored:>13,}"
        )
    print(
        f"     median of {args.pipeline_rounds} rounds x {args.messages:,} messages; replies+stored/s counts until the flush ends"
    )
    with_memory = next((r for r in piped if r.name.endswith("memory on")), None)
    if with_memory is not None:
        rate = with_memory.stored_per_s
        checks.append(
            (
                f"pipeline with memory >= {TARGET_PIPELINE_MESSAGES_PER_S:,.0f} messages/s",
                rate >= TARGET_PIPELINE_MESSAGES_PER_S,
                f"{rate:,.0f}",
            )
        )
    print()
    for label, passed, value in checks:
        print(f"  target: {label:<44} {'PASS' if passed else 'FAIL'} ({value})")
    return all(passed for _, passed, _ in checks)


def sizes(text: str) -> list[int]:
    try:
        values = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values or values[0] < MESSAGES_PER_CONVERSATION:
        raise argparse.ArgumentTypeError(f"sizes must be at least {MESSAGES_PER_CONVERSATION} messages")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=sizes,
        default=sizes("1000,100000,1000000"),
        help="stored messages at which context loading is timed (default 1000,100000,1000000)",
    )
    parser.add_argument(
        "--reads", type=int, default=300, help="history reads per round and size (default 300)"
    )
    parser.add_argument("--load-rounds", type=int, default=7, help="rounds of reads per size (default 7)")
    parser.add_argument(
        "--warmup-reads", type=int, default=50, help="unmeasured reads per size first (default 50)"
    )
    parser.add_argument(
        "--write-exchanges", type=int, default=5_000, help="exchanges per write round (default 5000)"
    )
    parser.add_argument("--write-rounds", type=int, default=3, help="write rounds per database (default 3)")
    parser.add_argument(
        "--single-writes", type=int, default=200, help="exchanges written one at a time (default 200)"
    )
    parser.add_argument(
        "--write-channels", type=int, default=500, help="conversations the writes go to (default 500)"
    )
    parser.add_argument(
        "--write-users", type=int, default=200, help="users the writes come from (default 200)"
    )
    parser.add_argument("--skip-postgres", action="store_true", help="measure writes on SQLite only")
    parser.add_argument(
        "--messages", type=int, default=5_000, help="pipeline messages per round (default 5000)"
    )
    parser.add_argument("--pipeline-rounds", type=int, default=3, help="pipeline rounds per case (default 3)")
    parser.add_argument(
        "--warmup", type=int, default=500, help="unmeasured pipeline messages first (default 500)"
    )
    parser.add_argument("--conversations", type=int, default=50, help="concurrent conversations (default 50)")
    parser.add_argument("--chunks", type=int, default=8, help="chunks in the scripted reply (default 8)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder with the databases")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a target is missed")
    args = parser.parse_args(argv)
    if (
        min(
            args.reads,
            args.load_rounds,
            args.write_rounds,
            args.write_exchanges,
            args.single_writes,
            args.pipeline_rounds,
        )
        < 1
    ):
        parser.error("counts and rounds must be at least 1")
    if args.messages < args.conversations or args.warmup < args.conversations or args.conversations < 1:
        parser.error(
            "--messages and --warmup must be at least --conversations, and --conversations at least 1"
        )
    return args


async def benchmark(args: argparse.Namespace, folder: Path) -> bool:
    started = time.perf_counter()
    print("1. context loading", flush=True)
    loads = await context_loading(args, folder)
    print("2. writes", flush=True)
    written = await writes(args, folder)
    print("3. pipeline", flush=True)
    piped = [await pipeline(args, folder, memory_on) for memory_on in (False, True)]
    return print_report(args, loads, written, piped, time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="botkit-bench-memory-"))
    try:
        met = asyncio.run(benchmark(args, folder))
    finally:
        if args.keep:
            print(f"  databases kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0 if met or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
