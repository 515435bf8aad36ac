"""``botkit finetune synth``: Self-Instruct as Alpaca ran it, with any configured backend as the teacher.

Each request shows the teacher a few sampled seed tasks and tasks it wrote before
and asks it to continue the list; the answer is parsed (``synth_prompt``) and each
task filtered (``synth_filter``). Kept tasks are appended to ``generated.jsonl``
and the counts to ``progress.json`` as they come, so an interrupted run resumes
(``--resume``) where it stopped; at the end ``train.json`` (Alpaca JSON) and the
dataset card are written.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from botkit import BotkitError, Prompt, Role, SamplingParams, Turn
from botkit.ops import BackendSlot

from .synth_filter import InstructionFilter
from .synth_prompt import Task, parse_answer, render_prompt

GENERATED = "generated.jsonl"
PROGRESS = "progress.json"
DATA = "train.json"
CARD = "README.md"
LONGEST_BACKOFF = 60.0


class SynthError(BotkitError):
    """A synth run that cannot start or go on: a bad output folder, a failing teacher."""


@dataclass(frozen=True)
class SynthOptions:
    out: Path
    num_instructions: int = 100
    batch_size: int = 10
    seed_examples: int = 3
    generated_examples: int = 2
    concurrency: int = 4
    max_failures: int = 10
    retry_backoff: float = 2.0
    max_tokens: int = 2048
    temperature: float = 1.0
    seed: int | None = None
    resume: bool = False
    overwrite: bool = False
    rouge_threshold: float = 0.7
    near_duplicate: float | None = 0.8
    min_words: int = 3
    max_words: int = 150
    teacher_terms: str | None = None
    license: str = "other"


@dataclass
class SynthCounts:
    """What a run did; kept in progress.json and on the card."""

    requests: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # failed requests by reason
    parsed: int = 0
    malformed: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # by filter
    kept: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        rejected = ", ".join(f"{name} {count:,}" for name, count in self.rejected.items()) or "none"
        failed = ", ".join(f"{name} {count:,}" for name, count in self.failed.items()) or "none"
        return [
            f"requests: {self.requests:,} (failed: {failed})",
            f"tasks parsed: {self.parsed:,}, malformed items skipped: {self.malformed:,}",
            f"rejected: {rejected}",
            f"kept: {self.kept:,}",
            f"tokens: prompt {self.prompt_tokens:,}, completion {self.completion_tokens:,}; {self.seconds:.1f} s",
        ]


@dataclass
class Teacher:
    """The backend that writes the tasks, as the card names it.

    At most the backend's own concurrency of requests run at once (an openai backend's
    ``concurrency``, one for an in-process llama.cpp model), as the bot's queue allows;
    ``--concurrency`` beyond it waits here.
    """

    slot: BackendSlot
    _limit: asyncio.Semaphore | None = field(default=None, init=False, repr=False)

    @property
    def description(self) -> str:
        return f"{self.slot.name} ({self.slot.type_name}, model {self.slot.backend.model_name})"

    async def ask(self, text: str, params: SamplingParams) -> tuple[str, int, int]:
        """The answer to one request, with its prompt and completion tokens."""
        prompt = Prompt(system="", turns=[Turn(role=Role.USER, text=text)])
        answer, completion, prompt_tokens = "", 0, None
        if self._limit is None:
            self._limit = asyncio.Semaphore(self.slot.backend.concurrency)
        async with self._limit:
            async for chunk in self.slot.backend.stream(prompt, params, threading.Event()):
                answer += chunk.text
                completion += chunk.tokens
                if chunk.prompt_tokens is not None:
                    prompt_tokens = chunk.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = await self.slot.backend.count_tokens(prompt)
        return answer, prompt_tokens, max(0, completion)


def prepare_folder(options: SynthOptions) -> tuple[list[Task], SynthCounts]:
    """The folder made ready: tasks and counts to resume from, or an empty start."""
    out = options.out
    if out.exists() and not out.is_dir():
        raise SynthError(f"--out {out} is a file, not a folder")
    exists = out.is_dir() and any(out.iterdir())
    if options.resume:
        if not (out / PROGRESS).is_file():
            raise SynthError(f"--resume: {out} holds no {PROGRESS} of an earlier synth run")
        return read_generated(out / GENERATED), read_progress(out / PROGRESS)
    if exists and not options.overwrite:
        raise SynthError(f"--out {out} is not empty: pass --resume to go on with its run, or --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    for name in (GENERATED, PROGRESS, DATA, CARD):
        (out / name).unlink(missing_ok=True)
    return [], SynthCounts()


def read_generated(path: Path) -> list[Task]:
    """The tasks kept so far; a last line cut short by an interruption is dropped."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    tasks = []
    for number, line in enumerate(lines, 1):
        try:
            data = json.loads(line)
            tasks.append(Task(data["instruction"], data["input"], data["output"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            if number == len(lines):
                break  # written when the run was stopped: that task is generated again
            raise SynthError(
                f"{path} line {number}: not a task this command wrote; fix or remove the line"
            ) from None
    return tasks


def read_progress(path: Path) -> SynthCounts:
    try:
        return SynthCounts(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, TypeError) as error:
        raise SynthError(f"{path}: not a synth progress file ({error})") from None


def _write_atomic(path: Path, text: str) -> None:
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


class SynthRun:
    """One run: the workers that ask the teacher, the filter, the files, the counts."""

    def __init__(
        self,
        options: SynthOptions,
        seeds: list[Task],
        seed_source: str,
        teacher: Teacher,
        show: Callable[[SynthCounts], None] = lambda counts: None,
    ) -> None:
        self.options = options
        self.seeds = seeds
        self.seed_source = seed_source
        self.teacher = teacher
        self.show = show
        self.kept, self.counts = prepare_folder(options)
        self.filter = InstructionFilter(
            options.rouge_threshold, options.near_duplicate, options.min_words, options.max_words
        )
        self.filter.seed([task.instruction for task in (*seeds, *self.kept)])
        self.filter.rejected.update(self.counts.rejected)
        self.draw = random.Random(options.seed)
        self.failures_in_a_row = 0
        self.stop_reason: str | None = None
        self._file = (options.out / GENERATED).open("a", encoding="utf-8")
        self._save_progress()  # from now on the folder is a run that --resume goes on with

    @property
    def done(self) -> bool:
        return len(self.kept) >= self.options.num_instructions or self.stop_reason is not None

    def params(self) -> SamplingParams:
        stop = (f"\n{self.options.batch_size + 1}. Instruction",)
        seed = None if self.options.seed is None else self.draw.randrange(2**31)
        return SamplingParams(
            max_tokens=self.options.max_tokens,
            temperature=self.options.temperature,
            top_p=1.0,
            seed=seed,
            stop=stop,
        )

    def examples(self) -> list[Task]:
        options = self.options
        chosen = self.draw.sample(self.seeds, min(options.seed_examples, len(self.seeds)))
        chosen += self.draw.sample(self.kept, min(options.generated_examples, len(self.kept)))
        self.draw.shuffle(chosen)
        return chosen

    async def run(self) -> SynthCounts:
        started = time.monotonic()
        before = self.counts.seconds
        try:
            workers = [asyncio.create_task(self._worker()) for _ in range(self.options.concurrency)]
            try:
                # A worker returns when enough tasks are kept or the teacher failed too often:
                # the requests the others still wait for are not needed then.
                finished, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_COMPLETED)
                for worker in finished:
                    worker.result()  # a bug in a worker is raised, not hidden
            finally:
                for worker in workers:
                    worker.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
        finally:
            self.counts.seconds = before + time.monotonic() - started
            self._file.close()
            self._save_progress()
        if self.stop_reason is not None:
            raise SynthError(self.stop_reason)
        self.write_results()
        return self.counts

    async def _worker(self) -> None:
        while not self.done:
            examples = self.examples()
            self.counts.requests += 1
            try:
                answer, prompt_tokens, completion_tokens = await self.teacher.ask(
                    render_prompt(examples, self.options.batch_size), self.params()
                )
            except BotkitError as error:
                await self._failed("unreachable or failing", str(error))
                continue
            self.counts.prompt_tokens += prompt_tokens
            self.counts.completion_tokens += completion_tokens
            parsed = parse_answer(answer)
            self.counts.malformed += parsed.malformed
            if not parsed.tasks:
                if parsed.refused:
                    await self._failed("refused", "the teacher refused the request")
                else:
                    await self._failed("no task in the answer", "the answer held no task in the asked format")
                continue
            self.failures_in_a_row = 0
            for task in parsed.tasks:
                if self.done:
                    break  # the rest is not filtered, so not counted either
                self.counts.parsed += 1
                if self.filter.reason(task.instruction) is None:
                    self._keep(task)
            self.counts.rejected = dict(self.filter.rejected)
            self._save_progress()
            self.show(self.counts)

    def _keep(self, task: Task) -> None:
        self.kept.append(task)
        self.counts.kept = len(self.kept)
        self._file.write(json.dumps(task.record(), ensure_ascii=False) + "\n")
        self._file.flush()

    async def _failed(self, reason: str, detail: str) -> None:
        self.counts.failed[reason] = self.counts.failed.get(reason, 0) + 1
        self.failures_in_a_row += 1
        self.show(self.counts)
        if self.failures_in_a_row >= self.options.max_failures:
            if self.stop_reason is None:
                self.stop_reason = (
                    f"teacher {self.teacher.description}: {self.failures_in_a_row} requests in a row failed "
                    f"(--max-failures {self.options.max_failures}); the last: {detail}. "
                    f"{len(self.kept):,} tasks are kept in {self.options.out / GENERATED}: "
                    "fix the teacher and run again with --resume"
                )
            return
        ceiling = min(LONGEST_BACKOFF, self.options.retry_backoff * 2 ** min(self.failures_in_a_row - 1, 10))
        await asyncio.sleep(self.draw.uniform(0.0, ceiling))  # jittered: workers do not retry in step

    def _save_progress(self) -> None:
        _write_atomic(self.options.out / PROGRESS, json.dumps(asdict(self.counts), indent=1))

    def write_results(self) -> None:
        from .synth_card import render_synth_card

        records = [task.record() for task in self.kept[: self.options.num_instructions]]
        _write_atomic(self.options.out / DATA, json.dumps(records, ensure_ascii=False, indent=1))
        _write_atomic(self.options.out / CARD, render_synth_card(self, len(records)))
