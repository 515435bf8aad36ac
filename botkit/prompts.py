"""The one place that renders prompts: the Stanford Alpaca template and models' chat templates.

Alpaca rule (also used by finetune/ when it writes Alpaca data): the newest user
turn is the *instruction*; the system prompt and the earlier turns, one
``Speaker: text`` line each, form the *input*. With neither, the template
without input is used.

The Alpaca texts are Stanford's, byte for byte (``PROMPT_DICT`` in
tatsu-lab/stanford_alpaca's train.py): the prompt ends with ``### Response:``
and the answer follows at once. The ``alpaca-lora`` variant (tloen/alpaca-lora's
template) ends with ``### Response:\n``. The bot prompts its model and finetune
writes and reads training data through ``alpaca_text``, so an adapter sees at
run time exactly what it was trained on.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any, Literal, get_args

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from botkit.types import Prompt, Role, Turn

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_WITHOUT_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
ALPACA_STOP = ("### Instruction:", "### Input:", "### Response:")

# "stanford": the templates above as they are; "alpaca-lora": with a newline after "### Response:".
AlpacaVariant = Literal["stanford", "alpaca-lora"]
ALPACA_VARIANTS: tuple[str, ...] = get_args(AlpacaVariant)


class TemplateError(ValueError):
    """A chat template could not be compiled or rendered."""


def speaker_label(turn: Turn) -> str:
    if turn.role is Role.ASSISTANT:
        return "Assistant"
    if turn.role is Role.SYSTEM:
        return "System"
    return turn.speaker or "User"


def alpaca_fields(prompt: Prompt) -> tuple[str, str]:
    """``(instruction, input)`` for ``prompt`` under the Alpaca rule above."""
    parts = []
    if prompt.system.strip():
        parts.append(prompt.system.strip())
    if prompt.history:
        parts.append("\n".join(f"{speaker_label(t)}: {t.text}" for t in prompt.history))
    return prompt.current.text, "\n\n".join(parts)


def alpaca_text(instruction: str, context: str, variant: AlpacaVariant = "stanford") -> str:
    """The Alpaca prompt of an ``instruction`` and its ``input`` (``context``; empty: the template
    without input), in ``variant``; the answer is written right after it."""
    if variant not in ALPACA_VARIANTS:
        raise ValueError(f"unknown Alpaca variant {variant!r}: use one of {', '.join(ALPACA_VARIANTS)}")
    if context:
        text = ALPACA_WITH_INPUT.format(instruction=instruction, input=context)
    else:
        text = ALPACA_WITHOUT_INPUT.format(instruction=instruction)
    return text + "\n" if variant == "alpaca-lora" else text


def render_alpaca(prompt: Prompt, variant: AlpacaVariant = "stanford") -> str:
    """``prompt`` under the Alpaca rule above, in ``variant``."""
    return alpaca_text(*alpaca_fields(prompt), variant)


def chat_messages(prompt: Prompt) -> list[dict[str, str]]:
    """The prompt as role/content messages; shared conversations keep the sender's name."""
    messages = [{"role": "system", "content": prompt.system}] if prompt.system.strip() else []
    for turn in prompt.turns:
        content = turn.text
        if turn.role is Role.USER and turn.speaker:
            content = f"{turn.speaker}: {content}"
        messages.append({"role": turn.role.value, "content": content})
    return messages


def _raise(message: str) -> None:
    raise TemplateError(message)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateError as error:
        raise TemplateError(f"chat template does not compile: {error}") from error


def render_chat(prompt: Prompt, template: str, bos_token: str = "", eos_token: str = "") -> str:
    """Render ``prompt`` with a model's Jinja2 chat template, ready for the reply."""
    context: dict[str, Any] = {
        "messages": chat_messages(prompt),
        "add_generation_prompt": True,
        "bos_token": bos_token,
        "eos_token": eos_token,
    }
    try:
        return _compile(template).render(**context)
    except jinja2.TemplateError as error:
        raise TemplateError(f"chat template failed to render: {error}") from error
