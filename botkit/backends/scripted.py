"""A backend that replies from a script: for tests, benchmarks and demos without a model.

Each generation takes the next scripted reply (a list of chunks) from a queue;
when the queue is empty it answers ``default_reply`` split into words. Every
request is recorded, so a test can check what the model was asked.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field

from botkit import hookimpl
from botkit.backend import Backend, BackendSettings
from botkit.errors import LoraError
from botkit.prompts import render_alpaca, render_chat
from botkit.types import Chunk, Prompt, SamplingParams

# A plain ChatML template, so that chat-format prompts render as with a real model.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ScriptedSettings(BackendSettings):
    renamed_keys: ClassVar[dict[str, str]] = {"adapters": "loras"}

    type: str = "scripted"
    default_reply: str = Field(
        "Hello from the scripted backend.", description="reply when the script is empty"
    )
    chunk_delay: float = Field(0.0, ge=0, description="seconds to wait before each chunk")
    context_window: int = Field(4096, ge=16)
    loras: dict[str, str] = Field(
        default_factory=dict, description="LoRA adapters it pretends to have, name to path (to test switching)"
    )


@dataclass(frozen=True, slots=True)
class Request:
    """One recorded generation request."""

    prompt: Prompt
    rendered: str
    params: SamplingParams


def split_words(text: str) -> list[str]:
    """``"a b c"`` -> ``["a ", "b ", "c"]``: chunks that join back to ``text``."""
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + words[-1:]


class ScriptedBackend(Backend):
    """Replies with scripted chunks; records every request."""

    settings: ScriptedSettings

    def __init__(self, settings: ScriptedSettings | None = None) -> None:
        super().__init__(settings or ScriptedSettings())
        self.script: deque[list[str | Exception]] = deque()
        self.requests: list[Request] = []
        self.started = False
        self.closed = False
        self._active_lora: str | None = None

    @property
    def model_name(self) -> str:
        return "scripted"

    @property
    def context_window(self) -> int:
        return self.settings.context_window

    @property
    def loras(self) -> dict[str, str]:
        return dict(self.settings.loras)

    @property
    def active_lora(self) -> str | None:
        return self._active_lora

    async def switch_lora(self, lora: str | None) -> str:
        if lora is not None and lora not in self.loras:
            known = ", ".join(sorted(self.settings.loras)) or "none"
            raise LoraError(f"no LoRA adapter {lora!r} in [{self.table}] loras (it has: {known})")
        self._active_lora = lora
        return f"backend now answers with LoRA adapter {lora}" if lora else "backend now answers without LoRA adapter"

    def add_reply(self, *chunks: str | Exception) -> None:
        """Queue one reply, given as its chunks. An exception among them is raised there."""
        self.script.append(list(chunks))

    def say(self, text: str) -> None:
        """Queue one reply, streamed word by word."""
        self.add_reply(*split_words(text))

    @property
    def prompts(self) -> list[Prompt]:
        return [request.prompt for request in self.requests]

    def render(self, prompt: Prompt) -> str:
        if self.settings.prompt_format == "alpaca":
            return render_alpaca(prompt)
        return render_chat(prompt, CHATML_TEMPLATE)

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    async def count_tokens(self, prompt: Prompt) -> int:
        return await self.count_text(self.render(prompt))

    async def count_text(self, text: str) -> int:
        # About four characters a token, as for English text with a BPE tokenizer.
        return len(text) // 4 + 1

    async def stream(
        self, prompt: Prompt, params: SamplingParams, cancel: threading.Event
    ) -> AsyncIterator[Chunk]:
        self.requests.append(Request(prompt, self.render(prompt), params))
        if self.script:
            chunks = self.script.popleft()
        else:
            chunks = list(split_words(self.settings.default_reply))
        for piece in chunks[: params.max_tokens]:
            if cancel.is_set():
                return
            if self.settings.chunk_delay:
                await asyncio.sleep(self.settings.chunk_delay)
            if isinstance(piece, Exception):
                raise piece
            yield Chunk(piece)


@hookimpl
def botkit_register_backends(register):
    register("scripted", ScriptedBackend, ScriptedSettings)
