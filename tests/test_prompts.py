"""Prompt rendering: the Stanford Alpaca templates, the Alpaca history rule, and chat templates."""

from __future__ import annotations

import pytest

from botkit.backends.scripted import CHATML_TEMPLATE
from botkit.prompts import (
    TemplateError,
    alpaca_fields,
    alpaca_text,
    chat_messages,
    render_alpaca,
    render_chat,
)
from botkit.types import Prompt, Role, Turn

# Stanford Alpaca's PROMPT_DICT (tatsu-lab/stanford_alpaca, train.py), copied byte for byte.
STANFORD_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
STANFORD_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def test_alpaca_without_input_is_the_stanford_template():
    prompt = Prompt("", [Turn(Role.USER, "Give three tips for staying healthy.")])
    assert render_alpaca(prompt) == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nGive three tips for staying healthy.\n\n### Response:"
    )
    assert render_alpaca(prompt) == STANFORD_PROMPT_NO_INPUT.format(instruction=prompt.current.text)


@pytest.mark.parametrize(
    ("variant", "after"), [("stanford", ""), ("alpaca-lora", "\n")]
)
def test_both_variants_byte_for_byte_with_and_without_input(variant, after):
    fields = {"instruction": "Sum {a} and 2.", "input": "a = 1"}  # braces in user text stay as they are
    assert alpaca_text(fields["instruction"], fields["input"], variant) == (
        STANFORD_PROMPT_INPUT.format(**fields) + after
    )
    assert alpaca_text(fields["instruction"], "", variant) == STANFORD_PROMPT_NO_INPUT.format(**fields) + after
    # No system prompt (or only spaces) and no history: the template without input.
    bare = Prompt(" \n", [Turn(Role.USER, fields["instruction"])])
    assert render_alpaca(bare, variant) == STANFORD_PROMPT_NO_INPUT.format(**fields) + after
    with pytest.raises(ValueError, match="unknown Alpaca variant 'alpaca_lora'"):
        alpaca_text("hi", "", "alpaca_lora")  # type: ignore[arg-type]


def test_alpaca_with_history_puts_system_and_turns_into_input():
    prompt = Prompt(
        "Be terse.",
        [
            Turn(Role.USER, "Hi, I'm Ann.", speaker="ann"),
            Turn(Role.ASSISTANT, "Hello Ann."),
            Turn(Role.USER, "What is my name?"),
        ],
    )
    assert alpaca_fields(prompt) == (
        "What is my name?",
        "Be terse.\n\nann: Hi, I'm Ann.\nAssistant: Hello Ann.",
    )
    assert render_alpaca(prompt) == (
        "Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nWhat is my name?\n\n"
        "### Input:\nBe terse.\n\nann: Hi, I'm Ann.\nAssistant: Hello Ann.\n\n"
        "### Response:"
    )


def test_chat_messages_keep_sender_names_and_skip_an_empty_system_prompt():
    prompt = Prompt(
        " ", [Turn(Role.USER, "hi", speaker="bob"), Turn(Role.ASSISTANT, "hey"), Turn(Role.USER, "?")]
    )
    assert chat_messages(prompt) == [
        {"role": "user", "content": "bob: hi"},
        {"role": "assistant", "content": "hey"},
        {"role": "user", "content": "?"},
    ]


def test_chat_template_renders_with_generation_prompt():
    prompt = Prompt("sys", [Turn(Role.USER, "hello")])
    assert render_chat(prompt, CHATML_TEMPLATE) == (
        "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chat_template_gets_bos_and_raise_exception():
    template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('no system role') }}{% endif %}[{{ m['content'] }}]{% endfor %}"
    )
    assert render_chat(Prompt("", [Turn(Role.USER, "x")]), template, bos_token="<s>") == "<s>[x]"
    with pytest.raises(TemplateError, match="no system role"):
        render_chat(Prompt("sys", [Turn(Role.USER, "x")]), template)


def test_broken_template_is_a_template_error():
    with pytest.raises(TemplateError, match="does not compile"):
        render_chat(Prompt("", [Turn(Role.USER, "x")]), "{% for %}")


def test_templates_are_sandboxed():
    template = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(TemplateError):
        render_chat(Prompt("", [Turn(Role.USER, "x")]), template)
