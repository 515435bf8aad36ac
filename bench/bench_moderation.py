"""Moderation benchmark: what the moderation plugin costs per 2 KB message, on input and on streamed output.

Run from the repository root::

    .venv/bin/python bench/bench_moderation.py            # about 20 s on one core
    .venv/bin/python bench/bench_moderation.py --check    # exit 1 when a target is missed

A bot with the default plugins and the moderation plugin is started (scripted
backend, SQLite in a temporary folder), and the plugin's own hook functions
are timed as the pipeline calls them, so event recording is included:

- **input gate**: ``botkit_gate`` on a 2,048-character message;
- **output filter, final**: ``botkit_filter_reply(final=True)`` on a 2,048-character reply;
- **output, streamed**: the reply arrives in 4-character chunks (512 updates)
  and ``botkit_filter_reply(final=False)`` runs on the whole reply so far at
  each one, then once with ``final=True``: the per-reply total and each update.

Messages are English prose with, in one of three, an e-mail address, a phone
number, a card number or an API key, and in one of five an insult; a fixed
seed makes runs comparable. Two configurations: the defaults (empty
blocklist, classifier on), and a 200-word blocklist with 5 patterns. For
scale, alt-profanity-check's own ``predict_prob`` on one 2 KB text is timed too.

Blocklist recall on look-alike spellings: each of the 200 blocklist words
written with some of its letters swapped for characters that the look-alike
table (``plugins/moderation/confusables.py``) reads as them, picked at random
(fixed seed) from the table's inverse; the share found, with the table and
without it (only the hand-kept Cyrillic and Greek look-alikes and Unicode
normalisation), as it was before the table existed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

for _name in [name for name in os.environ if name.startswith("BOTKIT_")]:
    del os.environ[_name]

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import percentile, pin_to_cpu  # noqa: E402

from botkit.bot import Bot  # noqa: E402
from botkit.plugin_discovery import BUILTIN_PLUGINS  # noqa: E402
from botkit.plugins import moderation  # noqa: E402
from botkit.plugins.moderation import normalise  # noqa: E402
from botkit.plugins.moderation.classifier import load_model  # noqa: E402
from botkit.settings import settings_from_mapping  # noqa: E402
from botkit.types import Message, User  # noqa: E402

SIZE = 2048
CHUNK = 4
TARGET_INPUT_P99_MS = 5.0
TARGET_UPDATE_P99_MS = 1.0

PROSE = [
    "Sure, here is how to set up the service on a fresh machine.",
    "First, install the package with pip and create a configuration file next to it.",
    "The server listens on port 8080 by default; you can change that in the settings.",
    "If the build fails, clear the cache and run the tests again before you open an issue.",
    "Each request is logged with its latency, so slow endpoints are easy to spot later.",
    "Remember to restart the process after every change to the configuration!",
    "The report is generated nightly and sent to the team channel at 7 am.",
    "Could you check whether the backup finished and how large the archive was?",
    "In 2023 the project moved to a monorepo, which made releases a lot simpler.",
    "Thanks for the quick answer, that solved it for me.",
]
SPICE = [
    "You can reach me at jane.doe@example.org if anything breaks.",
    "Call the on-call engineer at +1 415 555 2671 after midnight.",
    "The test card 4111 1111 1111 1111 always succeeds in the sandbox.",
    "Use the token ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8 for the mirror.",
]
INSULTS = ["Honestly, that was a stupid idea.", "Shut up and fix it, you idiot."]


def make_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < SIZE:
            parts.append(rng.choice(PROSE))
            if rng.random() < 0.1:
                parts.append("\n")
        if i % 3 == 0:
            parts.insert(rng.randrange(len(parts)), rng.choice(SPICE))
        if i % 5 == 0:
            parts.insert(rng.randrange(len(parts)), rng.choice(INSULTS))
        texts.append(" ".join(parts)[:SIZE])
    return texts


def blocklist(words: int) -> list[str]:
    rng = random.Random(7)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(4, 9))) for _ in range(words)]


CONFIGS = {
    "defaults": {},
    "200-word blocklist, 5 patterns": {
        "blocklist": blocklist(200),
        "blocklist_patterns": [
            r"\bacme\s*corp\b",
            r"\bproject\s+x\d+\b",
            r"\bzz+top\b",
            r"\bwid[gj]et\b",
            r"\bqux+\b",
        ],
    },
}


@dataclass
class Row:
    name: str
    unit: str
    samples_ms: list[float]

    def cells(self) -> tuple[str, str, str, str]:
        ordered = sorted(self.samples_ms)
        return (
            f"{statistics.median(ordered):.3f}",
            f"{percentile(ordered, 0.99):.3f}",
            f"{statistics.fmean(ordered):.3f}",
            f"{len(ordered):,}",
        )


def message(text: str, index: int) -> Message:
    return Message(text=text, author=User(id=f"user{index % 20}"), platform="bench", channel_id="general")


async def measure(settings: dict, texts: list[str], data_dir: Path) -> list[Row]:
    config = {
        "backend": {"type": "scripted"},
        "storage": {"data_dir": str(data_dir)},
        "plugins": {"moderation": settings},
    }
    extra = None if "moderation" in BUILTIN_PLUGINS else {"moderation": moderation}
    bot = Bot.load(settings_from_mapping(config), extra_plugins=extra)
    await bot.start()
    gate, reply_filter = moderation.botkit_gate, moderation.botkit_filter_reply
    clock = time.perf_counter
    try:
        gated, final, streamed, updates = [], [], [], []
        for _ in range(2):  # the first round warms up caches and the database
            gated.clear(), final.clear(), streamed.clear(), updates.clear()
            gc.collect()
            for i, text in enumerate(texts):
                msg = message(text, i)
                started = clock()
                await gate(message=msg, bot=bot)
                gated.append((clock() - started) * 1000)
                started = clock()
                await reply_filter(message=msg, text=text, final=True, bot=bot)
                final.append((clock() - started) * 1000)
                await asyncio.sleep(0)  # let the event writer run, as between real messages
            for i, text in enumerate(texts[: len(texts) // 4]):
                msg = message("hello", i)
                total = 0.0
                for end in range(CHUNK, len(text) + CHUNK, CHUNK):
                    started = clock()
                    await reply_filter(message=msg, text=text[:end], final=False, bot=bot)
                    spent = (clock() - started) * 1000
                    updates.append(spent)
                    total += spent
                started = clock()
                await reply_filter(message=msg, text=text, final=True, bot=bot)
                streamed.append(total + (clock() - started) * 1000)
                await asyncio.sleep(0)
        assert await moderation.event_log(bot).flush(30)
    finally:
        await bot.stop()
    return [
        Row("input gate", "per 2 KB message", gated),
        Row("output filter, final", "per 2 KB reply", final),
        Row(f"output, streamed ({SIZE // CHUNK} updates)", "per 2 KB reply", streamed),
        Row("output, streamed", "per update", updates),
    ]


def library_rows(texts: list[str]) -> list[Row]:
    from profanity_check import predict_prob

    model = load_model()
    library, ours = [], []
    for text in texts[:200]:
        started = time.perf_counter()
        predict_prob([text])
        library.append((time.perf_counter() - started) * 1000)
        folded = text.lower()
        started = time.perf_counter()
        model.score(folded)
        ours.append((time.perf_counter() - started) * 1000)
    return [
        Row("alt-profanity-check predict_prob", "per 2 KB text", library),
        Row("same model, scored in pure Python", "per 2 KB text", ours),
    ]


def lookalike_spellings(words: list[str], count: int, seed: int) -> list[tuple[str, str]]:
    """(word, the word with some letters written as look-alikes), at least one letter swapped in each."""
    inverse: dict[str, list[str]] = {}
    for code, letter in sorted(normalise.CONFUSABLES.items()):
        inverse.setdefault(letter, []).append(chr(code))
    rng = random.Random(seed)
    spellings = []
    for _ in range(count):
        word = rng.choice(words)
        swappable = [i for i, letter in enumerate(word) if letter in inverse]
        swapped = set(rng.sample(swappable, rng.randint(1, len(swappable))))
        spelled = "".join(rng.choice(inverse[c]) if i in swapped else c for i, c in enumerate(word))
        spellings.append((word, spelled))
    return spellings


def recall(words: list[str], spellings: list[tuple[str, str]], with_table: bool) -> float:
    saved = normalise.CONFUSABLES
    normalise._FOLD.clear()  # the translate table caches each character's reading
    if not with_table:
        normalise.CONFUSABLES = {}
    try:
        blocklist = normalise.Blocklist(words)
        found = sum(
            any(hit.entry == word for hit in blocklist.find(normalise.fold(f"well {spelled} then").text))
            for word, spelled in spellings
        )
    finally:
        normalise.CONFUSABLES = saved
        normalise._FOLD.clear()
    return found / len(spellings)


def print_table(title: str, rows: list[Row]) -> None:
    print(f"  {title}")
    print("  | case | unit | p50 ms | p99 ms | mean ms | samples |")
    print("  |---|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"  | {row.name} | {row.unit} | " + " | ".join(row.cells()) + " |")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--messages", type=int, default=400, help="2 KB messages per configuration (default 400)"
    )
    parser.add_argument("--cpu", type=int, default=0, help="the CPU to pin to (default 0)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    pinned = pin_to_cpu(args.cpu)
    texts = make_texts(args.messages, args.seed)
    print("botkit moderation benchmark")
    print(f"  python {platform.python_version()} on {platform.machine()}, {pinned}")
    print(f"  {len(texts)} messages of {SIZE} characters; streamed replies in {CHUNK}-character chunks")
    print()
    results: dict[str, list[Row]] = {}
    with tempfile.TemporaryDirectory(prefix="botkit-bench-moderation-") as folder:
        for index, (name, settings) in enumerate(CONFIGS.items()):
            results[name] = asyncio.run(measure(settings, texts, Path(folder) / str(index)))
            print_table(name, results[name])
    print_table("the classifier alone, for scale", library_rows(texts))
    words = CONFIGS["200-word blocklist, 5 patterns"]["blocklist"]
    spellings = lookalike_spellings(words, 5000, args.seed)
    print(f"  blocklist recall on {len(spellings):,} look-alike spellings of the 200 words")
    print(f"  ({len(normalise.CONFUSABLES):,} characters in the look-alike table; e.g. {spellings[0][1]!r})")
    print(f"    without the look-alike table: {recall(words, spellings, with_table=False):.1%}")
    print(f"    with it:                      {recall(words, spellings, with_table=True):.1%}")
    print()
    ok = True
    for name, rows in results.items():
        input_p99 = percentile(sorted(rows[0].samples_ms), 0.99)
        update_p99 = percentile(sorted(rows[3].samples_ms), 0.99)
        for label, value, target in (
            (f"{name}: input p99 < {TARGET_INPUT_P99_MS} ms", input_p99, TARGET_INPUT_P99_MS),
            (f"{name}: streamed update p99 < {TARGET_UPDATE_P99_MS} ms", update_p99, TARGET_UPDATE_P99_MS),
        ):
            passed = value < target
            ok &= passed
            print(f"  target: {label:<58} {'PASS' if passed else 'FAIL'} ({value:.3f} ms)")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
