"""Output formats (Alpaca, chat messages, ShareGPT, preference pairs), the train/validation split, the files.

Prompts are rendered by ``botkit.prompts``, the same code the bot uses to
talk to a model, so training data and inference agree:

- ``alpaca`` / ``alpaca-jsonl``: exactly ``instruction``, ``input``, ``output``
  (and ``truncated: true`` on an answer cut at max_tokens, kept only with
  ``--keep-truncated``; so in every format).
  The newest user message is the instruction; the system prompt and the
  earlier turns, one ``Speaker: text`` line each, form the input.
- ``chat``: ``messages``, a list of ``role``/``content`` (system, user,
  assistant), as TRL's SFT trainer and OpenAI fine-tuning read it.
- ``sharegpt``: ``conversations``, a list of ``from`` (system, human, gpt) and ``value``.
- ``preference``: ``prompt``, ``chosen``, ``rejected`` for TRL's DPO trainer;
  conversational (lists of messages) or, with ``alpaca`` prompts, plain text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botkit import Prompt
from botkit.prompts import AlpacaVariant, alpaca_fields, chat_messages, render_alpaca

from .dedup import fingerprint
from .examples import APPROVED, FORMATS, REJECTED, Example, PreferencePrompt

SPLITS = ("train", "validation")
__all__ = ["FORMATS", "SPLITS", "DatasetWriter", "Pair", "PreferencePairs", "PreferencePrompt"]
SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt"}
PAIRS_PER_PROMPT = 8  # most pairs made from the alternative answers to one prompt


def file_name(format_name: str, split: str) -> str:
    """Where a format's split goes, relative to the export folder."""
    return f"{format_name}/{split}.{'json' if format_name == 'alpaca' else 'jsonl'}"


def in_validation(conversation_id: int, seed: int, fraction: float) -> bool:
    """Whether a conversation's examples go to validation: a seeded hash, so the same run splits the same."""
    digest = hashlib.blake2b(f"{seed}:{conversation_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def alpaca_record(prompt: Prompt, output: str, alpaca: tuple[str, str] | None = None) -> dict[str, str]:
    """``alpaca``: an Alpaca record's own instruction and input, kept as they were."""
    instruction, context = alpaca or alpaca_fields(prompt)
    return {"instruction": instruction, "input": context, "output": output}


def chat_messages_record(prompt: Prompt, output: str, alpaca: tuple[str, str] | None = None) -> dict[str, Any]:
    return {"messages": [*chat_messages(prompt), {"role": "assistant", "content": output}]}


def sharegpt_record(prompt: Prompt, output: str, alpaca: tuple[str, str] | None = None) -> dict[str, Any]:
    messages = chat_messages_record(prompt, output)["messages"]
    return {"conversations": [{"from": SHAREGPT_FROM[m["role"]], "value": m["content"]} for m in messages]}


def chat_record(example: Example) -> dict[str, Any]:
    """An example as a ``chat`` record."""
    return chat_messages_record(example.prompt(), example.output)


# The formats of one example (a prompt and its answer); preference records are made of pairs.
RECORDS = {
    "alpaca": alpaca_record,
    "alpaca-jsonl": alpaca_record,
    "chat": chat_messages_record,
    "sharegpt": sharegpt_record,
}


@dataclass(slots=True)
class Pair:
    """A preference pair: two answers to one prompt, the better one first."""

    conversation_id: int
    prompt: Prompt
    chosen: str
    rejected: str
    source: str  # "correction" or "feedback"


def preference_record(
    pair: Pair, style: PreferencePrompt, variant: AlpacaVariant = "stanford"
) -> dict[str, Any]:
    if style == "alpaca":
        prompt = render_alpaca(pair.prompt, variant)
        return {"prompt": prompt, "chosen": pair.chosen, "rejected": pair.rejected}
    return {
        "prompt": chat_messages(pair.prompt),
        "chosen": [{"role": "assistant", "content": pair.chosen}],
        "rejected": [{"role": "assistant", "content": pair.rejected}],
    }


@dataclass(slots=True)
class _Alternatives:
    prompt: Prompt
    better: list[tuple[int, str]] = field(default_factory=list)  # (conversation, answer)
    worse: list[tuple[int, str]] = field(default_factory=list)


class PreferencePairs:
    """Collects preference pairs: from corrections at once, from rated alternative answers at the end.

    Alternatives are replies to the same prompt (same system prompt, history
    and message, compared normalised): an answer voted up or approved is
    better than one voted down or rejected. Only rated answers are kept until
    the end, so memory grows with them, not with the export.
    """

    def __init__(self) -> None:
        self._alternatives: dict[int, _Alternatives] = {}
        self.from_corrections = 0
        self.from_feedback = 0

    def observe(self, example: Example) -> Pair | None:
        """Take a candidate example; returns the pair its correction makes, if any."""
        if example.rejected is not None:
            if example.rejected.strip() == example.output.strip():
                return None
            self.from_corrections += 1
            return Pair(
                example.conversation_id, example.prompt(), example.output, example.rejected, "correction"
            )
        feedback = example.feedback
        better = feedback.review == APPROVED or (feedback.review is None and feedback.net > 0)
        worse = feedback.review == REJECTED or (feedback.review is None and feedback.net < 0)
        if better or worse:
            prompt = example.prompt()
            key = fingerprint(prompt.system, *(f"{t.role}:{t.text}" for t in prompt.turns))
            group = self._alternatives.setdefault(key, _Alternatives(prompt))
            (group.better if better else group.worse).append((example.conversation_id, example.output))
        return None

    def alternatives(self) -> Iterator[Pair]:
        """Pairs of a better and a worse answer to the same prompt, at most PAIRS_PER_PROMPT each."""
        for group in self._alternatives.values():
            made = 0
            for conversation, chosen in group.better:
                for _, rejected in group.worse:
                    if made == PAIRS_PER_PROMPT or chosen.strip() == rejected.strip():
                        continue
                    made += 1
                    self.from_feedback += 1
                    yield Pair(conversation, group.prompt, chosen, rejected, "feedback")


class JsonFile:
    """One output file, created on the first record (so nothing empty is ever written)."""

    def __init__(self, path: Path, array: bool) -> None:
        self.path = path
        self.array = array
        self.count = 0
        self._file: Any = None

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False)
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w", encoding="utf-8")
            if self.array:
                self._file.write("[\n")
        elif self.array:
            self._file.write(",\n")
        self._file.write(line if self.array else line + "\n")
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            if self.array:
                self._file.write("\n]\n")
            self._file.close()
            self._file = None


