"""Serving-engine benchmark: botkit's llama.cpp backend against llama.cpp's own server and benchmarks.

Run from the repository root::

    .venv/bin/python bench/bench_engine.py                  # about 4 minutes on two quiet cores
    .venv/bin/python bench/bench_engine.py --quick          # one round, 5 turns: about 2 minutes
    .venv/bin/python bench/bench_engine.py --check          # exit 1 when a target is missed
    .venv/bin/python bench/bench_engine.py --parts batch,single --engine single

The first run builds ``llama-bench``, ``llama-server`` and ``llama-batched-bench``
from the llama.cpp that the installed llama-cpp-python vendors (``llamacpp_tools.py``);
later runs reuse them. Both sides load the embedded SmolLM2-135M Q4_1 with the same
threads and get the same prompt text, greedy. Each part prints its rows:

- ``batch``: 20 conversations at once through ``Bot.handle`` against
  ``llama-server -np 20`` answering the same 20 rendered prompts over HTTP; the
  wait to first text; every reply against the same conversation run alone.
- ``single``: one conversation's decode tokens/s against ``llama-bench``'s tg,
  and its first-token time less the prompt's evaluation time (``llama-bench``'s
  pp at that prompt length).
- ``history``: time to first token at turn 10 of a conversation with about
  1,500 tokens of history, five other conversations taking a turn between each
  of its turns; against evaluating that whole prompt from scratch.
- ``prefill``: a 2,000-token prompt arriving while 10 replies stream: the
  longest gap between two chunks of any stream.
- ``memory``: resident memory (``VmRSS``, peak ``VmHWM``) of a process running
  20 sequences at n_ctx 2048 against llama-server's, and of one whose saved
  conversation caches fill ``kv_cache_mb``; each in a process of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

# BOTKIT_* variables would change what is measured; drop them before botkit reads the environment.
for _name in [name for name in os.environ if name.startswith("BOTKIT_")]:
    del os.environ[_name]

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx2  # noqa: E402
from llamacpp_tools import (  # noqa: E402
    LlamaServer,
    LlamaTools,
    ToolBuildError,
    batched_bench,
    ensure_tools,
    llama_bench,
    rss_mb,
)

from botkit import hookimpl  # noqa: E402
from botkit.backend import Backend  # noqa: E402
from botkit.backends.llamacpp import LlamaCppSettings, create_backend, embedded_model_path  # noqa: E402
from botkit.bot import Bot  # noqa: E402
from botkit.settings import settings_from_mapping  # noqa: E402
from botkit.types import Message, Prompt, Reply, ReplyStatus, Responder, Role, Turn, User  # noqa: E402

PARTS = ("batch", "single", "history", "prefill", "memory")
N_CTX = 2048
CONVERSATIONS = 20
BATCH_TOKENS = 48
SINGLE_TOKENS = 128
HISTORY_TOKENS = 48
OTHERS = 5
STREAMS = 10
LONG_PROMPT_TOKENS = 1990  # with its 16 new tokens it nearly fills the 2,048 one conversation may use
SYSTEM = "You are a helpful assistant."  # for the parts that call the backend without a Bot
TOPICS = (
    "a dragon who learns to read", "a lighthouse keeper and a lost whale", "a robot that plants a forest",
    "a baker who bakes bread for ghosts", "two rival chess clocks", "a cat who runs a post office",
    "a river that changes its mind", "a girl who maps the stars", "an old bridge that remembers",
    "a fox who collects keys", "a snowman in the desert", "a painter who only paints doors",
    "a train that never arrives", "a bee who is afraid of flowers", "a clockmaker's last clock",
    "a library under the sea", "a knight who cannot ride", "an island made of books",
    "a violin that plays by itself", "a mountain that wants to travel",
)  # fmt: skip
NOTE_SENTENCES = (
    "The committee met on Tuesday to review the budget for the coming year and the plans for the new library.",
    "Several members asked why the repairs to the roof of the old school had been delayed for so long.",
    "The treasurer explained that the contractor had found more damage than expected once work began.",
    "A resident suggested holding a public meeting so that families could ask their own questions.",
    "The chair agreed and proposed a date in the second week of next month, in the evening.",
    "Volunteers offered to print notices and to put them up in shops, cafes and the railway station.",
    "Someone pointed out that the bus service stops early on weekdays, which would keep some people away.",
    "It was decided to ask the council for a later bus on the evening of the meeting.",
)
clock = time.perf_counter


def story(index: int) -> str:
    return f"Write a long story about {TOPICS[index % len(TOPICS)]}."


QUESTIONS = (
    "Who asked about the roof?", "What did the treasurer say?", "When is the public meeting?",
    "Who will put up the notices?", "What is the problem with the bus?", "What will the council be asked?",
    "Which meeting was the longest?", "Is anything still undecided?", "What should I tell my neighbours?",
)  # fmt: skip


def note(turn: int) -> str:
    """About 125 tokens of meeting minutes, different for each ``turn``."""
    start = turn % len(NOTE_SENTENCES)
    sentences = (NOTE_SENTENCES[start:] + NOTE_SENTENCES[:start])[:6]
    return f"Minutes of meeting number {turn}: " + " ".join(sentences) + " Summarise them briefly."


@dataclass
class Row:
    part: str
    measured: str
    baseline: str = "-"
    ratio: str = "-"
    target: str = "report"
    passed: bool | None = None  # None: reported, no target

    @property
    def result(self) -> str:
        return "info" if self.passed is None else ("PASS" if self.passed else "FAIL")


@dataclass
class Run:
    """What the parts share: the options, llama.cpp's tools, and the rows and notes they report."""

    args: argparse.Namespace
    tools: LlamaTools
    model: Path
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    server_rss: tuple[float, float] | None = None  # llama-server's, from the batch part

    def row(self, *args, **kwargs) -> None:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        print(
            f"    {row.part}: {row.measured} (baseline {row.baseline}, {row.ratio}) {row.target}: {row.result}"
        )

    def note(self, text: str) -> None:
        self.notes.append(text)

    def llama_bench(self, prompt: int = 0, generate: int = 0, depth: int = 0) -> dict[str, float]:
        repetitions = 2 if self.args.quick else 3
        return llama_bench(
            self.tools, self.model, self.args.threads, [prompt], generate, repetitions, depth, self.flash_attn,
            self.cache_type,
        )  # fmt: skip

    @property
    def flash_attn(self) -> bool:
        return self.args.flash_attn == "on"

    @property
    def cache_type(self) -> str:
        return cache_type(self.args)


