"""Export benchmark: ``botkit export`` throughput and peak memory at 10K, 100K and 1M stored messages.

Run from the repository root::

    .venv/bin/python bench/bench_export.py                    # about 10 minutes on two cores
    .venv/bin/python bench/bench_export.py --sizes 10000,100000
    .venv/bin/python bench/bench_export.py --check            # exit 1 when a target is missed

One SQLite database per size, created by the real Alembic migrations and
seeded with bulk INSERTs (sqlite3, one transaction): 10 exchanges per
conversation, unique texts of random words, 2% of replies with a reaction, 0.5%
of questions with a moderation event, 1% of users opted out, 2% of replies
stopped, 1% of exchanges repeated exactly and 1% nearly (a word added to the
previous answer). Each measurement runs in a fresh child process, so its peak resident
memory (``VmHWM``) is its own:

- **baseline: raw read**: the export's query through a plain ``sqlite3``
  cursor, ``fetchmany(2000)``, rows discarded: what reading alone costs.
- **export, no dedup**: ``run_export`` (chat format, written to a temporary
  folder) with exact and near-duplicate removal off: streaming, pairing,
  every other filter, PII scrubbing, formatting, writing.
- **export, dedup**: the same with the defaults: exact duplicates and MinHash
  near duplicates (threshold 0.8), whose index grows with the kept examples.
- **export, dedup with datasketch**: the same, with the band tuning and the
  MinHash signatures computed by datasketch (``MinHashLSH``, ``MinHash.update_batch``)
  as the export did before its numpy MinHash: the comparison, same decisions
  (the run checks the kept counts agree). Its import (datasketch and SciPy) is
  measured on its own, before the baseline.

Ratios are against the 10K run of the same kind, in the same run. The
datasketch mode needs datasketch (the ``testing`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

for _name in [name for name in os.environ if name.startswith("BOTKIT_")]:
    del os.environ[_name]

REPO = Path(__file__).resolve().parent.parent

from botkit.storage import Database, Migrator, StorageSettings

EXCHANGES_PER_CONVERSATION = 10
TARGET_MEMORY_RATIO = 1.5  # export without dedup: peak RSS growth at 1M / at 10K
TARGET_MESSAGES_PER_S = 10_000  # export without dedup, at 1M
MODES = ("raw", "export", "export-dedup", "export-dedup-datasketch")


def vocabulary(rng: random.Random, size: int = 6000) -> list[str]:
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    return ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(size)]


def sqlite_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


async def migrated(folder: Path) -> Path:
    db = Database(StorageSettings(data_dir=folder))
    await db.connect()
    await Migrator(db, []).upgrade()
    await db.close()
    return folder / "botkit.db"


def seed(path: Path, messages: int, seed_value: int = 5) -> float:
    """Fill the database with ``messages`` rows (question and reply pairs); returns seconds taken."""
    started = time.perf_counter()
    rng = random.Random(seed_value)
    words = vocabulary(rng)
    exchanges = messages // 2
    conversations = max(1, exchanges // EXCHANGES_PER_CONVERSATION)
    users = max(2, conversations // 3)
    clock = datetime(2026, 1, 1, tzinfo=UTC)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("BEGIN")
        at = sqlite_time(clock)
        connection.executemany(
            "INSERT INTO users (id, platform, platform_user_id, display_name, created_at, last_seen_at) "
            "VALUES (?, 'bench', ?, ?, ?, ?)",
            ((i, f"u{i}", f"user {i}", at, at) for i in range(1, users + 1)),
        )
        connection.executemany(
            "INSERT INTO privacy (user_id, kind, detail, created_at) VALUES (?, 'optout', '{}', ?)",
            ((i, at) for i in range(1, users + 1, 100)),
        )
        connection.executemany(
            "INSERT INTO conversations (id, scope_key, platform, channel_id, thread_id, is_dm, started_at) "
            "VALUES (?, ?, 'bench', ?, NULL, 0, ?)",
            ((i, f"bench:c{i % 500}:{i}", f"c{i % 500}", at) for i in range(1, conversations + 1)),
        )

        feedback: list[tuple] = []
        events: list[tuple] = []

        def rows():
            step = timedelta(milliseconds=100)
            moment = clock
            message_id = 0
            question = answer = ""
            for conversation in range(1, conversations + 1):
                for _ in range(EXCHANGES_PER_CONVERSATION):
                    if message_id >= messages:
                        return
                    user = rng.randint(1, users)
                    repeat = rng.random()
                    # 1% repeat the previous exchange exactly (question and answer kept as
                    # they are), 1% nearly: the duplicates the dedup filters must find.
                    if message_id and 0.01 <= repeat < 0.02:
                        answer += " " + rng.choice(words) + "."
                    elif not message_id or repeat >= 0.02:
                        question = " ".join(rng.choices(words, k=rng.randint(6, 20))).capitalize() + "?"
                        answer = " ".join(rng.choices(words, k=rng.randint(15, 60))).capitalize() + "."
                    moment += step
                    asked, answered = message_id + 1, message_id + 2
                    message_id += 2
                    platform_id = f"m{asked}"
                    yield (asked, conversation, user, None, "user", question, "bench", f"c{conversation % 500}",
                           platform_id, sqlite_time(moment), None, None, None)  # fmt: skip
                    status = "stopped" if rng.random() < 0.02 else "completed"
                    yield (answered, conversation, None, asked, "assistant", answer, "bench",
                           f"c{conversation % 500}", None, sqlite_time(moment + step / 2), "scripted",
                           "scripted", status)  # fmt: skip
                    chance = rng.random()
                    if chance < 0.02:
                        feedback.append((answered, "reaction", "👍" if chance < 0.015 else "👎", at))
                    elif chance > 0.995:
                        events.append(
                            (user, "in", "injection", "flag", json.dumps({"message_id": platform_id}), at)
                        )

        connection.executemany(
            "INSERT INTO messages (id, conversation_id, user_id, reply_to_id, role, text, platform, channel_id, "
            "platform_message_id, created_at, backend, model, status, token_count, flags) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, '{}')",
            rows(),
        )
        connection.executemany(
            "INSERT INTO feedback (message_id, kind, value, created_at) VALUES (?, ?, ?, ?)", feedback
        )
        connection.executemany(
            "INSERT INTO moderation_events (user_id, direction, category, action, detail, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            events,
        )
        connection.execute("COMMIT")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
    return time.perf_counter() - started


# --- one measurement, in a child process -----------------------------------------------------------


def resident_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(folder: Path, mode: str) -> dict:
    from botkit.finetune.curate import Curation
    from botkit.finetune.export import ExportOptions, SystemPrompts, run_export
    from botkit.finetune.select import Selection, messages_query

    path = folder / "botkit.db"
    if mode == "raw":
        from sqlalchemy.dialects import sqlite

        sql = str(messages_query(Selection()).compile(dialect=sqlite.dialect()))
        before = resident_kb("VmRSS")
        started = time.perf_counter()
        connection = sqlite3.connect(path)
        cursor = connection.execute(sql)
        count = 0
        while batch := cursor.fetchmany(2000):
            count += len(batch)
        connection.close()
        seconds = time.perf_counter() - started
        return {
            "seconds": seconds,
            "messages": count,
            "kept": 0,
            "before_kb": before,
            "peak_kb": resident_kb("VmHWM"),
        }

    dedup = mode.startswith("export-dedup")
    curation = Curation() if dedup else Curation(exact_duplicates=False, near_duplicates=None)
    out = folder / f"out-{mode}"
    shutil.rmtree(out, ignore_errors=True)

    async def run() -> dict:
        db = Database(StorageSettings(data_dir=folder))
        await db.connect()
        # Everything the export needs is imported and connected before the baseline is taken.
        import numpy  # noqa: F401

        imported = resident_kb("VmRSS")
        if mode == "export-dedup-datasketch":
            use_datasketch()
        before = resident_kb("VmRSS")
        started = time.perf_counter()
        options = ExportOptions(out=out, formats=("chat",), curation=curation, overwrite=True)
        report = await run_export(db, options, SystemPrompts(fixed="You are a helpful assistant."))
        seconds = time.perf_counter() - started
        await db.close()
        return {
            "seconds": seconds,
            "messages": report.messages,
            "kept": report.counts.kept,
            "removed": {n: s.removed for n, s in report.counts.steps.items() if s.removed},
            "before_kb": before,
            "peak_kb": resident_kb("VmHWM"),
            "import_kb": before - imported,
        }

    try:
        return asyncio.run(run())
    finally:
        shutil.rmtree(out, ignore_errors=True)


def use_datasketch() -> None:
    """Swap the export's MinHash for datasketch's: its band tuning, its ``MinHash.update_batch``."""
    import numpy as np
    from datasketch import MinHash, MinHashLSH

    from botkit.finetune import curate
    from botkit.finetune.dedup import NearDuplicateIndex, normalise, shingle_hashes

    class DatasketchIndex(NearDuplicateIndex):
        def __init__(self, threshold: float, num_perm: int = 128) -> None:
            super().__init__(threshold, num_perm)
            tuned = MinHashLSH(threshold=threshold, num_perm=num_perm)
            self.bands, self.rows = tuned.b, tuned.r
            self._template = MinHash(num_perm=num_perm, hashfunc=int)  # copied per text, as before

        def signature(self, text: str) -> np.ndarray:
            minhash = self._template.copy()
            minhash.update_batch(shingle_hashes(normalise(text).encode("utf-8")).tolist())
            return minhash.hashvalues

    curate.NearDuplicateIndex = DatasketchIndex


def run_child(folder: Path, mode: str) -> dict:
    completed = subprocess.run(
        [sys.executable, __file__, "--measure", str(folder), "--mode", mode],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


# --- the report --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="stored messages per database")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.mode)))
        return 0

    sizes = [int(size) for size in args.sizes.split(",")]
    root = Path(tempfile.mkdtemp(prefix="botkit-bench-export-"))
    results: dict[tuple[int, str], dict] = {}
    try:
        for size in sizes:
            folder = root / str(size)
            folder.mkdir()
            asyncio.run(migrated(folder))
            seconds = seed(folder / "botkit.db", size)
            print(f"seeded {size:,} messages in {seconds:.1f} s", flush=True)
            for mode in MODES:
                results[size, mode] = run_child(folder, mode)
                result = results[size, mode]
                print(f"  {mode:<23} {result['seconds']:7.1f} s  kept {result['kept']:,}", flush=True)
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    base = sizes[0]
    print()
    print(
        "| stored messages | kind | seconds | messages/s | rate ratio | peak RSS MB | growth MB | growth ratio |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        for mode in MODES:
            result, baseline = results[size, mode], results[base, mode]
            rate = result["messages"] / result["seconds"]
            base_rate = baseline["messages"] / baseline["seconds"]
            growth = (result["peak_kb"] - result["before_kb"]) / 1024
            base_growth = max((baseline["peak_kb"] - baseline["before_kb"]) / 1024, 0.1)
            print(
                f"| {size:,} | {mode} | {result['seconds']:.1f} | {rate:,.0f} | {rate / base_rate:.2f} "
                f"| {result['peak_kb'] / 1024:.0f} | {growth:.1f} | {growth / base_growth:.2f} |"
            )
    largest = sizes[-1]
    print()
    agree = True
    for size in sizes:
        plain = results[size, "export"]
        for mode, name in (("export-dedup", "numpy"), ("export-dedup-datasketch", "datasketch")):
            dedup = results[size, mode]
            extra = dedup["seconds"] - plain["seconds"]
            print(
                f"near-dup removal at {size:,} ({name}): +{extra:.1f} s "
                f"({extra / max(dedup['kept'], 1) * 1e6:.0f} us per kept example), peak RSS growth "
                f"{(dedup['peak_kb'] - dedup['before_kb']) / 1024:.1f} MB (its imports: +"
                f"{dedup['import_kb'] / 1024:.1f} MB), removed {dedup['removed'].get('near duplicates', 0):,} near "
                f"and {dedup['removed'].get('exact duplicates', 0):,} exact duplicates"
            )
        same = results[size, "export-dedup"]["removed"] == results[size, "export-dedup-datasketch"]["removed"]
        print(f"  numpy and datasketch remove the same examples at {size:,}: {'yes' if same else 'NO'}")
        agree = agree and same
    if not args.check:
        return 0
    plain, small = results[largest, "export"], results[base, "export"]
    growth = (plain["peak_kb"] - plain["before_kb"]) / max(small["peak_kb"] - small["before_kb"], 1)
    rate = plain["messages"] / plain["seconds"]
    ok = growth <= TARGET_MEMORY_RATIO and rate >= TARGET_MESSAGES_PER_S and agree
    print(
        f"memory growth ratio {growth:.2f} (target <= {TARGET_MEMORY_RATIO}), "
        f"{rate:,.0f} messages/s (target >= {TARGET_MESSAGES_PER_S:,}), "
        f"same near duplicates as datasketch: {'yes' if agree else 'no'}: {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
