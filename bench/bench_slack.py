"""Slack delivery benchmark: what a Slack user sees of a streamed reply, against the model's own timing.

Run from the repository root::

    .venv/bin/python bench/bench_slack.py            # about 30 s on two cores
    .venv/bin/python bench/bench_slack.py --check    # exit 1 when a target is missed

The real Slack adapter (slack-bolt in Socket Mode, slack_sdk's Web API client)
runs against the fake Slack of ``tests/fake_slack.py`` on 127.0.0.1, with the
embedded SmolLM2 model through llama.cpp behind it. Each round a user mentions
the bot in a new channel; the fake notes when every Web API call arrives, so
the times below are the ones at which Slack would show the text:

- **first edit**: the first ``chat.postMessage`` of the reply (its first visible text);
- **final**: the last ``chat.postMessage`` / ``chat.update`` of the reply (the final text);
- **first token** / **end**: when the model's first text, and its end, reach the
  pipeline's reply filters (a plugin that only looks, on the same clock).

All are measured from the moment the fake sends the mention over the WebSocket.
Targets (from the issue): the first edit no later than one edit interval after the
first token, and the final text within one edit interval of the end of generation.
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
from dataclasses import dataclass
from pathlib import Path

# BOTKIT_* variables would change what is measured; drop them before botkit reads the environment.
for _name in [name for name in os.environ if name.startswith("BOTKIT_")]:
    del os.environ[_name]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # fake_slack.py

from fake_slack import FakeSlack, running, slack_config

from botkit import hookimpl
from botkit.bot import Bot
from botkit.settings import settings_from_mapping

QUESTIONS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle stays upright.",
    "Describe a walk through a forest in autumn.",
    "What should I pack for a week of hiking?",
    "Tell me about the history of tea.",
    "Why is the sky blue? Explain it to a child.",
]


class GenerationClock:
    """A reply filter that changes nothing: it notes when the model's first text and its end arrive."""

    def __init__(self) -> None:
        self.first_text: dict[str, float] = {}
        self.end: dict[str, float] = {}

    @hookimpl(tryfirst=True)
    def botkit_filter_reply(self, message, text: str, final: bool) -> None:
        now = time.monotonic()
        if final:
            self.end[message.message_id] = now
        elif text:
            self.first_text.setdefault(message.message_id, now)


@dataclass
class Round:
    first_token: float
    first_edit: float
    generation_end: float
    final_text: float
    edits: int
    characters: int

    @property
    def first_edit_lag(self) -> float:
        return self.first_edit - self.first_token

    @property
    def final_lag(self) -> float:
        return self.final_text - self.generation_end


async def one_round(bot: Bot, slack: FakeSlack, clock: GenerationClock, channel: str, question: str) -> Round:
    event = slack.mention(channel, question)
    sent = time.monotonic()
    await slack.send_event(event)
    await slack.wait_for(lambda: event["ts"] in clock.end, timeout=300)
    await bot.pipeline.drain()  # the final text is delivered (and stored) by now
    thread = {m["ts"] for m in slack.thread(channel, event["ts"]) if m.get("bot_id") == slack.bot_id}
    writes = []
    for call in slack.calls:
        if call.method == "chat.postMessage" and call.args.get("thread_ts") == event["ts"]:
            writes.append(call)
        elif call.method == "chat.update" and call.args.get("ts") in thread:
            writes.append(call)
    posts = [call for call in writes if call.method == "chat.postMessage"]
    return Round(
        first_token=clock.first_text[event["ts"]] - sent,
        first_edit=posts[0].at - sent,
        generation_end=clock.end[event["ts"]] - sent,
        final_text=writes[-1].at - sent,
        edits=len(writes) - len(posts),
        characters=sum(len(m["text"]) for m in slack.thread(channel, event["ts"]) if m["ts"] in thread),
    )


async def benchmark(args: argparse.Namespace) -> list[Round]:
    clock = GenerationClock()
    data_dir = tempfile.TemporaryDirectory(prefix="botkit-bench-")
    async with FakeSlack() as slack:
        os.environ["BOTKIT_ADAPTERS__SLACK__BOT_TOKEN"] = slack.bot_token
        os.environ["BOTKIT_ADAPTERS__SLACK__APP_TOKEN"] = slack.app_token
        slack.add_user("U1", "bench")
        config = {
            **slack_config(slack, edit_interval=args.interval),
            "backend": {"type": "llamacpp", "max_tokens": args.tokens, "seed": 7, "n_threads": args.threads},
            "storage": {"data_dir": data_dir.name},
        }
        bot = Bot.load(settings_from_mapping(config), {"bench": clock})
        await bot.start()
        try:
            async with running(bot):
                await one_round(bot, slack, clock, "warm-up", "Say hello.")
                rounds = []
                for number in range(args.rounds):
                    rounds.append(
                        await one_round(bot, slack, clock, f"C{number}", QUESTIONS[number % len(QUESTIONS)])
                    )
        finally:
            await bot.stop()
            data_dir.cleanup()
    return rounds


def report(rounds: list[Round], interval: float) -> bool:
    def ms(values: list[float]) -> str:
        return (
            f"{statistics.median(values) * 1000:,.0f} ({min(values) * 1000:,.0f}-{max(values) * 1000:,.0f})"
        )

    print(f"{len(rounds)} rounds, edit interval {interval:g} s; median (min-max), ms from the user's message")
    print()
    print("| measure | ms |")
    print("|---|---:|")
    print(f"| model: first token | {ms([r.first_token for r in rounds])} |")
    print(f"| Slack: first edit (reply visible) | {ms([r.first_edit for r in rounds])} |")
    print(f"| first edit after first token | {ms([r.first_edit_lag for r in rounds])} |")
    print(f"| model: end of generation | {ms([r.generation_end for r in rounds])} |")
    print(f"| Slack: final text | {ms([r.final_text for r in rounds])} |")
    print(f"| final text after end of generation | {ms([r.final_lag for r in rounds])} |")
    print()
    edits = [r.edits for r in rounds]
    chars = [r.characters for r in rounds]
    print(f"edits per reply: {min(edits)}-{max(edits)}; reply length {min(chars)}-{max(chars)} characters")
    worst_first = max(r.first_edit_lag for r in rounds)
    worst_final = max(r.final_lag for r in rounds)
    first_ok = worst_first <= interval
    final_ok = worst_final <= interval
    for name, worst, ok in (
        ("first edit <= first token", worst_first, first_ok),
        ("final text <= end", worst_final, final_ok),
    ):
        verdict = "PASS" if ok else "FAIL"
        print(f"target {name} + {interval:g} s: {verdict} (worst {worst * 1000:.0f} ms)")
    return first_ok and final_ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=160, help="max_tokens per reply")
    parser.add_argument("--interval", type=float, default=1.0, help="[adapters.slack] edit_interval")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    ok = report(asyncio.run(benchmark(args)), args.interval)
    if args.check and not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
