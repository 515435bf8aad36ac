"""Discord delivery benchmark: what a Discord user sees of a streamed reply, against the model's own timing.

Run from the repository root::

    .venv/bin/python bench/bench_discord.py            # about 30 s on two cores
    .venv/bin/python bench/bench_discord.py --check    # exit 1 when a target is missed

The real Discord adapter (discord.py's gateway client and REST) runs against the
fake Discord of ``tests/fake_discord.py`` on 127.0.0.1, with the embedded
SmolLM2 model through llama.cpp behind it. Each round a user mentions the bot
in a new thread (no history); the fake notes when every REST call arrives, so
the times below are the ones at which Discord would show the text:

- **first edit**: the reply's first ``POST /channels/{id}/messages`` (its first visible text);
- **final**: the reply's last ``POST`` / ``PATCH`` (the final text);
- **first token** / **end**: when the model's first text, and its end, reach the
  pipeline's reply filters (a plugin that only looks, on the same clock).

All are measured from the moment the fake sends the message over the gateway.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # fake_discord.py

from delivery_timing import QUESTIONS, GenerationClock, Round, report
from fake_discord import FakeDiscord

from botkit.bot import Bot
from botkit.settings import settings_from_mapping


async def one_round(bot: Bot, discord: FakeDiscord, clock: GenerationClock, question: str) -> Round:
    thread = await discord.open_thread(question[:40])
    sent = time.monotonic()
    asked = await discord.say(question, channel=thread, mention_bot=True)
    await discord.wait_for(lambda: asked["id"] in clock.end, timeout=300, what="the end of generation")
    await bot.pipeline.drain()  # the final text is delivered (and stored) by now
    writes = [
        call
        for call in discord.calls
        if call.path.startswith(f"/channels/{thread}/messages") and call.method in ("POST", "PATCH")
    ]
    posts = [call for call in writes if call.method == "POST"]
    return Round(
        first_token=clock.first_text[asked["id"]] - sent,
        first_edit=posts[0].at - sent,
        generation_end=clock.end[asked["id"]] - sent,
        final_text=writes[-1].at - sent,
        edits=len(writes) - len(posts),
        characters=sum(len(message["content"]) for message in discord.bot_messages(thread)),
    )


async def benchmark(args: argparse.Namespace) -> list[Round]:
    clock = GenerationClock()
    data_dir = tempfile.TemporaryDirectory(prefix="botkit-bench-")
    async with FakeDiscord() as discord:
        os.environ["BOTKIT_ADAPTERS__DISCORD__TOKEN"] = discord.token
        config = {
            "adapters": {"discord": discord.adapter_config(edit_interval=args.interval)},
            "backend": {"type": "llamacpp", "max_tokens": args.tokens, "seed": 7, "n_threads": args.threads},
            "storage": {"data_dir": data_dir.name},
        }
        bot = Bot.load(settings_from_mapping(config), {"bench": clock})
        await bot.start()
        adapter = bot.make_adapter("discord")
        running = asyncio.create_task(adapter.run())
        try:
            await asyncio.wait_for(adapter.connected.wait(), 30)
            await one_round(bot, discord, clock, "Say hello.")  # warm-up
            rounds = [
                await one_round(bot, discord, clock, QUESTIONS[n % len(QUESTIONS)])
                for n in range(args.rounds)
            ]
        finally:
            await adapter.close()
            await running
            await bot.stop()
            data_dir.cleanup()
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=160, help="max_tokens per reply")
    parser.add_argument("--interval", type=float, default=1.0, help="[adapters.discord] edit_interval")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    ok = report("Discord", asyncio.run(benchmark(args)), args.interval)
    if args.check and not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