def cache_type(args: argparse.Namespace) -> str:
    """The KV cache type botkit runs with, and the tools alike: as [backend] kv_cache_type resolves."""
    return args.kv_cache_type or ("bf16" if args.flash_attn == "on" else "f16")


def backend_config(args: argparse.Namespace, max_tokens: int, parallel: int, **more: object) -> dict:
    return {
        "type": "llamacpp", "engine": args.engine, "parallel": parallel, "n_ctx": N_CTX,
        "n_threads": args.threads, "n_threads_batch": args.threads, "temperature": 0, "seed": args.seed,
        "flash_attn": args.flash_attn == "on", "kv_cache_type": cache_type(args),
        "max_tokens": max_tokens, "queue_limit": 100, **more,
    }  # fmt: skip


# -- through a whole Bot ------------------------------------------------------------


@dataclass
class Talk:
    """One message to the bot: when it arrived, when each streamed update came, and the final text."""

    channel: str
    arrived: float = 0.0
    updates: list[float] = field(default_factory=list)
    text: str = ""
    finished: float = 0.0  # when the final text came (updates come every [bot] stream_interval)
    status: ReplyStatus | None = None
    notices: list[str] = field(default_factory=list)

    @property
    def wait(self) -> float:
        return self.updates[0] - self.arrived


class TimingResponder(Responder):
    """A console-like responder that notes when each update of the reply comes."""

    def __init__(self, talk: Talk) -> None:
        self.talk = talk

    async def send(self, text: str) -> None:
        self.talk.notices.append(text)  # "The model is busy; N requests ahead of you."

    async def update(self, text: str) -> None:
        self.talk.updates.append(clock())

    async def finish(self, text: str, status: ReplyStatus) -> None:
        self.talk.text, self.talk.status, self.talk.finished = text, status, clock()


class RecordReplies:
    """An after-reply plugin that only looks: each channel's last reply, for its token counts."""

    def __init__(self) -> None:
        self.replies: dict[str, Reply] = {}

    @hookimpl
    def botkit_after_reply(self, message: Message, reply: Reply) -> None:
        self.replies[message.channel_id] = reply


