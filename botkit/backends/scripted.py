"""A backend that replies from a script: for tests, benchmarks and demos without a model.

Each generation takes the next scripted reply (a list of chunks) from a queue;
when the queue is empty it answers ``default_reply`` split into words, or, after
``answer_with(reply)``, ``reply(prompt)``: a model whose answer depends on what
it was asked. Every request is recorded, so a test can check what the model was asked
and with which of its ``loras`` (the request's ``lora``, else the active one).

A test never needs to sleep to catch a generation in progress; it awaits what
the backend reports instead:

- ``await backend.wait_for_generation(n)``: the ``n``-th request has arrived
  and its stream has begun (returns its ``Request``);
- ``await backend.wait_for_chunks(n)``: ``n`` chunks in all have been sent,
  each taken by the caller, which then asked for the next (``sent`` lists them);
- a ``Gate`` among a reply's chunks holds the stream there until the test
  opens it: ``gate = backend.hold("answer")`` queues a reply that waits before
  its first chunk, ``backend.add_reply("partial ", gate, "rest")`` one that waits
  after its first, and ``backend.say_in_parts("Hello ", "there")`` one that waits
  after each part but the last (it returns those gates). ``await gate.reached()``
  returns once the stream waits at the gate; ``gate.open()`` lets it go on. A
  held stream still ends when the request is cancelled (``/stop``, shutdown)
  or times out.

Each wait raises ``TimeoutError``, saying what never happened, after
``timeout`` seconds (default ``WAIT_TIMEOUT``), so a broken test fails instead
of hanging. ``chunk_delay`` slows every chunk down by a fixed time, for
benchmarks and demos; tests hold a reply with a gate instead.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field

from botkit import hookimpl
from botkit.backend import Backend, BackendSettings
from botkit.errors import LoraError
from botkit.prompts import render_alpaca, render_chat
from botkit.types import NO_LORA, Chunk, Prompt, SamplingParams

# Seconds a test waits for an event before it fails: generous, for a busy machine.
WAIT_TIMEOUT = 30.0
# How often a stream held at a gate looks whether its request was cancelled
# (the cancel flag is a threading.Event, which cannot be awaited).
_CANCEL_POLL = 0.01

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
        default_factory=dict,
        description="LoRA adapters it pretends to have, name to path (to test switching)",
    )


@dataclass(frozen=True, slots=True)
class Request:
    """One recorded generation request."""

    prompt: Prompt
    rendered: str
    params: SamplingParams
    lora: str | None  # the LoRA adapter it was answered with (the request's, else the active one)


class Gate:
    """A point in a scripted reply where the stream waits until the test calls ``open``.

    Create it inside the test's event loop (``ScriptedBackend.hold`` does).
    """

    def __init__(self) -> None:
        self._reached = asyncio.Event()
        self._opened = asyncio.Event()

    @property
    def is_reached(self) -> bool:
        """Whether the stream has arrived at the gate (every chunk before it was sent)."""
        return self._reached.is_set()

    @property
    def is_open(self) -> bool:
        return self._opened.is_set()

    async def reached(self, timeout: float = WAIT_TIMEOUT) -> None:
        """Wait until the stream arrives at the gate: the generation is under way and held there."""
        try:
            async with asyncio.timeout(timeout):
                await self._reached.wait()
        except TimeoutError:
            raise TimeoutError(f"no scripted stream reached the gate within {timeout:g} s") from None

    def open(self) -> None:
        """Let the stream held here go on (or pass straight through, if it has not arrived yet)."""
        self._opened.set()

    async def _pass(self, cancel: threading.Event) -> bool:
        """Wait here until opened; ``False`` when the request was cancelled meanwhile."""
        self._reached.set()
        while not self._opened.is_set():
            if cancel.is_set():
                return False
            try:
                async with asyncio.timeout(_CANCEL_POLL):
                    await self._opened.wait()
            except TimeoutError:
                continue  # still closed: look at the cancel flag (set from another thread) again
        return True


Piece = str | Exception | Gate


def split_words(text: str) -> list[str]:
    """``"a b c"`` -> ``["a ", "b ", "c"]``: chunks that join back to ``text``."""
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + words[-1:]


class ScriptedBackend(Backend):
    """Replies with scripted chunks; records every request and reports its progress (see the module)."""

    settings: ScriptedSettings

    def __init__(self, settings: ScriptedSettings | None = None) -> None:
        super().__init__(settings or ScriptedSettings())
        self.script: deque[list[Piece]] = deque()
        self.requests: list[Request] = []
        self.sent: list[str] = []  # every chunk the caller took, across generations
        self._progress = asyncio.Event()
        self.started = False
        self.closed = False
        self._active_lora: str | None = None
        self._answer: Callable[[Prompt], str] | None = None

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
        return (
            f"backend now answers with LoRA adapter {lora}"
            if lora
            else "backend now answers without LoRA adapter"
        )

    def add_reply(self, *chunks: Piece) -> None:
        """Queue one reply, given as its chunks. An exception among them is raised there;
        at a ``Gate`` the stream waits until the gate is opened."""
        self.script.append(list(chunks))

    def answer_with(self, reply: Callable[[Prompt], str] | None) -> None:
        """Answer each request the script has no reply for with ``reply(prompt)``, streamed word by word
        (``None``: ``default_reply`` again). An exception it raises fails that generation."""
        self._answer = reply

    def say(self, text: str) -> None:
        """Queue one reply, streamed word by word."""
        self.add_reply(*split_words(text))

    def hold(self, *chunks: Piece) -> Gate:
        """Queue a reply (``chunks``, or ``default_reply`` when none) that waits before its first
        chunk until the returned gate is opened: a generation in progress for as long as a test needs."""
        gate = Gate()
        self.add_reply(gate, *(chunks or split_words(self.settings.default_reply)))
        return gate

    def say_in_parts(self, *parts: str) -> list[Gate]:
        """Queue one reply of ``parts`` (each streamed word by word) that waits at a gate after each
        part but the last; returns those gates in order. A test sees each part delivered, then opens
        the next gate: a reply streamed in steps, however fast or slow the machine."""

        def words(part: str) -> list[Piece]:
            return [word for word in split_words(part) if word]  # "a " gives no empty last chunk

        gates = [Gate() for _ in parts[1:]]
        pieces = words(parts[0]) if parts else []
        for gate, part in zip(gates, parts[1:], strict=True):
            pieces += [gate, *words(part)]
        self.add_reply(*pieces)
        return gates

    async def wait_for_generation(self, count: int = 1, timeout: float = WAIT_TIMEOUT) -> Request:
        """Wait until ``count`` generations in all have begun; return the request of the ``count``-th."""
        await self._until(lambda: len(self.requests) >= count, timeout, f"generation {count} to start")
        return self.requests[count - 1]

    async def wait_for_chunks(self, count: int, timeout: float = WAIT_TIMEOUT) -> None:
        """Wait until ``count`` chunks in all have been sent and taken (see ``sent``)."""
        await self._until(lambda: len(self.sent) >= count, timeout, f"chunk {count} to be sent")

    async def _until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not done():
                    await self._progress.wait()
        except TimeoutError:
            raise TimeoutError(
                f"scripted backend: waited {timeout:g} s for {what}; "
                f"{len(self.requests)} generation(s) began and {len(self.sent)} chunk(s) were sent"
            ) from None

    def _report_progress(self) -> None:
        # Wake every waiter once; each looks again at what it waits for.
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    @property
    def prompts(self) -> list[Prompt]:
        return [request.prompt for request in self.requests]

    def render(self, prompt: Prompt) -> str:
        if self.settings.prompt_format == "alpaca":
            return render_alpaca(prompt, self.settings.alpaca_variant)
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
        # As a real backend does: a request's adapter overrides the active one, and an unknown name fails.
        lora = self._active_lora if params.lora is None else params.lora
        if lora == NO_LORA:
            lora = None
        if lora is not None and lora not in self.loras:
            raise LoraError(f"no LoRA adapter {lora!r} in [{self.table}] loras (it has: {', '.join(self.loras) or 'none'})")
        self.requests.append(Request(prompt, self.render(prompt), params, lora))
        self._report_progress()
        if self.script:
            chunks: list[Piece] = self.script.popleft()
        elif self._answer is not None:
            chunks = list(split_words(self._answer(prompt)))
        else:
            chunks = list(split_words(self.settings.default_reply))
        # A gate is no token: ``max_tokens`` counts the text chunks only.
        budget = params.max_tokens
        for piece in chunks:
            if cancel.is_set():
                return
            if isinstance(piece, Gate):
                if not await piece._pass(cancel):
                    return
                continue
            if budget == 0:
                # Text left over: cut at max_tokens, as an engine's finish reason "length" says.
                yield Chunk("", tokens=0, truncated=True)
                return
            budget -= 1
            if self.settings.chunk_delay:
                await asyncio.sleep(self.settings.chunk_delay)
            if isinstance(piece, Exception):
                raise piece
            yield Chunk(piece)
            # The caller came back for more: it has taken this chunk.
            self.sent.append(piece)
            self._report_progress()


@hookimpl
def botkit_register_backends(register):
    register("scripted", ScriptedBackend, ScriptedSettings)
