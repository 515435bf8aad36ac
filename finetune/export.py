"""The export: select, curate, format, split and write a training dataset, streaming from the database.

``await run_export(db, options, system_prompts)`` reads everything in one
read-only snapshot (``Database.snapshot``): the opt-outs, the moderated
messages, then the selected messages in batches through a server-side cursor,
with each batch's feedback; pairing, curation and formatting run
on a worker thread, batch by batch, off the event loop. Files are written into
a temporary folder beside ``--out`` that replaces it only when the export
succeeded, so a failed or empty export leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from botkit import BotkitError, ExportError, Message, User
from botkit.ops import system_prompt_for
from botkit.prompts import AlpacaVariant
from botkit.storage import Database

from .curate import Counts, Curation, Curator
from .examples import Example, Feedback, StoredMessage
from .formats import FORMATS, RECORDS, DatasetWriter, PreferencePairs, PreferencePrompt
from .mixing import MixedSource, Source, read_mixed
from .select import (
    Pairing,
    Selection,
    count_messages,
    feedback_for,
    moderated_messages,
    opted_out_users,
    stream_messages,
)
from .training_data import PromptedAnswer

CARD = "README.md"


class Progress(Protocol):
    """What the export reports progress to; ``rich.progress.Progress`` is one."""

    def add_task(self, description: str, total: float | None = ...) -> Any: ...

    def advance(self, task_id: Any, advance: float = 1) -> None: ...


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """Everything ``botkit export`` can be told (the flags of the same names)."""

    out: Path | None = None
    formats: tuple[str, ...] = ("chat",)
    selection: Selection = field(default_factory=Selection)
    curation: Curation = field(default_factory=Curation)
    seed: int = 0
    validation_fraction: float = 0.1
    overwrite: bool = False
    dry_run: bool = False
    preference_prompt: PreferencePrompt = "chat"
    alpaca_variant: AlpacaVariant = "stanford"  # the backend's, for Alpaca preference prompts and the card
    system_prompt: str | None = None  # None: [bot] system_prompt and per-place overrides
    base_model: str | None = None
    base_model_license: str | None = None  # None: not known (a name, or a model on a server)
    license: str = "other"
    mix: tuple[Source, ...] = ()  # more examples for train, with their weights (finetune/mixing.py)


@dataclass(slots=True)
class Sources:
    """Where the kept examples come from, for the dataset card."""

    platforms: Counter[str] = field(default_factory=Counter)
    channels: set[tuple[str, str]] = field(default_factory=set)
    backends: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)
    adapters: Counter[str] = field(default_factory=Counter)
    system_prompts: Counter[str] = field(default_factory=Counter)
    first: datetime | None = None
    last: datetime | None = None

    def add(self, example: Example) -> None:
        self.platforms[example.platform] += 1
        self.channels.add((example.platform, example.channel_id))
        self.backends[example.backend or "unknown"] += 1
        self.models[example.model or "unknown"] += 1
        self.adapters[example.adapter or "none"] += 1
        self.system_prompts[example.system] += 1
        if self.first is None or example.created_at < self.first:
            self.first = example.created_at
        if self.last is None or example.created_at > self.last:
            self.last = example.created_at


@dataclass(slots=True)
class ExportReport:
    """What an export read, removed, changed and wrote."""

    options: ExportOptions
    messages: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    counts: Counts = field(default_factory=Counts)
    written: dict[str, dict[str, int]] = field(default_factory=dict)
    conversations: dict[str, int] = field(default_factory=dict)
    pairs_from_corrections: int = 0
    pairs_from_feedback: int = 0
    sources: Sources = field(default_factory=Sources)
    mixed: list[MixedSource] = field(default_factory=list)
    files: list[tuple[str, int]] = field(default_factory=list)
    folder: Path | None = None

    @property
    def total_written(self) -> int:
        return sum(sum(splits.values()) for splits in self.written.values())

    def lines(self) -> list[str]:
        """The counts as a plain-text table (the CLI prints it; the card has the same numbers)."""
        lines = [f"messages read: {self.messages:,}"]
        for reason, count in sorted(self.skipped.items()):
            lines.append(f"  skipped, {reason}: {count:,}")
        lines.append(f"exchanges: {self.counts.exchanges:,}")
        for step in self.counts.steps.values():
            if not step.enabled:
                lines.append(f"  {step.name:<17} off")
                continue
            text = f"  {step.name:<17} -{step.removed:,}"
            if step.changed:
                text += f"  (changed {step.changed:,})"
            lines.append(text)
        # Every kept example goes into each example format: once in validation, ``weight`` times in
        # train. So validation records are unique examples, and train's are the rest of the kept ones.
        examples = next((s for name, s in self.written.items() if name != "preference"), None)
        kept = f"examples kept: {self.counts.kept:,} unique"
        if examples is not None:
            validation = examples["validation"]
            kept += f" (train {self.counts.kept - validation:,}, validation {validation:,})"
        lines.append(kept)
        if "preference" in self.options.formats:
            lines.append(
                f"preference pairs: {self.pairs_from_corrections:,} from corrections, "
                f"{self.pairs_from_feedback:,} from rated alternatives"
            )
        mixed = sum(source.written for source in self.mixed)
        for name, splits in self.written.items():
            train, validation = splits["train"], splits["validation"]
            unit = "pairs" if name == "preference" else "records"
            repeats = train - mixed - (self.counts.kept - validation)
            if name != "preference" and repeats > 0:
                copies = "1 extra copy" if repeats == 1 else f"{repeats:,} extra copies"
                lines.append(
                    f"{name}: train {train:,} {unit} ({train - repeats:,} examples + {copies} of voted-up "
                    f"ones, --feedback-policy weighted), validation {validation:,} {unit}"
                )
            else:
                lines.append(f"{name}: train {train:,}, validation {validation:,} {unit}")
        for source in self.mixed:
            lines.append(
                f"mixed in: {source.source.path} (weight {source.source.weight:g}, {source.format}): "
                f"{source.written:,} records in each train file from {source.read:,} examples"
            )
            lines += [f"  skipped {count:,}: {reason}" for reason, count in sorted(source.skipped.items())]
        return lines


class NothingToExport(ExportError):
    """The selection or the filters left nothing; ``report`` says where everything went."""

    def __init__(self, message: str, report: ExportReport) -> None:
        super().__init__(message)
        self.report = report


class SystemPrompts:
    """The system prompt each conversation had: fixed, or ``[bot] system_prompt`` with per-place overrides."""

    def __init__(self, settings: Any | None = None, fixed: str | None = None) -> None:
        if settings is None and fixed is None:
            raise ValueError("SystemPrompts needs the settings or a fixed prompt")
        self.settings = settings
        self.fixed = fixed
        self._cache: dict[tuple[str, str, str | None, bool], str] = {}

    def __call__(self, message: StoredMessage) -> str:
        if self.fixed is not None:
            return self.fixed
        key = (message.platform, message.channel_id, message.thread_id, message.is_dm)
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) > 10_000:
                self._cache.clear()
            place = Message(
                text="",
                author=User(id=""),
                platform=message.platform,
                channel_id=message.channel_id,
                thread_id=message.thread_id,
                is_dm=message.is_dm,
            )
            found = self._cache[key] = system_prompt_for(self.settings, place)
        return found


def check_options(options: ExportOptions) -> None:
    """Refuse options that cannot work, before anything is read."""
    if not options.formats:
        raise ExportError("--format: name at least one of " + ", ".join(FORMATS))
    unknown = [name for name in options.formats if name not in FORMATS]
    if unknown:
        raise ExportError(f"--format: unknown format {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    if options.mix and not any(name in RECORDS for name in options.formats):
        raise ExportError(
            "--mix adds examples with one answer each, for the alpaca, chat and sharegpt formats; "
            "--format preference needs two answers to a prompt: export another format beside it"
        )
    if not 0.0 <= options.validation_fraction < 1.0:
        raise ExportError("--validation-fraction must be at least 0 and below 1, e.g. 0.1")
    if options.dry_run:
        return
    out = options.out
    if out is None:
        raise ExportError("--out: name the folder to write the dataset to (or use --dry-run)")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: is a file, not a folder")
    if out.exists() and not options.overwrite:
        raise ExportError(
            f"--out {out}: the folder exists; choose another one or pass --overwrite to replace it"
        )


async def run_export(
    db: Database,
    options: ExportOptions,
    system_prompts: Callable[[StoredMessage], str],
    progress: Progress | None = None,
) -> ExportReport:
    """Export the selected conversations; returns the report, raises ``ExportError`` when nothing would be written."""
    check_options(options)
    report = ExportReport(options)
    try:
        mixed = read_mixed(options.mix, options.seed)  # a bad source is refused before anything is read
    except BotkitError as error:  # it names the --mix source
        raise ExportError(str(error)) from None
    staging = None if options.dry_run else _staging_folder(options.out)
    try:
        # One snapshot for every read: an exchange committed after the export started is not
        # in it at all, rather than in it without the opt-out or moderation event committed with it.
        async with db.snapshot() as session:
            opted_out = await opted_out_users(session)
            moderated = await moderated_messages(session) if options.curation.moderation_clean else set()
            total = await count_messages(session, options.selection)
            await _read_and_write(
                session, options, system_prompts, progress, report, staging, total, opted_out, moderated, mixed
            )
        if report.total_written == 0:
            raise NothingToExport(_why_empty(report), report)
        if staging is not None:
            from .card import render_card

            (staging / CARD).write_text(render_card(report), encoding="utf-8")
            assert options.out is not None
            _replace(staging, options.out)
            staging = None
            report.folder = options.out
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return report


async def _read_and_write(
    session: AsyncSession,
    options: ExportOptions,
    system_prompts: Callable[[StoredMessage], str],
    progress: Progress | None,
    report: ExportReport,
    staging: Path | None,
    total: int,
    opted_out: set[int],
    moderated: set[tuple[int, str]],
    mixed: list[tuple[MixedSource, list[PromptedAnswer]]],
) -> None:
    wants_pairs = "preference" in options.formats
    pairs = PreferencePairs()
    writer = DatasetWriter(
        staging,
        options.formats,
        options.seed,
        options.validation_fraction,
        options.preference_prompt,
        options.alpaca_variant,
    )

    def candidate(example: Example) -> None:
        pair = pairs.observe(example)
        if pair is not None:
            writer.pair(pair)

    try:
        curator = Curator(
            options.selection,
            options.curation,
            system_prompts,
            opted_out,
            moderated,
            on_candidate=candidate if wants_pairs else None,
        )
    except ValueError as error:  # an unknown --language code
        raise ExportError(f"--language: {error}") from None
    pairing = Pairing()

    def process(rows: list[StoredMessage], feedback: dict[int, Feedback]) -> None:
        for exchange in pairing.feed(rows):
            example = curator.take(exchange, feedback.get(exchange.reply.id) or Feedback())
            if example is not None:
                writer.example(example)
                report.sources.add(example)

    reading = progress.add_task("reading and curating", total=total) if progress else None
    try:
        async for rows in stream_messages(session, options.selection):
            replies = [row.id for row in rows if row.role == "assistant"]
            feedback = await feedback_for(session, replies) if replies else {}
            await asyncio.to_thread(process, rows, feedback)
            report.messages += len(rows)
            if progress is not None:
                progress.advance(reading, len(rows))
        pairing.close()
        if wants_pairs:
            alternatives = progress.add_task("pairing rated alternatives", total=None) if progress else None

            def pair_alternatives() -> None:
                for pair in pairs.alternatives():
                    writer.pair(pair)
                    if progress is not None:
                        progress.advance(alternatives, 1)

            await asyncio.to_thread(pair_alternatives)

        def mix_in() -> None:
            for source, examples in mixed:
                for example in examples:
                    writer.mixed(example.prompt, example.answer, example.alpaca)
                report.mixed.append(source)

        await asyncio.to_thread(mix_in)
    finally:
        writer.close()
    report.skipped = pairing.skipped
    report.counts = curator.counts
    report.written = writer.counts
    report.conversations = writer.conversations
    report.pairs_from_corrections = pairs.from_corrections
    report.pairs_from_feedback = pairs.from_feedback
    report.files = writer.files()


def _why_empty(report: ExportReport) -> str:
    if report.messages == 0:
        return (
            "nothing to export: no stored message matches the selection "
            f"({'; '.join(report.options.selection.describe())}); widen --since/--until, --platform or --channel"
        )
    if report.counts.kept == 0:
        return (
            f"nothing to export: {report.counts.exchanges:,} exchanges were read and every one was removed "
            "(the counts above say by which step); loosen those options"
        )
    return "nothing to export: no preference pairs (they need corrections or rated alternative answers)"


def _staging_folder(out: Path | None) -> Path:
    assert out is not None
    out = out.expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def _replace(staging: Path, out: Path) -> None:
    """Put the finished export at ``out``, replacing what was there (``--overwrite`` was checked)."""
    out = out.expanduser()
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