@asynccontextmanager
async def running_bot(args, max_tokens: int, history_tokens: int | None = None) -> AsyncIterator[tuple]:
    recorder = RecordReplies()
    data_dir = tempfile.TemporaryDirectory(prefix="botkit-bench-")
    plugins: dict[str, dict] = {"ratelimit": {"enabled": False}}  # many users at once is the point
    if history_tokens is not None:
        plugins["memory"] = {"history_tokens": history_tokens}
    backend = backend_config(args, max_tokens, CONVERSATIONS)
    config = {"backend": backend, "storage": {"data_dir": data_dir.name}, "plugins": plugins}
    bot = Bot.load(settings_from_mapping(config), {"bench": recorder})
    await bot.start()
    try:
        yield bot, recorder
    finally:
        await bot.stop()
        data_dir.cleanup()


async def ask(bot: Bot, text: str, channel: str) -> Talk:
    talk = Talk(channel, clock())
    message = Message(text=text, author=User(id=channel, name=channel), platform="bench", channel_id=channel)
    await bot.handle(message, TimingResponder(talk))
    return talk


async def ask_together(bot: Bot, requests: list[tuple[str, str]]) -> tuple[list[Talk], float]:
    started = clock()
    tasks = []
    for text, channel in requests:
        tasks.append(asyncio.ensure_future(ask(bot, text, channel)))
        await asyncio.sleep(0)  # each reaches the bot before the next, as from an adapter's socket
    talks = await asyncio.gather(*tasks)
    return talks, clock() - started


async def part_batch(run: Run) -> None:
    args, questions = run.args, [story(i) for i in range(CONVERSATIONS)]
    params = {"n_predict": BATCH_TOKENS, "temperature": 0, "top_k": 40, "top_p": 0.95, "repeat_penalty": 1.1}
    log = Path(tempfile.gettempdir()) / "botkit-bench-llama-server.log"
    rounds, server_rounds = [], []
    # Both stay loaded and the rounds alternate, so that other load on the machine hits both sides.
    server = LlamaServer(
        run.tools, run.model, args.threads, CONVERSATIONS, N_CTX, log, run.flash_attn, run.cache_type
    )
    with server:
        async with (
            running_bot(args, BATCH_TOKENS) as (bot, recorder),
            httpx2.AsyncClient(base_url=server.base_url, timeout=600) as client,
        ):

            async def complete(text: str) -> dict:
                response = await client.post(
                    "/completion", json={"prompt": text, "seed": args.seed, **params}
                )
                response.raise_for_status()
                return response.json()

            system = bot.settings.bot.system_prompt
            texts = [bot.backend.render(Prompt(system, [Turn(Role.USER, q)])) for q in questions]
            await ask(bot, questions[0], "warm-up")
            await complete(texts[0])
            alone = [await ask(bot, q, f"alone-{i}") for i, q in enumerate(questions)]
            prompt_tokens = [recorder.replies[f"alone-{i}"].prompt_tokens for i in range(CONVERSATIONS)]
            for number in range(args.rounds):
                talks, seconds = await ask_together(
                    bot, [(q, f"together-{number}-{i}") for i, q in enumerate(questions)]
                )
                rounds.append(
                    (sum(recorder.replies[t.channel].completion_tokens for t in talks) / seconds, talks)
                )
                started = clock()
                bodies = await asyncio.gather(*(complete(text) for text in texts))
                server_rounds.append(
                    (sum(b["tokens_predicted"] for b in bodies) / (clock() - started), bodies)
                )
        run.server_rss = server.rss_mb()
    rate, talks = max(rounds, key=lambda r: r[0])
    server_rate, bodies = max(server_rounds, key=lambda r: r[0])

    ratio = rate / server_rate
    name = f"{CONVERSATIONS} at once: tokens/s, Bot.handle vs llama-server -np {CONVERSATIONS}"
    run.row(name, f"{rate:.1f}", f"{server_rate:.1f}", f"{ratio:.2f}x", ">= 1.00x", ratio >= 1.0)
    waits = sorted(t.wait for t in talks)
    median = statistics.median(waits)
    measured = f"{median:.2f} s (max {waits[-1]:.2f})"
    run.row(
        f"{CONVERSATIONS} at once: wait to first text, median",
        measured,
        target="<= 1.0 s",
        passed=median <= 1.0,
    )
    answered = sum(1 for t in talks if t.status is not None and t.status.in_history and t.text.strip())
    same = sum(1 for a, t in zip(alone, talks, strict=True) if a.text == t.text)
    n = len(talks)
    ok = answered == same == n
    run.row(
        f"{CONVERSATIONS} at once: answered, same reply as alone",
        f"{answered}/{n}, {same}/{n}",
        target="all",
        passed=ok,
    )
    server_same = sum(1 for a, b in zip(alone, bodies, strict=True) if a.text.strip() == b["content"].strip())
    run.note(
        f"batch: rounds botkit {', '.join(f'{r:.1f}' for r, _ in rounds)}, llama-server "
        f"{', '.join(f'{r:.1f}' for r, _ in server_rounds)} tokens/s (the best of each counts); "
        f"{sum(1 for t in talks if t.notices)} told their place in line; llama-server's text equals botkit's "
        f"for {server_same} of {n}; prompt tokens equal both ways: "
        f"{'yes' if [b['tokens_evaluated'] for b in bodies] == prompt_tokens else 'no'}"
    )


