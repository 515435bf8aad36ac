"""Rate limiter decisions per second: the ratelimit plugin's gate path, in memory and on a real Redis.

Run: .venv/bin/python bench/bench_ratelimit.py [--decisions N] [--skip-redis]

Each decision is what the gate does for one message: hit the per-channel and
per-user limits (and read the window when limited). Users are spread over many
keys so that most decisions are under the limit, as in a real bot; a second
pass with one user far over the limit measures the limited path.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from botkit import Message, User  # noqa: E402
from botkit.plugins.ratelimit import Limiter, RateLimitSettings  # noqa: E402


def messages(count: int, users: int) -> list[Message]:
    return [
        Message(text="hi", author=User(id=f"u{i % users}"), platform="bench", channel_id=f"c{i % 50}")
        for i in range(count)
    ]


async def decide(limiter: Limiter, batch: list[Message]) -> tuple[float, float, float, int]:
    """(decisions/s, p50 µs, p99 µs, refused) for ``batch`` in order."""
    times = []
    refused = 0
    started = time.perf_counter()
    for message in batch:
        t0 = time.perf_counter()
        if await limiter.admit(message) is not None:
            refused += 1
        times.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    times.sort()
    return len(batch) / elapsed, times[len(times) // 2] * 1e6, times[int(len(times) * 0.99)] * 1e6, refused


async def run(storage: str, count: int) -> list[tuple[str, float, float, float, int]]:
    rows = []
    settings = RateLimitSettings(per_user="1000/minute", per_channel="100000/minute", storage=storage)
    limiter = Limiter(settings)
    if not await limiter.storage.check():
        raise SystemExit(f"cannot reach {storage}")
    await limiter.storage.reset()
    rows.append(("under the limit", *await decide(limiter, messages(count, users=5000))))
    flood = [
        Message(text="x", author=User(id="flooder"), platform="bench", channel_id="c") for _ in range(count)
    ]
    limited = Limiter(RateLimitSettings(per_user="5/minute", storage=storage))
    rows.append(("one user flooding", *await decide(limited, flood)))
    await limiter.storage.reset()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--skip-redis", action="store_true")
    args = parser.parse_args()
    results = [("memory", row) for row in asyncio.run(run("memory://", args.decisions))]
    if not args.skip_redis:
        from servers import start_redis

        server = start_redis(Path(tempfile.mkdtemp(prefix="botkit-bench-redis-")))
        try:
            results += [("redis", row) for row in asyncio.run(run(server.url, args.decisions // 4))]
        finally:
            server.stop()
    print(f"rate limiter decisions (per_user + per_channel checks), {args.decisions:,} in memory")
    print(f"{'storage':<8} {'case':<20} {'decisions/s':>12} {'p50 µs':>9} {'p99 µs':>9} {'refused':>8}")
    for storage, (case, rate, p50, p99, refused) in results:
        print(f"{storage:<8} {case:<20} {rate:>12,.0f} {p50:>9.1f} {p99:>9.1f} {refused:>8,}")


if __name__ == "__main__":
    main()
