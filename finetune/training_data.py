"""Reading exported training files back as prompt and answer texts, rendered as the bot renders them.

``botkit finetune train`` and ``eval`` read the files ``botkit export`` wrote
(or any file in the same formats): ``chat`` (``messages``), ``sharegpt``
(``conversations``), ``alpaca`` and ``alpaca-jsonl`` (``instruction``, ``input``,
``output``); ``botkit finetune dpo`` reads ``preference`` (``prompt``, ``chosen``,
``rejected``). Each record becomes the prompt text the bot would send its model
(``botkit.prompts``, with the backend's prompt format and chat template) and the
answer the model should write, followed by its end-of-turn token. Records that
cannot be used are skipped and counted by reason; nothing is guessed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from botkit import BotkitError, Prompt, Role, Turn
from botkit.prompts import AlpacaVariant, alpaca_text, render_alpaca, render_chat

from .examples import TrainingFormat
from .formats import file_name

T = TypeVar("T")
# Which export folder is read when a format is not asked for: the richest first.
FORMAT_PREFERENCE: tuple[TrainingFormat, ...] = ("chat", "sharegpt", "alpaca-jsonl", "alpaca")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}


class TrainingDataError(BotkitError):
    """Training data that cannot be read: a missing folder or file, no usable record."""


@dataclass(frozen=True)
class PromptStyle:
    """How the deployed backend renders prompts: its prompt format and the model's chat template."""

    prompt_format: Literal["chat", "alpaca"]
    chat_template: str | None
    bos_text: str
    eos_text: str
    alpaca_variant: AlpacaVariant = "stanford"

    def render(self, prompt: Prompt) -> str:
        if self.prompt_format == "alpaca":
            return render_alpaca(prompt, self.alpaca_variant)
        if not self.chat_template:
            raise TrainingDataError(
                'the base model has no chat template: train with prompt_format = "alpaca" or give chat_template'
            )
        return render_chat(prompt, self.chat_template, self.bos_text, self.eos_text)


@dataclass(frozen=True)
class TrainingText:
    """One example: what the model reads (no loss) and what it should write (the loss, ending in end-of-turn)."""

    prompt: str
    answer: str
    question: str  # the newest user message, for showing the example
    reference: str  # the answer without the end-of-turn token


@dataclass(frozen=True)
class PromptedAnswer:
    """One example as a prompt and its answer, not yet rendered (``botkit export --mix`` writes it in any format).

    ``alpaca`` keeps an Alpaca record's ``instruction`` and ``input`` as they were, for
    writing it back as Alpaca unchanged; ``prompt`` is what a chat model is shown of it.
    """

    prompt: Prompt
    answer: str
    alpaca: tuple[str, str] | None = None


@dataclass
class DataFiles:
    """The files of one format found for training: train and, when the export has one, validation."""

    format: TrainingFormat
    train: Path
    validation: Path | None


@dataclass
class ReadReport:
    """What reading a file kept and skipped (by reason)."""

    path: Path
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def lines(self) -> list[str]:
        lines = [f"{self.path}: {self.kept:,} examples"]
        lines += [f"  skipped {count:,}: {reason}" for reason, count in sorted(self.skipped.items())]
        return lines


def find_files(data: Path, wanted: TrainingFormat | None = None) -> DataFiles:
    """The train and validation files under ``data``: an export folder, or one file (its format guessed)."""
    if data.is_file():
        kind = wanted or _format_of_file(data)
        sibling = data.with_name(data.name.replace("train", "validation")) if "train" in data.name else None
        return DataFiles(kind, data, sibling if sibling is not None and sibling.is_file() else None)
    if not data.is_dir():
        raise TrainingDataError(
            f"{data} does not exist: give the folder `botkit export --out` wrote, or a file"
        )
    for kind in (wanted,) if wanted else FORMAT_PREFERENCE:
        train = data / file_name(kind, "train")
        if train.is_file():
            validation = data / file_name(kind, "validation")
            return DataFiles(kind, train, validation if validation.is_file() else None)
    looked = ", ".join(file_name(k, "train") for k in ((wanted,) if wanted else FORMAT_PREFERENCE))
    raise TrainingDataError(
        f"{data} has no training file ({looked}): export with `botkit export --out {data} --format chat`"
    )


@dataclass(frozen=True)
class PreferenceText:
    """One preference pair: the prompt (no loss) and two answers to it, each ending in end-of-turn."""

    prompt: str
    chosen: str
    rejected: str
    question: str  # the newest user message, for showing the pair