async def part_single(run: Run) -> None:
    from botkit.plugins.memory import memory

    runs = []
    async with running_bot(run.args, SINGLE_TOKENS) as (bot, recorder):
        await ask(bot, story(0), "warm-up")
        for number in range(run.args.rounds + 1):
            # llama-bench warms up before it measures, and the llama-bench run before this round
            # left the CPU's caches full of its own copy of the model: a short question first.
            await ask(bot, "Say hello.", f"warm-{number}")
            await memory(bot).flush(60.0)  # its exchange stored: a quiet bot when the message comes
            before = bot.backend.load()
            talk = await ask(bot, story(number + 1), f"single-{number}")
            after = bot.backend.load()
            reply = recorder.replies[talk.channel]
            prompt = reply.prompt_tokens
            evaluated = after.evaluated_tokens - before.evaluated_tokens if after and before else prompt
            reused = prompt - evaluated  # the system prompt, from the cache of the round before
            # From the first text to the final one, which comes after the last token and the reply's
            # final filters (the updates between come every [bot] stream_interval, not every token).
            decode = (reply.completion_tokens - 1) / (talk.finished - talk.updates[0])
            # llama-bench right after each run, so that the machine's load of the moment hits both.
            # The same decode work: the reply's tokens follow the prompt's, and attention over those
            # 40 positions makes each step slower than from an empty cache (by 6% on a 2-core VM).
            tg = run.llama_bench(0, SINGLE_TOKENS, depth=prompt)[f"tg{SINGLE_TOKENS}"]
            # The same prompt work in llama.cpp alone: the tokens botkit evaluated, after those it reused.
            pp = run.llama_bench(evaluated, 0, depth=reused)[f"pp{evaluated}"]
            runs.append((decode, tg, talk.wait - evaluated / pp, evaluated, evaluated / pp, reused))
        reported = after is not None
    decode, tg = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    ratio = statistics.median(r[0] / r[1] for r in runs)
    depth = statistics.median(r[3] + r[5] for r in runs)
    name = f"one conversation: decode tokens/s vs llama-bench tg{SINGLE_TOKENS} after {depth:.0f} prompt tokens"
    run.row(name, f"{decode:.1f}", f"{tg:.1f}", f"{ratio:.2f}x", ">= 0.90x", ratio >= 0.9)
    added = statistics.median(r[2] for r in runs) * 1000
    evaluated, evaluation = statistics.median(r[3] for r in runs), statistics.median(r[4] for r in runs) * 1000
    reused = statistics.median(r[5] for r in runs)
    name = f"one conversation: first token less prompt evaluation ({evaluated:.0f} tokens after {reused:.0f} cached)"
    run.row(name, f"{added:+.1f} ms", f"{evaluation:.1f} ms pp", target="< 10 ms", passed=added < 10)
    run.note(
        f"single: per round decode {', '.join(f'{r[0]:.1f}/{r[1]:.1f}' for r in runs)} tokens/s (botkit/llama-bench, "
        f"the ratio is the median of the rounds'); added first-token ms {', '.join(f'{r[2] * 1000:+.1f}' for r in runs)}"
    )
    if not reported:
        run.note(
            "single: the backend reports no evaluated tokens, so the whole prompt counts as evaluated; "
            "llama-cpp-python reuses a cached common prefix (the system prompt), which hides part of the added time"
        )


