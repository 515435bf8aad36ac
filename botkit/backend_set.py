"""The backends one bot has loaded: ``[backend]`` (named "default") and each ``[backends.<name>]``.

Every backend keeps its own generation queue, so a slow model in one channel
never makes another channel's backend wait.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from botkit.api import BackendStatus
from botkit.backend import Backend, BackendSettings, EngineLoad
from botkit.errors import ConfigError, LoraError, ModelLoadError
from botkit.generation import GenerationQueue
from botkit.registry import Registry
from botkit.renamed_keys import warn_old_keys
from botkit.settings import Settings, validate_table
from botkit.types import NO_LORA

DEFAULT = "default"


@dataclass(eq=False)
class BackendSlot:
    """One configured backend: its name, config table, settings, the backend and its queue."""

    name: str
    type_name: str
    backend: Backend
    queue: GenerationQueue

    @property
    def settings(self) -> BackendSettings:
        """The backend's settings: the backend holds them, a reload replaces them there."""
        return self.backend.settings

    @property
    def table(self) -> str:
        """Its config table as written in messages: ``backend`` or ``backends.<name>``."""
        return self.backend.table

    def status(self) -> BackendStatus:
        """What it is doing now: its model, its queue and, where the backend reports it, its engine's load."""
        backend, queue = self.backend, self.queue
        return BackendStatus(
            name=self.name,
            type=self.type_name,
            model=backend.model_name,
            lora=backend.active_lora,
            loras=tuple(sorted(backend.loras)),
            context_window=backend.context_window,
            generating=queue.running,
            waiting=queue.waiting,
            concurrency=queue.concurrency,
            queue_limit=queue.limit,
            engine=backend.load(),
        )

    def summary(self) -> dict[str, Any]:
        """``status()`` as JSON values (``botkit backends list``, the control socket's status)."""
        status = self.status()
        # "adapter" and "adapters" (the LoRA adapters) keep their names: they are the control
        # socket's answer, which `botkit finetune deploy` of another version may be reading.
        # Keys are only ever added to it.
        return {
            "type": status.type,
            "model": status.model,
            "adapter": status.lora,
            "adapters": list(status.loras),
            "context_window": status.context_window,
            "generating": status.generating,
            "waiting": status.waiting,
            "concurrency": status.concurrency,
            "queue_limit": status.queue_limit,
            "engine": asdict(status.engine) if status.engine is not None else None,
        }


def status_from_summary(name: str, summary: Mapping[str, Any]) -> BackendStatus:
    """The ``BackendStatus`` a running bot's ``summary()`` describes (read from its control socket)."""
    engine = summary.get("engine")
    return BackendStatus(
        name=name,
        type=summary["type"],
        model=summary["model"],
        lora=summary["adapter"],
        loras=tuple(summary["adapters"]),
        context_window=summary["context_window"],
        generating=summary["generating"],
        waiting=summary["waiting"],
        concurrency=summary["concurrency"],
        queue_limit=summary["queue_limit"],
        engine=EngineLoad(**engine) if engine is not None else None,
    )


def table_path(name: str) -> tuple[str, ...]:
    return ("backend",) if name == DEFAULT else ("backends", name)


def raw_tables(settings: Settings) -> dict[str, dict[str, Any]]:
    """The raw config table of every backend, the default first."""
    return {DEFAULT: settings.backend, **settings.backends}


def validate_backend(
    registry: Registry, settings: Settings, name: str, raw: dict[str, Any]
) -> tuple[str, BackendSettings]:
    """The type name and validated settings of backend ``name`` (raises ``ConfigError``)."""
    where = "[" + ".".join(table_path(name)) + "]"
    type_name = raw.get("type", BackendSettings.model_fields["type"].default)
    backend_type = registry.backends.get(type_name)
    if backend_type is None:
        available = ", ".join(sorted(registry.backends)) or "none (are the backend plugins disabled?)"
        raise ConfigError(
            f"{settings.source_name}: {where} type: no backend {type_name!r}; available: {available}"
        )
    validated = validate_table(backend_type.settings_model, raw, settings, table_path(name))
    assert isinstance(validated, BackendSettings)
    warn_old_keys(validated, f"{settings.source_name}: {where}")
    return type_name, validated


def build_backends(registry: Registry, settings: Settings) -> dict[str, BackendSlot]:
    """Create (not yet load) every configured backend and check the overrides that name them."""
    if DEFAULT in settings.backends:
        raise ConfigError(
            f"{settings.source_name}: [backends.{DEFAULT}]: the name {DEFAULT!r} is the [backend] table; "
            "give this backend another name"
        )
    slots: dict[str, BackendSlot] = {}
    for name, raw in raw_tables(settings).items():
        if not isinstance(raw, dict):
            raise ConfigError(f"{settings.source_name}: [backends.{name}] must be a table")
        type_name, backend_settings = validate_backend(registry, settings, name, raw)
        backend = registry.backends[type_name].factory(backend_settings)
        backend.table = ".".join(table_path(name))
        # Read from the instance: a backend may set it from its settings (llama.cpp's `parallel`).
        queue = GenerationQueue(backend.concurrency, backend_settings.queue_limit)
        slots[name] = BackendSlot(name, type_name, backend, queue)
    check_override_backends(settings, slots)
    return slots


def check_override_backends(settings: Settings, slots: dict[str, BackendSlot]) -> None:
    for place, override in settings.overrides.items():
        if override.backend is not None and override.backend not in slots:
            known = ", ".join(sorted(slots))
            raise ConfigError(
                f'{settings.source_name}: [overrides."{place}"] backend: no backend {override.backend!r}; '
                f"configured: {known} (add a [backends.{override.backend}] table)"
            )


def check_override_loras(settings: Settings, slots: dict[str, BackendSlot]) -> None:
    """Every LoRA adapter an override names is one its backend loaded (call after the backends started)."""
    for place, override in settings.overrides.items():
        warn_old_keys(override, f'{settings.source_name}: [overrides."{place}"]')
        if override.lora is None or override.lora == NO_LORA:
            continue
        slot = slots[override.backend or DEFAULT]
        if override.lora not in slot.backend.loras:
            known = ", ".join(sorted(slot.backend.loras)) or "none"
            raise ConfigError(
                f'{settings.source_name}: [overrides."{place}"] lora: backend {slot.name!r} has no '
                f"LoRA adapter {override.lora!r}; its LoRA adapters: {known} (name them in [{slot.table}] loras)"
            )


async def start_backends(slots: dict[str, BackendSlot]) -> None:
    """Load every backend; on a failure, close the ones already loaded and raise."""
    started: list[BackendSlot] = []
    try:
        for slot in slots.values():
            await slot.backend.start()
            started.append(slot)
    except BaseException:
        for slot in started:
            await slot.backend.close()
        raise


async def close_backends(slots: dict[str, BackendSlot]) -> None:
    for slot in slots.values():
        await slot.backend.close()


async def probe(slot: BackendSlot) -> str | None:
    """Load and release one backend; the reason it cannot load, or None when it loads."""
    try:
        await slot.backend.start()
    except (ModelLoadError, LoraError) as error:
        return str(error)
    await slot.backend.close()
    return None