def find_preference_files(data: Path) -> DataFiles:
    """The ``preference`` train and validation files under ``data`` (an export folder), or ``data`` itself."""
    if data.is_file():
        sibling = data.with_name(data.name.replace("train", "validation")) if "train" in data.name else None
        return DataFiles("chat", data, sibling if sibling is not None and sibling.is_file() else None)
    train = data / file_name("preference", "train")
    if not train.is_file():
        raise TrainingDataError(
            f"{data} has no {file_name('preference', 'train')}: "
            f"export preference pairs with `botkit export --out {data} --format preference`"
        )
    validation = data / file_name("preference", "validation")
    return DataFiles("chat", train, validation if validation.is_file() else None)


def read_preferences(path: Path, style: PromptStyle) -> tuple[list[PreferenceText], ReadReport]:
    """Every usable pair of a ``preference`` file; pairs without two different answers are counted by reason."""
    return _read(path, "chat", lambda record: _preference_text(record, style))


def _preference_text(record: Any, style: PromptStyle) -> PreferenceText:
    if not isinstance(record, dict):
        raise _Skip("a record that is not a JSON object")
    chosen, rejected = _preference_answer(record, "chosen"), _preference_answer(record, "rejected")
    if chosen.strip() == rejected.strip():
        raise _Skip("chosen and rejected are the same answer")
    prompt = record.get("prompt")
    if isinstance(prompt, str):
        # `botkit export --preference-prompt alpaca`: the whole Alpaca text the model reads.
        if style.prompt_format != "alpaca":
            raise _Skip('a text prompt, for prompt_format = "alpaca" (export with --preference-prompt chat)')
        if not prompt.strip():
            raise _Skip("an empty prompt")
        return PreferenceText(prompt, chosen + style.eos_text, rejected + style.eos_text, prompt)
    if not isinstance(prompt, list):
        raise _Skip("no prompt (a list of messages or a text)")
    messages = [(m.get("role"), m.get("content")) for m in prompt if isinstance(m, dict)]
    example = _chat_prompted([*messages, ("assistant", chosen)])
    return PreferenceText(
        style.render(example.prompt),
        chosen + style.eos_text,
        rejected + style.eos_text,
        example.prompt.turns[-1].text,
    )


def _preference_answer(record: dict[str, Any], key: str) -> str:
    """``chosen`` or ``rejected``: a text, or one assistant message (TRL's conversational format)."""
    value = record.get(key)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        if value[0].get("role") != "assistant":
            raise _Skip(f"a {key} message that is not the assistant's")
        value = value[0].get("content")
    if value is None:
        raise _Skip(f"no {key} answer")
    if not isinstance(value, str):
        raise _Skip(f"a {key} answer that is not a text or one assistant message")
    if not value.strip():
        raise _Skip(f"an empty {key} answer")
    return value


def _format_of_file(path: Path) -> TrainingFormat:
    """A single file's format, from its first record's keys."""
    try:
        with path.open(encoding="utf-8") as handle:
            if path.suffix == ".json":
                records = json.load(handle)
                first = records[0] if isinstance(records, list) and records else None
            else:
                first = next((json.loads(line) for line in handle if line.strip()), None)
    except (OSError, ValueError) as error:
        raise TrainingDataError(f"{path}: cannot read it ({error})") from None
    if isinstance(first, dict):
        if "messages" in first:
            return "chat"
        if "conversations" in first:
            return "sharegpt"
        if {"instruction", "output"} <= set(first):
            return "alpaca" if path.suffix == ".json" else "alpaca-jsonl"
    raise TrainingDataError(
        f"{path}: not a chat (messages), ShareGPT (conversations) or Alpaca (instruction, output) file"
    )


def read_examples(
    path: Path, kind: TrainingFormat, style: PromptStyle
) -> tuple[list[TrainingText], ReadReport]:
    """Every usable record of ``path`` as prompt and answer texts; the rest counted by reason."""
    return _read(path, kind, lambda record: _to_text(record, kind, style))


def read_prompted(path: Path, kind: TrainingFormat) -> tuple[list[PromptedAnswer], ReadReport]:
    """Every usable record of ``path`` as a prompt and its answer; the rest counted by reason, as ``read_examples``."""
    return _read(path, kind, lambda record: _to_prompted(record, kind))