async def part_history(run: Run) -> None:
    # A chat about a document: the minutes first (about 870 tokens), then short questions, so that
    # each later turn brings few new tokens and the history grows to about 1,500 by turn 10.
    messages = [
        "Here are the minutes of our last meetings. " + " ".join(note(i) for i in range(7)),
        *QUESTIONS,
    ]
    # The whole history must fit memory's budget, or each turn would drop its oldest turn and
    # change the prompt's beginning, which no cache can reuse.
    async with running_bot(run.args, HISTORY_TOKENS, history_tokens=N_CTX - 256) as (bot, recorder):
        await ask(bot, "Hello!", "warm-up")
        turns = []
        for turn, text in enumerate(messages[: run.args.turns], start=1):
            ours = await ask(bot, text, "history-ours")
            reply = recorder.replies["history-ours"]
            turns.append((ours.wait, reply.prompt_tokens, reply.dropped_turns))
            for other in range(OTHERS):
                await ask(bot, f"Turn {turn}: {story(other)} Keep it short.", f"history-other-{other}")
        last = Prompt(bot.settings.bot.system_prompt, [Turn(Role.USER, messages[run.args.turns - 1])])
        history = turns[-1][1] - await bot.backend.count_tokens(last)
    first, prompt, _ = turns[-1]
    scratch = prompt / run.llama_bench(prompt)[f"pp{prompt}"]
    name = f"turn {len(turns)}, {history} tokens of history, {OTHERS} others between: first token"
    baseline = f"{scratch:.3f} s all again"
    run.row(name, f"{first:.3f} s", baseline, f"{first / scratch:.2f}x", "<= 0.25 s", first <= 0.25)
    run.note(
        f"history: first token by turn {', '.join(f'{t[0]:.2f}' for t in turns)} s; prompt tokens "
        f"{', '.join(str(t[1]) for t in turns)}; turns dropped to fit: {sum(t[2] for t in turns)}"
    )


# -- on the backend alone -------------------------------------------------------------


@dataclass
class Stream:
    """One generation called on the backend directly: when it was asked for and when each chunk came."""

    requested: float = 0.0
    chunks: list[float] = field(default_factory=list)
    tokens: int = 0
    text: str = ""

    @property
    def longest_gap(self) -> float:
        return max((b - a for a, b in zip(self.chunks, self.chunks[1:], strict=False)), default=0.0)


async def start_backend(args, max_tokens: int, parallel: int, **more: object) -> Backend:
    backend = create_backend(LlamaCppSettings(**backend_config(args, max_tokens, parallel, **more)))
    await backend.start()
    return backend


def user_prompt(text: str, history: Sequence[Turn] = ()) -> Prompt:
    return Prompt(SYSTEM, [*history, Turn(Role.USER, text)])


async def generate(backend, prompt: Prompt, max_tokens: int, gate, stream: Stream, cancel=None) -> Stream:
    """One generation, called as the core's queue would: never more at once than ``concurrency``."""
    params = dataclasses.replace(backend.settings.sampling(), max_tokens=max_tokens)
    stream.requested = clock()
    async with gate:
        async for chunk in backend.stream(prompt, params, cancel or threading.Event()):
            stream.chunks.append(clock())
            stream.tokens += chunk.tokens
            stream.text += chunk.text
    return stream


async def generate_all(backend: Backend, prompts: Sequence[Prompt], max_tokens: int) -> list[Stream]:
    gate, streams = asyncio.Semaphore(backend.concurrency), [Stream() for _ in prompts]
    await asyncio.gather(
        *(generate(backend, p, max_tokens, gate, s) for p, s in zip(prompts, streams, strict=True))
    )
    return streams


