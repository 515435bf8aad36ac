"""The LoRA adapters of an in-process backend: its LoRA keys, the adapters loaded, the active one, switching.

The llama.cpp and transformers backends are ``LoraBackend``s: they keep their
adapters in a ``LoraSet`` and give it the one thing that differs, how an adapter is
checked against the loaded model and loaded into the engine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from botkit.backend import Backend
from botkit.errors import LoraError
from botkit.types import NO_LORA

Handle = TypeVar("Handle")


class LoraSettings(BaseModel):
    """The LoRA keys of a backend that applies adapters itself: ``lora_path`` and the named ``loras``.

    A settings class takes them by listing this before ``BackendSettings`` among its bases.
    """

    model_config = ConfigDict(extra="forbid")
    # Read by BackendSettings (a RenamedKeys): "adapters" is loras' old name, until the next release.
    renamed_keys: ClassVar[dict[str, str]] = {"adapters": "loras"}

    lora_path: Path | None = Field(
        None,
        description="LoRA adapter applied from the start (llamacpp: a GGUF file; transformers: a peft folder)",
    )
    loras: dict[str, Path] = Field(
        default_factory=dict,
        description="named LoRA adapters loaded at start, for /lora and per-place overrides",
    )

    @field_validator("loras")
    @classmethod
    def _lora_names(cls, loras: dict[str, Path]) -> dict[str, Path]:
        for name in loras:
            if not name.strip() or name == NO_LORA:
                raise ValueError(f"{name!r} cannot name a LoRA adapter ({NO_LORA!r} means the base model)")
        return loras


class LoraSet(Generic[Handle]):
    """The LoRA adapters of one backend: those its config names, those loaded, and the active one.

    Adapters are known by key: a name from ``loras``, or the path an admin switched
    to (``lora_path`` counts as one). Each file (or folder) is loaded once, however
    many keys lead to it. ``load(path, where)`` is the backend's: it checks the
    adapter at ``path`` against the loaded model, loads it, and returns the handle
    the engine applies; it raises ``LoraError`` naming ``where``, the config key or
    command that gave the path.
    """

    def __init__(self, backend: Backend, form: str, load: Callable[[Path, str], Awaitable[Handle]]) -> None:
        self._backend = backend
        self._form = form  # what one adapter is, for messages: "file" or "folder"
        self._load = load
        self._by_key: dict[str, Handle] = {}
        self._by_file: dict[Path, Handle] = {}
        self.active: str | None = None

    @property
    def settings(self) -> LoraSettings:
        settings = self._backend.settings
        assert isinstance(settings, LoraSettings), "a LoraSet's backend has LoraSettings"
        return settings

    @property
    def names(self) -> dict[str, str]:
        """The named adapters, name to path (``Backend.loras``)."""
        return {name: str(path) for name, path in self.settings.loras.items()}

    def configured(self) -> list[tuple[str, Path, str]]:
        """``(key, path, config key)`` of every adapter the config loads: the named ones, then lora_path."""
        table = self._backend.table
        configured = [
            (name, path.expanduser(), f"[{table}] loras.{name}") for name, path in self.settings.loras.items()
        ]
        lora_path = self.settings.lora_path
        if lora_path is not None:
            configured.append((str(lora_path), lora_path.expanduser(), f"[{table}] lora_path"))
        return configured

    async def load_configured(self) -> None:
        """Load every adapter the config names, and make ``lora_path`` the active one."""
        for key, path, where in self.configured():
            await self.add(key, path, where)
        if self.settings.lora_path is not None:
            self.active = str(self.settings.lora_path)

    async def add(self, key: str, path: Path, where: str) -> None:
        """Load the adapter at ``path``, unless its file is loaded already, and know it as ``key``."""
        resolved = path.resolve()
        if resolved not in self._by_file:
            self._by_file[resolved] = await self._load(path, where)
        self._by_key[key] = self._by_file[resolved]

    async def switch(self, lora: str | None) -> str:
        """``Backend.switch_lora``: a name, a path (loaded now if need be), or None / NO_LORA for none."""
        if lora is None or lora == NO_LORA:
            self.active = None
            return "backend now answers with the base model, without LoRA adapter"
        if lora not in self._by_key:
            path = Path(lora).expanduser()
            if not path.exists():
                raise LoraError(
                    f"no LoRA adapter {lora!r}: not a name in [{self._backend.table}] loras "
                    f"(it has: {self._known()}), nor a LoRA adapter {self._form}"
                )
            await self.add(lora, path, f"LoRA adapter {lora}")
        self.active = lora
        return f"backend now answers with LoRA adapter {lora}"

    def handle_for(self, lora: str | None) -> Handle | None:
        """The handle of a request's adapter (``SamplingParams.lora``): a key, NO_LORA for none, None for the active one."""
        key = self.active if lora is None else lora
        if key is None or key == NO_LORA:
            return None
        if key not in self._by_key:
            raise LoraError(
                f"no LoRA adapter {key!r} in [{self._backend.table}] loras (it has: {self._known()})"
            )
        return self._by_key[key]

    def forget_loaded(self) -> None:
        """Forget every loaded adapter, as the model they were loaded into is gone (the active key stays)."""
        self._by_key.clear()
        self._by_file.clear()

    def _known(self) -> str:
        return ", ".join(sorted(self.settings.loras)) or "none"


class LoraBackend(Backend):
    """A backend whose LoRA adapters a ``LoraSet`` keeps: its ``__init__`` sets ``self._loras``."""

    _loras: LoraSet[Any]

    @property
    def loras(self) -> dict[str, str]:
        return self._loras.names

    @property
    def active_lora(self) -> str | None:
        return self._loras.active

    async def switch_lora(self, lora: str | None) -> str:
        return await self._loras.switch(lora)