class DatasetWriter:
    """Writes examples and pairs into ``folder``, every requested format, split by conversation.

    With ``folder`` None nothing is written but everything is counted (a dry run).
    A weighted example appears ``weight`` times in train, once in validation.
    """

    def __init__(
        self,
        folder: Path | None,
        formats: tuple[str, ...],
        seed: int,
        validation_fraction: float,
        preference_prompt: PreferencePrompt = "chat",
        alpaca_variant: AlpacaVariant = "stanford",
    ) -> None:
        self.folder = folder
        self.formats = formats
        self.seed = seed
        self.validation_fraction = validation_fraction
        self.preference_prompt = preference_prompt
        self.alpaca_variant = alpaca_variant
        self.counts: dict[str, dict[str, int]] = {name: dict.fromkeys(SPLITS, 0) for name in formats}
        # Conversations per split, counted as they stream by (examples arrive in conversation order).
        self.conversations: dict[str, int] = dict.fromkeys(SPLITS, 0)
        self._last_conversation: dict[str, int | None] = dict.fromkeys(SPLITS)
        self._files: dict[tuple[str, str], JsonFile] = {}

    def split_of(self, conversation_id: int) -> str:
        return (
            "validation" if in_validation(conversation_id, self.seed, self.validation_fraction) else "train"
        )

    def _emit(self, format_name: str, split: str, record: dict[str, Any], copies: int = 1) -> None:
        self.counts[format_name][split] += copies
        if self.folder is None:
            return
        key = (format_name, split)
        if key not in self._files:
            self._files[key] = JsonFile(self.folder / file_name(format_name, split), format_name == "alpaca")
        for _ in range(copies):
            self._files[key].write(record)

    def example(self, example: Example) -> None:
        split = self.split_of(example.conversation_id)
        copies = example.weight if split == "train" else 1
        wrote = False
        prompt = example.prompt()
        for format_name in self.formats:
            make = RECORDS.get(format_name)
            if make is not None:
                record: dict[str, Any] = dict(make(prompt, example.output))
                if example.truncated:  # kept with --keep-truncated: the label says the answer was cut
                    record["truncated"] = True
                self._emit(format_name, split, record, copies)
                wrote = True
        if wrote:
            self._count_conversation(split, example.conversation_id)

    def mixed(self, prompt: Prompt, output: str, alpaca: tuple[str, str] | None = None) -> None:
        """An example of another source (``--mix``): train only, in every format but preference."""
        for format_name in self.formats:
            make = RECORDS.get(format_name)
            if make is not None:
                self._emit(format_name, "train", make(prompt, output, alpaca))

    def _count_conversation(self, split: str, conversation_id: int) -> None:
        if self._last_conversation[split] != conversation_id:
            self._last_conversation[split] = conversation_id
            self.conversations[split] += 1

    def pair(self, pair: Pair) -> None:
        """Write a pair; those from corrections arrive in conversation order and count their conversation."""
        if "preference" in self.formats:
            split = self.split_of(pair.conversation_id)
            self._emit(
                "preference", split, preference_record(pair, self.preference_prompt, self.alpaca_variant)
            )
            if pair.source == "correction":
                self._count_conversation(split, pair.conversation_id)

    @property
    def total(self) -> int:
        return sum(sum(splits.values()) for splits in self.counts.values())

    def close(self) -> None:
        for file in self._files.values():
            file.close()

    def files(self) -> list[tuple[str, int]]:
        """``(relative path, records)`` of every file written."""
        return [(file_name(f, s), file.count) for (f, s), file in sorted(self._files.items())]
