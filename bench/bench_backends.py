"""Backend overhead benchmark: botkit's openai and transformers backends against their engines called directly.

Run from the repository root::

    .venv/bin/python bench/bench_backends.py --backend openai          # ~1 min
    .venv/bin/python bench/bench_backends.py --backend transformers    # needs botkit[gpu]
    .venv/bin/python bench/bench_backends.py --backend openai --check  # exit 1 when a target is missed

bench_generation.py does the same for the default llama.cpp backend. Here:

- **openai**: ``python -m llama_cpp.server`` serves the embedded SmolLM2 GGUF on
  127.0.0.1. The raw side POSTs the very request body botkit's backend builds
  to ``/v1/chat/completions`` with an httpx2 client and reads the event stream
  itself; the botkit side is ``Bot.handle`` with the ``openai`` backend.
- **transformers**: the embedded GGUF dequantized by transformers, on CPU here.
  The raw side runs ``model.generate`` with a ``TextIteratorStreamer`` on a
  thread, from the same prompt text and with the same greedy settings; the
  botkit side is ``Bot.handle`` with the ``transformers`` backend.

Sampling is greedy, rounds alternate which side goes first, and both sides must
produce the same text and the same number of streamed pieces. Targets (issue 3):
tokens/s at least 0.97 of the engine's, under 10 ms added to the first token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

for _name in [name for name in os.environ if name.startswith("BOTKIT_")]:
    del os.environ[_name]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench_generation import (
    QUESTION,
    TARGET_ADDED_FIRST_TOKEN_MS,
    TARGET_TOKENS_PER_S_RATIO,
    RecordReplies,
    Run,
    Side,
    botkit_generate,
    clock,
)

from botkit.backends.llamacpp import embedded_model_path
from botkit.backends.openai_http import USAGE_OPTION
from botkit.bot import Bot
from botkit.settings import settings_from_mapping
from botkit.types import Prompt, Role, Turn


async def raw_openai(client, backend, prompt: Prompt, params) -> Run:
    """The request botkit's openai backend sends, streamed with a kept-alive httpx2 client."""
    path, body = backend._request(prompt, params)
    if backend.asks_for_usage:  # as botkit asks, for the server's token counts
        body = {**body, "stream_options": USAGE_OPTION}
    run = Run(clock())
    async with client.stream("POST", path, json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            for choice in json.loads(line[5:])["choices"]:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    run.arrivals.append(clock())
                    run.text += piece
    run.ended = clock()
    return run


def raw_transformers(model, tokenizer, text: str, params) -> Run:
    """``model.generate`` with a streamer on a thread, as a transformers user would write it."""
    from transformers import TextIteratorStreamer

    run = Run(clock())
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    worker = threading.Thread(
        target=model.generate,
        kwargs={
            **inputs,
            "streamer": streamer,
            "max_new_tokens": params.max_tokens,
            "do_sample": False,
            "repetition_penalty": params.repeat_penalty,
        },
    )
    worker.start()
    for piece in streamer:
        if piece:
            run.arrivals.append(clock())
            run.text += piece
    worker.join()
    run.ended = clock()
    return run


async def benchmark(args: argparse.Namespace, base_url: str | None) -> tuple[Side, Side, dict[str, object]]:
    backend_config: dict[str, object] = {"temperature": 0, "seed": args.seed, "max_tokens": args.tokens}
    if args.backend == "openai":
        backend_config |= {"type": "openai", "base_url": base_url, "model": "smollm2", "context_window": 2048}
    else:
        backend_config |= {"type": "transformers", "device": "cpu"}
    recorder = RecordReplies()
    data_dir = tempfile.TemporaryDirectory(prefix="botkit-bench-")
    config = {
        "backend": backend_config,
        "storage": {"data_dir": data_dir.name},
        "plugins": {name: {"enabled": False} for name in args.disable},
    }
    bot = Bot.load(settings_from_mapping(config), {"bench": recorder})
    backend = bot.backend
    cleanup = []
    await bot.start()
    try:
        params = bot.backend_settings.sampling()
        prompt = Prompt(system=bot.settings.bot.system_prompt, turns=[Turn(Role.USER, QUESTION)])
        if args.backend == "openai":
            import httpx2

            # Like botkit's backend, one client whose connection is reused from run to run.
            client = httpx2.AsyncClient(base_url=backend.base_url, timeout=60)
            cleanup.append(client.aclose)

            async def raw() -> Run:
                return await raw_openai(client, backend, prompt, params)
        else:
            # The backend's own loaded model and tokenizer: one copy in memory, same weights.
            model, tokenizer, text = backend.model, backend.tokenizer, backend.render(prompt)

            async def raw() -> Run:
                return await asyncio.to_thread(raw_transformers, model, tokenizer, text, params)

        raw_side, bot_side = Side(f"raw {args.backend}"), Side("botkit Bot.handle")
        reference = await raw()
        await botkit_generate(bot, "warm-up")
        for round_number in range(args.rounds):
            channel = f"bench-{round_number}"
            if round_number % 2 == 0:
                raw_side.runs.append(await raw())
                bot_side.runs.append(await botkit_generate(bot, channel))
            else:
                bot_side.runs.append(await botkit_generate(bot, channel))
                raw_side.runs.append(await raw())
        for run in raw_side.runs + bot_side.runs:
            assert run.text.strip() == reference.text.strip(), f"different output: {run.text!r}"
        setup = {"model": backend.model_name, "tokens": reference.tokens, "plugins": sorted(bot.host.pm_names())}
    finally:
        for close in cleanup:
            await close()
        await bot.stop()
        data_dir.cleanup()
    return raw_side, bot_side, setup


def report(args: argparse.Namespace, raw: Side, through_bot: Side, setup: dict[str, object]) -> bool:
    print(f"botkit backend benchmark: {args.backend}")
    print(f"  python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print(
        f"  model {setup['model']}; greedy, max_tokens {args.tokens}, {setup['tokens']} pieces streamed per run; "
        f"{args.rounds} rounds alternating + 1 warm-up each"
    )
    print(f"  plugins loaded: {', '.join(setup['plugins'])}")  # type: ignore[arg-type]
    print()
    print(f"  {'path':<22} {'first token ms':>14} {'(min-max)':>13} {'decode tok/s':>12} {'(min-max)':>13}")
    for side in (raw, through_bot):
        print(
            f"  {side.name:<22} {side.median('first_token_ms'):>14.1f} {side.spread('first_token_ms'):>13} "
            f"{side.median('decode_tokens_per_s'):>12.1f} {side.spread('decode_tokens_per_s'):>13}"
        )
    pairs = list(zip(raw.runs, through_bot.runs, strict=True))
    ratios = [b.decode_tokens_per_s / r.decode_tokens_per_s for r, b in pairs]
    added = [b.first_token_ms - r.first_token_ms for r, b in pairs]
    ratio, first = statistics.median(ratios), statistics.median(added)
    print()
    print(f"  tokens/s botkit / raw (median of per-round ratios): {ratio:.3f} ({min(ratios):.3f} to {max(ratios):.3f})")
    print(f"  added time to first token (median per round): {first:+.1f} ms ({min(added):+.1f} to {max(added):+.1f})")
    checks = [
        (f"tokens/s ratio >= {TARGET_TOKENS_PER_S_RATIO}", ratio >= TARGET_TOKENS_PER_S_RATIO, f"{ratio:.3f}"),
        (
            f"added first-token time < {TARGET_ADDED_FIRST_TOKEN_MS:g} ms",
            first < TARGET_ADDED_FIRST_TOKEN_MS,
            f"{first:+.1f} ms",
        ),
    ]
    print()
    for label, passed, value in checks:
        print(f"  target: {label:<36} {'PASS' if passed else 'FAIL'} ({value})")
    return all(passed for _, passed, _ in checks)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["openai", "transformers"], required=True)
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens per run (default 64)")
    parser.add_argument("--rounds", type=int, default=7, help="runs of each side (default 7)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--disable", action="append", default=[], metavar="PLUGIN")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a target is missed")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.backend == "openai":
        from openai_server import LlamaCppServer

        with tempfile.TemporaryDirectory(prefix="botkit-bench-server-") as folder:
            server = LlamaCppServer(embedded_model_path(), Path(folder) / "server.log")
            server.start()
            try:
                raw, through_bot, setup = asyncio.run(benchmark(args, server.base_url))
            finally:
                server.stop()
    else:
        raw, through_bot, setup = asyncio.run(benchmark(args, None))
    met = report(args, raw, through_bot, setup)
    return 0 if met or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
