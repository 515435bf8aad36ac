"""The contract every model backend implements, and the settings all backends share."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from pydantic import ConfigDict, Field

from botkit.errors import LoraError
from botkit.prompts import AlpacaVariant
from botkit.renamed_keys import RenamedKeys
from botkit.sampling import SAMPLING_KEYS, SamplingSettings, with_values
from botkit.types import Chunk, Prompt, SamplingParams


class BackendKind(RenamedKeys):
    """The keys that say what a backend is: its type and prompt format (a base of ``BackendSettings``)."""

    type: str = Field("llamacpp", description="which registered backend type answers")
    prompt_format: Literal["chat", "alpaca"] = Field(
        "chat", description="'chat': the model's own chat template; 'alpaca': the Stanford Alpaca template"
    )
    alpaca_variant: AlpacaVariant = Field(
        "stanford",
        description="with prompt_format 'alpaca': 'stanford', Stanford's template exactly (the answer "
        "follows '### Response:'), or 'alpaca-lora', with a newline after '### Response:'; as the "
        "model or adapter was trained",
    )


# BackendKind comes after SamplingSettings among the bases so that its keys come first
# where the table is shown (/config), as pydantic orders fields from the last base on.
class BackendSettings(SamplingSettings, BackendKind):
    """``[backend]`` in config.toml. A backend type extends this with its own keys.

    The sampling keys (``max_tokens``, ``temperature``...) come from ``SamplingSettings``;
    a backend type that renames a key lists it in ``renamed_keys``.
    """

    model_config = ConfigDict(extra="forbid")

    timeout: float = Field(120.0, gt=0, description="seconds after which a generation is ended")
    queue_limit: int = Field(100, ge=0, description="most requests waiting for the model at once")

    def sampling(self) -> SamplingParams:
        """The sampling parameters this table sets, for a request no override changes."""
        return with_values(SamplingParams(), {key: getattr(self, key) for key in SAMPLING_KEYS})


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """What a batching engine is doing now (``Backend.load``), for ``/status`` and ``botkit backends list``."""

    slots: int  # sequences that can generate at once
    slots_in_use: int
    kv_cache_mb: float  # memory held by saved conversation caches (``[backend] kv_cache_mb``)
    kv_cache_limit_mb: float
    kv_saved: int  # conversations whose cache is saved in that memory
    evictions: int  # caches dropped for lack of room since start, to be evaluated again
    reused_tokens: int  # prompt tokens not evaluated again because a cache held them, since start
    evaluated_tokens: int  # prompt tokens evaluated, since start


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
        # Requests a backend with its own retry loop tried again, by reason (``rate_limited``,
        # ``server_error``, ``connection``, ``timeout``), since start: botkit_backend_retries_total.
        self.retried: Counter[str] = Counter()

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

    def load(self) -> EngineLoad | None:
        """What its engine is doing now; ``None`` for a backend that does not report it."""
        return None

    @property
    def loras(self) -> dict[str, str]:
        """LoRA adapters this backend can apply, by name (to a path or id). Empty: none."""
        return {}

    @property
    def active_lora(self) -> str | None:
        """The LoRA adapter applied when a request names none; ``None`` for the base model."""
        return None

    async def switch_lora(self, lora: str | None) -> str:
        """Make ``lora`` (a name from ``loras``, or a path) the active LoRA adapter; ``None`` for none.

        Takes effect from the next generation, without reloading the base model.
        Returns a one-line note for the admin; raises ``LoraError`` with a message
        naming the problem (unknown name, unreadable file, another base model).
        """
        raise LoraError(f"the {type(self).__name__} backend does not take LoRA adapters")

    @abstractmethod
    async def count_tokens(self, prompt: Prompt) -> int:
        """Tokens the rendered ``prompt`` takes, counted with the model's tokenizer."""

    @abstractmethod
    async def count_text(self, text: str) -> int:
        """Tokens of plain ``text`` (one turn's content, without template markup)."""

    @abstractmethod
    def stream(self, prompt: Prompt, params: SamplingParams, cancel: threading.Event) -> AsyncIterator[Chunk]:
        """Generate a reply chunk by chunk, stopping soon after ``cancel`` is set."""
