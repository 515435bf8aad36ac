"""Seed tasks and the teacher's side of ``botkit finetune synth``: reading seeds, the prompt, parsing answers.

Seed files are JSONL: botkit's own records (``instruction``, ``input``, ``output``)
or Stanford Alpaca's 175 seed tasks (``instruction`` and ``instances``, a list of
``input``/``output``; the first instance is used). Each request shows the teacher a
numbered list of examples and asks it to continue the list; its answer is parsed
back into tasks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from botkit import BotkitError

BUILTIN_SEEDS = "seed_tasks.jsonl"
NO_INPUT = "<noinput>"

PROMPT_TEMPLATE = """\
You are asked to come up with a set of {count} diverse task instructions. These task \
instructions will be given to a language model, and its answers will be evaluated.

Here are the requirements:
1. Do not repeat the verb in each instruction, to make the instructions diverse.
2. The language used for the instruction also should be diverse: questions and \
imperative instructions, long and short.
3. The type of instructions should be diverse: open-ended generation, classification, \
editing, rewriting, brainstorming, question answering, reasoning, coding...
4. A language model must be able to complete the instruction: do not ask for images, \
audio, files, web pages or actions in the world.
5. The instructions should be in English, one or two sentences.
6. Write an input for the instruction when it needs one (a text, a question, a list...), \
else write "{no_input}" as the input.
7. The output is an appropriate answer to the instruction and the input, under 100 words.

List of {count} tasks:
{examples}
Continue the list with tasks {first} to {count}, in the same format, each followed by a \
line with ###."""

_FIELD = re.compile(r"^\s*(\d+)\s*[.)]\s*(Instruction|Input|Output)\s*:\s?(.*)$", re.IGNORECASE)
_REFUSAL = re.compile(
    r"\b(I(?:'m| am) sorry|I can(?:no|')t (?:help|assist|comply|do that)|as an AI\b|I am unable|I'm unable)",
    re.IGNORECASE,
)


class SeedError(BotkitError):
    """A seed file that cannot be read: it names the file and the line."""


@dataclass(frozen=True)
class Task:
    """One Alpaca record."""

    instruction: str
    input: str
    output: str

    def record(self) -> dict[str, str]:
        return {"instruction": self.instruction, "input": self.input, "output": self.output}


def _text(value: object, where: str, key: str) -> str:
    if value is None and key == "input":
        return ""
    if not isinstance(value, str):
        raise SeedError(f"{where}: {key!r} must be a string")
    return value.strip()


def parse_seed(line: str, where: str) -> Task:
    """One seed line, botkit's or Alpaca's format; ``where`` (``file line N``) names it in errors."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as error:
        raise SeedError(f"{where}: not JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(data, dict):
        raise SeedError(f"{where}: must be a JSON object with 'instruction', 'input' and 'output'")
    if "instances" in data:  # Alpaca's / Self-Instruct's seed_tasks.jsonl
        instances = data["instances"]
        if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
            raise SeedError(
                f"{where}: 'instances' must be a non-empty list of objects with 'input' and 'output'"
            )
        data = {"instruction": data.get("instruction"), **instances[0]}
    instruction = _text(data.get("instruction"), where, "instruction")
    output = _text(data.get("output"), where, "output")
    if not instruction or not output:
        raise SeedError(f"{where}: 'instruction' and 'output' must not be empty")
    return Task(instruction, _text(data.get("input"), where, "input"), output)


def read_seeds(path: Path | None) -> tuple[list[Task], str]:
    """The seed tasks of ``path`` (None: botkit's own set) and how the card names them."""
    if path is None:
        text = resources.files(__package__).joinpath(BUILTIN_SEEDS).read_text(encoding="utf-8")
        name = f"botkit's built-in seed set ({BUILTIN_SEEDS})"
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise SeedError(f"{path}: cannot read the seed file ({error})") from None
        name = str(path)
    where = str(path) if path else BUILTIN_SEEDS
    tasks = [
        parse_seed(line, f"{where} line {number}")
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip()
    ]
    if not tasks:
        raise SeedError(f"{where}: no seed tasks (one JSON object a line)")
    return tasks, name


def render_prompt(examples: list[Task], count: int) -> str:
    """The request: ``examples`` numbered 1..k, then the teacher continues up to ``count``."""
    lines = []
    for number, task in enumerate(examples, 1):
        lines += [
            f"{number}. Instruction: {task.instruction}",
            f"{number}. Input: {task.input or NO_INPUT}",
            f"{number}. Output: {task.output}",
            "###",
        ]
    return PROMPT_TEMPLATE.format(
        count=count, examples="\n".join(lines), first=len(examples) + 1, no_input=NO_INPUT
    )


@dataclass
class Parsed:
    tasks: list[Task]
    malformed: int
    refused: bool


def parse_answer(text: str) -> Parsed:
    """The tasks in a teacher's answer; items without an instruction or an output count as malformed."""
    items: list[dict[str, list[str]]] = []
    current: dict[str, list[str]] | None = None
    key: str | None = None
    number: str | None = None
    for line in text.splitlines():
        found = _FIELD.match(line)
        if found:
            field_number, name, rest = found.group(1), found.group(2).lower(), found.group(3)
            if current is None or field_number != number or name in current:
                current, number = {}, field_number
                items.append(current)
            current[name], key = [rest], name
        elif line.strip() == "###":
            current, key, number = None, None, None
        elif current is not None and key is not None:
            current[key].append(line)
    tasks, malformed = [], 0
    for item in items:
        values = {name: "\n".join(lines).strip() for name, lines in item.items()}
        instruction, output = values.get("instruction", ""), values.get("output", "")
        if not instruction or not output:
            malformed += 1
            continue
        given = values.get("input", "")
        tasks.append(
            Task(instruction, "" if given.strip("<> ").lower() == NO_INPUT.strip("<>") else given, output)
        )
    return Parsed(tasks, malformed, refused=not tasks and bool(_REFUSAL.search(text)))