def _read(path: Path, kind: TrainingFormat, convert: Callable[[Any], T]) -> tuple[list[T], ReadReport]:
    """Each record of ``path`` converted; those that cannot be (``_Skip``) counted by reason."""
    report = ReadReport(path)
    converted: list[T] = []
    for record in _records(path, kind, report):
        try:
            converted.append(convert(record))
        except _Skip as skip:
            report.skipped[str(skip)] += 1
            continue
        report.kept += 1
    return converted, report


class _Skip(Exception):
    """A record that is left out; its message is the reason counted."""


def _records(path: Path, kind: TrainingFormat, report: ReadReport) -> Iterator[Any]:
    try:
        if kind == "alpaca":
            records = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(records, list):
                raise TrainingDataError(f"{path}: an Alpaca .json file must hold a JSON array of records")
            yield from records
            return
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except ValueError:
                    report.skipped["a line that is not JSON"] += 1
    except OSError as error:
        raise TrainingDataError(f"{path}: cannot read it ({error.strerror})") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise TrainingDataError(f"{path}: not valid JSON ({error})") from None


def _to_text(record: Any, kind: TrainingFormat, style: PromptStyle) -> TrainingText:
    example = _to_prompted(record, kind)
    question = example.prompt.turns[-1].text
    if example.alpaca is not None:
        question, context = example.alpaca
    if example.alpaca is not None and style.prompt_format == "alpaca":
        # The exact template the record was written for (what render_alpaca gives for its prompt).
        prompt = alpaca_text(question, context, style.alpaca_variant)
    else:
        prompt = style.render(example.prompt)
    return TrainingText(prompt, example.answer + style.eos_text, question, example.answer)


def _to_prompted(record: Any, kind: TrainingFormat) -> PromptedAnswer:
    if not isinstance(record, dict):
        raise _Skip("a record that is not a JSON object")
    if kind in ("alpaca", "alpaca-jsonl"):
        return _alpaca_prompted(record)
    if kind == "chat":
        messages = record.get("messages")
        pairs = (
            [(m.get("role"), m.get("content")) for m in messages if isinstance(m, dict)]
            if isinstance(messages, list)
            else None
        )
    else:
        conversations = record.get("conversations")
        pairs = (
            [
                (SHAREGPT_ROLES.get(m.get("from", "")), m.get("value"))
                for m in conversations
                if isinstance(m, dict)
            ]
            if isinstance(conversations, list)
            else None
        )
    if not pairs:
        raise _Skip(f"no {'messages' if kind == 'chat' else 'conversations'} list")
    return _chat_prompted(pairs)


def _chat_prompted(pairs: list[tuple[Any, Any]]) -> PromptedAnswer:
    if any(not isinstance(content, str) for _, content in pairs):
        raise _Skip("a message without text content")
    system = ""
    if pairs[0][0] == "system":
        system = pairs[0][1]
        pairs = pairs[1:]
    turns: list[Turn] = []
    for role, content in pairs:
        if role not in ("user", "assistant"):
            raise _Skip("a message of an unknown role, or a system message after the first")
        turns.append(Turn(Role(role), content))
    if len(turns) < 2 or turns[-1].role is not Role.ASSISTANT or turns[-2].role is not Role.USER:
        raise _Skip("not ending in a user message and the assistant's answer")
    answer = turns[-1].text
    if not answer.strip():
        raise _Skip("an empty answer")
    return PromptedAnswer(Prompt(system, turns[:-1]), answer)


def _alpaca_prompted(record: dict[str, Any]) -> PromptedAnswer:
    instruction, context, output = record.get("instruction"), record.get("input", ""), record.get("output")
    if not isinstance(instruction, str) or not isinstance(output, str) or not isinstance(context, str):
        raise _Skip("instruction, input or output missing or not text")
    if not instruction.strip() or not output.strip():
        raise _Skip("an empty instruction or output")
    # A chat model gets one user message: the instruction, then the input after a blank line.
    user = f"{instruction}\n\n{context}" if context else instruction
    return PromptedAnswer(Prompt("", [Turn(Role.USER, user)]), output, (instruction, context))


__all__ = [
    "DataFiles",
    "PreferenceText",
    "PromptStyle",
    "PromptedAnswer",
    "ReadReport",
    "TrainingDataError",
    "TrainingFormat",
    "TrainingText",
    "find_files",
    "find_preference_files",
    "read_examples",
    "read_preferences",
    "read_prompted",
]
