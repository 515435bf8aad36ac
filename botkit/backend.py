"""The contract every model backend implements, and the settings all backends share."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from botkit.errors import AdapterError
from botkit.types import Chunk, Prompt, SamplingParams


class BackendSettings(BaseModel):
    """``[backend]`` in config.toml. A backend type extends this with its own keys."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field("llamacpp", description="which registered backend type answers")
    prompt_format: Literal["chat", "alpaca"] = Field(
        "chat", description="'chat': the model's own chat template; 'alpaca': the Stanford Alpaca template"
    )
    max_tokens: int = Field(512, ge=1, description="most tokens one reply may have")
    temperature: float = Field(0.7, ge=0.0, le=5.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    repeat_penalty: float = Field(1.1, ge=0.0)
    seed: int | None = Field(None, description="fixed sampling seed; unset for a random one")
    stop: list[str] = Field(default_factory=list, description="extra stop strings")
    timeout: float = Field(120.0, gt=0, description="seconds after which a generation is ended")
    queue_limit: int = Field(100, ge=0, description="most requests waiting for the model at once")

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repeat_penalty=self.repeat_penalty,
            seed=self.seed,
            stop=tuple(self.stop),
        )


class Backend(ABC):
    """A loaded model that turns a ``Prompt`` into a stream of ``Chunk``s.

    botkit never calls ``stream`` more often at once than ``concurrency``: the
    core's generation queue makes requests wait their turn.
    """

    concurrency: int = 1
    # Its config table, for messages: "backend", or "backends.<name>" for a named one.
    table: str = "backend"

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings

    @property
    @abstractmethod
    def model_name(self) -> str:
        """A name for the loaded model, stored with every reply."""

    @property
    @abstractmethod
    def context_window(self) -> int:
        """Tokens the model can attend to: prompt and reply together."""

    async def start(self) -> None:  # noqa: B027 - optional: a backend may load nothing
        """Load the model. Called once before the first request."""

    async def close(self) -> None:  # noqa: B027 - optional: a backend may hold nothing
        """Release the model. No request is in flight when this is called."""

    @property
    def adapters(self) -> dict[str, str]:
        """LoRA adapters this backend can apply, by name (to a path or id). Empty: none."""
        return {}

    @property
    def active_adapter(self) -> str | None:
        """The adapter applied when a request names none; ``None`` for the base model."""
        return None

    async def switch_adapter(self, adapter: str | None) -> str:
        """Make ``adapter`` (a name from ``adapters``, or a path) the active one; ``None`` for none.

        Takes effect from the next generation, without reloading the base model.
        Returns a one-line note for the admin; raises ``AdapterError`` with a
        message naming the problem (unknown name, unreadable file, another base model).
        """
        raise AdapterError(f"the {type(self).__name__} backend does not take LoRA adapters")

    @abstractmethod
    async def count_tokens(self, prompt: Prompt) -> int:
        """Tokens the rendered ``prompt`` takes, counted with the model's tokenizer."""

    @abstractmethod
    async def count_text(self, text: str) -> int:
        """Tokens of plain ``text`` (one turn's content, without template markup)."""

    @abstractmethod
    def stream(self, prompt: Prompt, params: SamplingParams, cancel: threading.Event) -> AsyncIterator[Chunk]:
        """Generate a reply chunk by chunk, stopping soon after ``cancel`` is set."""