async def part_prefill(run: Run) -> None:
    backend = await start_backend(run.args, 100, STREAMS + 1)
    try:
        filler = " ".join(NOTE_SENTENCES)
        text = filler
        while await backend.count_tokens(user_prompt(text + " " + filler)) < LONG_PROMPT_TOKENS:
            text += " " + filler
        while await backend.count_tokens(user_prompt(text)) < LONG_PROMPT_TOKENS:
            text += " Again."
        prompt = await backend.count_tokens(user_prompt(text))
        gate, cancel = asyncio.Semaphore(backend.concurrency), threading.Event()
        await generate(backend, user_prompt("Hello!"), 4, gate, Stream())  # warm-up
        streams = [Stream() for _ in range(STREAMS)]
        tasks = [
            asyncio.ensure_future(generate(backend, user_prompt(story(i)), 100, gate, stream, cancel))
            for i, stream in enumerate(streams)
        ]
        # The long prompt comes once every stream that may run has settled into decoding.
        settled, deadline = min(backend.concurrency, STREAMS), clock() + 300
        while sum(1 for s in streams if len(s.chunks) >= 3) < settled and clock() < deadline:
            await asyncio.sleep(0.005)
        running = sum(1 for s in streams if s.chunks)
        long = await generate(backend, user_prompt(text), 16, gate, Stream())
        cancel.set()  # measured: the streams need not run to their end
        await asyncio.gather(*tasks)
    finally:
        await backend.close()
    gap = max(s.longest_gap for s in streams)
    evaluation = prompt / run.llama_bench(prompt)[f"pp{prompt}"]
    name = f"{prompt}-token prompt while {STREAMS} stream: longest gap in a stream"
    run.row(
        name, f"{gap:.3f} s", f"{evaluation:.3f} s its pp", f"{gap / evaluation:.2f}x", "<= 0.5 s", gap <= 0.5
    )
    run.note(
        f"prefill: {running} of {STREAMS} streams running when the long prompt came; "
        f"its first token after {long.chunks[0] - long.requested:.2f} s"
    )


# -- memory, each case in a process of its own ------------------------------------------


async def probe_batch(args) -> dict:
    backend = await start_backend(args, BATCH_TOKENS, CONVERSATIONS)
    try:
        loaded = rss_mb()[0]
        prompts = [user_prompt(story(i)) for i in range(CONVERSATIONS)]
        prompt = round(statistics.median([await backend.count_tokens(p) for p in prompts]))
        started = clock()
        streams = await generate_all(backend, prompts, BATCH_TOKENS)
        rate = sum(s.tokens for s in streams) / (clock() - started)
        now, peak = rss_mb()
    finally:
        await backend.close()
    return {"loaded": loaded, "rss": now, "peak": peak, "rate": rate, "prompt": prompt}


async def probe_kv_full(args) -> dict:
    """Many conversations through two sequences and a small cache: saved caches fill it, some are dropped."""
    backend = await start_backend(args, 16, 2, kv_cache_mb=args.kv_cache_mb)
    count = 12
    try:
        loaded = rss_mb()[0]
        notes = [note(i) for i in range(count)]
        first = await generate_all(backend, [user_prompt(n) for n in notes], 16)
        history = [
            [Turn(Role.USER, n), Turn(Role.ASSISTANT, s.text)] for n, s in zip(notes, first, strict=True)
        ]
        await generate_all(
            backend, [user_prompt("Thank you. Which point matters most?", h) for h in history], 16
        )
        now, peak = rss_mb()
        load = backend.load()
    finally:
        await backend.close()
    load = dataclasses.asdict(load) if load else None
    return {"loaded": loaded, "rss": now, "peak": peak, "conversations": count, "load": load}


