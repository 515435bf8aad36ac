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
import sys
import tempfile
import time
from pathlib import Path

# BOTKIT_* variables would change what is measured; drop them before botkit reads the environment.
for _name in [name for name in os.environ if name.startswith("BOTKIT_")]:
    del os.environ[_name]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # fake_slack.py

from delivery_timing import QUESTIONS, GenerationClock, Round, report
from fake_slack import FakeSlack, running, slack_config

from botkit.bot import Bot
from botkit.settings import settings_from_mapping


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=160, help="max_tokens per reply")
    parser.add_argument("--interval", type=float, default=1.0, help="[adapters.slack] edit_interval")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    ok = report("Slack", asyncio.run(benchmark(args)), args.interval)
    if args.check and not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
