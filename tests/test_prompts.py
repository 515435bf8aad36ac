"""Prompt rendering: the Stanford Alpaca templates, the Alpaca history rule, and chat templates."""

from __future__ import annotations

import pytest

from botkit.backends.scripted import CHATML_TEMPLATE
from botkit.prompts import TemplateError, alpaca_fields, chat_messages, render_alpaca, render_chat
from botkit.types import Prompt, Role, Turn


def test_alpaca_without_input_is_the_stanford_template():
    prompt = Prompt("", [Turn(Role.USER, "Give three tips for staying healthy.")])
    assert render_alpaca(prompt) == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nGive three tips for staying healthy.\n\n### Response:\n"
    )


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
        "### Response:\n"
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