def probe(args, kind: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--probe",
        kind,
        "--engine",
        args.engine,
        "--threads",
        str(args.threads),
    ]
    command += ["--seed", str(args.seed), "--kv-cache-mb", str(args.kv_cache_mb), "--flash-attn", args.flash_attn]
    command += ["--kv-cache-type", cache_type(args)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"the {kind} memory probe failed (exit {result.returncode}):\n{result.stderr[-3000:]}"
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


async def part_memory(run: Run) -> None:
    batch = probe(run.args, "batch")
    measured = f"{batch['rss']:.0f} ({batch['peak']:.0f}) MB"
    name = f"{CONVERSATIONS} sequences at n_ctx {N_CTX}: RSS (peak)"
    if run.server_rss:
        server, server_peak = run.server_rss
        run.row(
            name, measured, f"{server:.0f} ({server_peak:.0f}) server", f"{batch['peak'] / server_peak:.2f}x"
        )
    else:
        run.row(name, measured)
    if not run.args.quick:
        ceiling = batched_bench(
            run.tools, run.model, run.args.threads, batch["prompt"], BATCH_TOKENS, [CONVERSATIONS], run.flash_attn,
            run.cache_type,
        )  # fmt: skip
        rate, top = batch["rate"], ceiling[CONVERSATIONS]
        name = f"{CONVERSATIONS} at once, backend alone: tokens/s vs llama-batched-bench"
        run.row(name, f"{rate:.1f}", f"{top:.1f}", f"{rate / top:.2f}x")
    full = probe(run.args, "kv-full")
    measured, load = f"{full['rss']:.0f} ({full['peak']:.0f}) MB", full["load"]
    name = f"kv_cache_mb {run.args.kv_cache_mb} full, {full['conversations']} conversations: RSS (peak)"
    if load is None:
        run.row(name, measured + ", no saved caches")
    else:
        measured += f"; {load['kv_cache_mb']:.1f} MB saved, {load['evictions']} dropped"
        ok = load["kv_cache_mb"] <= load["kv_cache_limit_mb"] and load["evictions"] > 0
        run.row(name, measured, target="full, within", passed=ok)
    run.note(
        f"memory: {batch['loaded']:.0f} and {full['loaded']:.0f} MB once the model was loaded; engine {load}"
    )


# -- the report -------------------------------------------------------------------------


def print_table(run: Run) -> None:
    columns = ("part", "measured", "baseline", "ratio", "target", "result")
    cells = [columns] + [(r.part, r.measured, r.baseline, r.ratio, r.target, r.result) for r in run.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    print()
    for row in cells:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print()
    for text in run.notes:
        print(f"  {text}")


PART_FUNCTIONS = {
    "batch": part_batch,
    "single": part_single,
    "history": part_history,
    "prefill": part_prefill,
    "memory": part_memory,
}


async def measure(run: Run) -> None:
    for part in run.args.parts:
        print(f"  {part}...", flush=True)
        started = clock()
        await PART_FUNCTIONS[part](run)
        print(f"  {part} took {clock() - started:.0f} s", flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="threads on both sides (default 2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--engine", choices=["batched", "single"], default="batched", help="[backend] engine")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--quick", action="store_true", help="one round, 5 turns, no llama-batched-bench")
    parser.add_argument("--kv-cache-mb", type=int, default=16, help="kv_cache_mb to fill (default 16)")
    parser.add_argument("--tools-dir", type=Path, default=None, help="where the llama.cpp tools are built")
    parser.add_argument(
        "--flash-attn",
        choices=["on", "off"],
        default="on",
        help="[backend] flash_attn, and llama.cpp's tools set alike (default on, botkit's default)",
    )
    parser.add_argument(
        "--kv-cache-type",
        choices=["bf16", "f16", "q8_0"],
        help="[backend] kv_cache_type, and llama.cpp's tools alike (default as botkit's: bf16 with flash "
        "attention, f16 without)",
    )
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a target is missed")
    parser.add_argument("--probe", choices=["batch", "kv-full"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part {', '.join(unknown)}: choose among {', '.join(PARTS)}")
    args.rounds, args.turns = (1, 5) if args.quick else (2, 10)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe:
        measure_memory = probe_batch if args.probe == "batch" else probe_kv_full
        print(json.dumps(asyncio.run(measure_memory(args))))
        return 0
    try:
        tools = ensure_tools(args.tools_dir)
    except ToolBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    run = Run(args, tools, embedded_model_path())
    print("botkit serving-engine benchmark")
    print(
        f"  python {platform.python_version()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"  model {run.model.name}, {args.threads} threads both sides, greedy; tools in {tools.folder}")
    print(f"  flash attention {args.flash_attn}, KV cache {run.cache_type}, both sides")
    if args.engine == "batched":
        print(f"  [backend] engine = batched, parallel {CONVERSATIONS} (the memory part: as its rows say)")
    else:
        print("  [backend] engine = single: llama-cpp-python's Llama, one generation at a time")
    started = clock()
    asyncio.run(measure(run))
    print_table(run)
    print(f"  {clock() - started:.0f} s in all; load average {os.getloadavg()[0]:.2f} at the end")
    met = all(row.passed is not False for row in run.rows)
    return 0 if met or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
