"""botkit redteam benchmark: probes per second through the full pipeline, and the default suites on the embedded model.

Run from the repository root::

    .venv/bin/python bench/bench_redteam.py                  # the scripted part, about 30 s
    .venv/bin/python bench/bench_redteam.py --model          # and every default suite on the embedded model
    .venv/bin/python bench/bench_redteam.py --check          # exit 1 when a target is missed

**Probes per second** (scripted backend): a bot with every default plugin (moderation,
mentions, memory...) on the scripted backend, SQLite in a temporary folder, started once;
every shipped suite is run ``--rounds`` times through ``Run`` (the path ``botkit redteam``
takes: the control socket's ``probe`` request answered in-process, then the scorers), at
``--concurrency`` probes at a time. A probe is one entry of a suite (a counterfactual
probe asks each of its values in a conversation of its own). The baseline sends the same
messages, in the same conversations, straight to ``bot.handle`` and scores nothing: what
the pipeline alone costs. Target (``--check``): the redteam run takes at most 1.5 times the
baseline's time, so probing costs little beside the pipeline it probes.

**The default suites on the embedded model** (``--model``): ``botkit redteam``'s in-process
run (``run_here``, model loading included) of every shipped suite on SmolLM2-135M-Instruct
Q4_1 with the default backend settings but ``max_tokens`` (``--max-tokens``, 128), at the
command's default concurrency (4); wall time and each suite's pass rate (reported, not a target).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

for _name in [name for name in os.environ if name.startswith("BOTKIT_")]:
    del os.environ[_name]

from botkit.bot import Bot  # noqa: E402
from botkit.plugins.redteam.cli import choose, run_here  # noqa: E402
from botkit.plugins.redteam.runner import InProcessTarget, Run  # noqa: E402
from botkit.settings import settings_from_mapping  # noqa: E402
from botkit.types import REDTEAM_PLATFORM, Message, ReplyStatus, Responder, User  # noqa: E402

OVERHEAD_TARGET = 1.5


class Discard(Responder):
    async def send(self, text: str) -> None:
        pass

    async def update(self, text: str) -> None:
        pass

    async def finish(self, text: str, status: ReplyStatus) -> None:
        pass


def conversations(probes, round_id: str) -> list[list[tuple[str, str, str]]]:
    """The messages each probe sends, conversation by conversation, as (text, user, channel)."""
    talks = []
    for probe in probes:
        for label, value in (probe.values or {"": ""}).items():
            channel = f"{round_id}-{probe.suite}-{probe.id}-{label}"
            user = f"probe-{channel}"
            prompts = probe.prompts_for(value) if value else probe.prompts
            for message in probe.setup:
                if message.other:
                    talks.append([(message.text, f"{user}-other", f"{channel}-other")])
            same = [m.text for m in probe.setup if not m.other] + list(prompts)
            talks.append([(text, user, channel) for text in same])
    return talks


async def baseline(bot: Bot, talks, concurrency: int) -> None:
    limit = asyncio.Semaphore(concurrency)

    async def talk(messages) -> None:
        async with limit:
            for text, user, channel in messages:
                message = Message(text, User(user, user), platform=REDTEAM_PLATFORM, channel_id=channel)
                await bot.handle(message, Discard())

    await asyncio.gather(*(talk(messages) for messages in talks))


async def scripted(rounds: int, concurrency: int) -> tuple[int, float, float]:
    with tempfile.TemporaryDirectory() as folder:
        settings = settings_from_mapping(
            {
                "backend": {
                    "type": "scripted",
                    "default_reply": "Here is a short and friendly answer to that.",
                },
                "storage": {"data_dir": folder},
            }
        )
        bot = Bot.load(settings)
        probes, scorers, _ = choose(bot.registry.probe_suites, [], (), None)
        await bot.start()
        try:
            await Run(InProcessTarget(bot), scorers).all(probes[:10], concurrency)  # warm up
            redteam = base = 0.0
            for number in range(rounds):
                started = time.perf_counter()
                results = await Run(InProcessTarget(bot), scorers, run_id=f"r{number}").all(
                    probes, concurrency
                )
                redteam += time.perf_counter() - started
                assert all(result.outcome == "pass" for result in results), "a safe answer must pass"
                started = time.perf_counter()
                await baseline(bot, conversations(probes, f"b{number}"), concurrency)
                base += time.perf_counter() - started
        finally:
            await bot.stop()
    return len(probes) * rounds, redteam, base


def embedded(max_tokens: int) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as folder:
        settings = settings_from_mapping(
            {"backend": {"max_tokens": max_tokens}, "storage": {"data_dir": folder}}
        )
        started = time.perf_counter()
        report = asyncio.run(run_here(settings, [], (), None, 4, False))
        return time.perf_counter() - started, report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--model", action="store_true", help="also run every default suite on the embedded model"
    )
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()

    count, redteam, base = asyncio.run(scripted(args.rounds, args.concurrency))
    ratio = redteam / base
    print(
        f"scripted backend, every default plugin, {args.rounds} rounds of every suite, concurrency {args.concurrency}"
    )
    print("| run | probes | time | probes/s |")
    print("|---|---|---|---|")
    print(f"| botkit redteam (probe request + scoring) | {count} | {redteam:.2f} s | {count / redteam:.0f} |")
    print(f"| baseline: the same messages to bot.handle | {count} | {base:.2f} s | {count / base:.0f} |")
    print(f"redteam / baseline: {ratio:.2f}x (target at most {OVERHEAD_TARGET}x)")
    missed = ratio > OVERHEAD_TARGET

    if args.model:
        seconds, report = embedded(args.max_tokens)
        probes = sum(suite["probes"] for suite in report["suites"].values())
        print()
        print(f"embedded model {report['model']}, max_tokens {args.max_tokens}: every default suite")
        print(f"wall time {seconds:.0f} s for {probes} probes (model loading included)")
        print("| suite | probes | pass rate | errors |")
        print("|---|---|---|---|")
        for name, suite in report["suites"].items():
            print(f"| {name} | {suite['probes']} | {suite['pass_rate']:.0%} | {suite['errors']} |")
        for attribute, gap in report["bias"].items():
            print(f"bias {attribute}: {gap}")
    if args.check and missed:
        print("target missed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
