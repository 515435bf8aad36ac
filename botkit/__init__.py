"""botkit: run your own instruction-tuned LLM chatbot on Slack, Discord and the console.

What a plugin author needs is importable from here; other modules are internal.

The names are imported when first used (PEP 562), not with the package: every
``botkit.*`` import (the command line, the pytest plugin pytest loads in every
test run, a worker process) starts with this file, and importing the whole API
here would load SQLAlchemy, Alembic and pydantic for each of them.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from botkit.adapter import Adapter, AdapterSettings
    from botkit.api import (
        BackendStatus,
        BotAPI,
        BotStatus,
        PluginState,
        PluginStatus,
        PluginSwitches,
        StateKey,
    )
    from botkit.backend import Backend, BackendSettings, EngineLoad
    from botkit.commands import Command, CommandContext
    from botkit.errors import (
        AdapterError,
        BotkitError,
        ConfigError,
        ControlError,
        DuplicateNameError,
        ExportError,
        LoraError,
        ModelLoadError,
        NoRunningBot,
        PlatformError,
        PluginLoadError,
        QueueFull,
        StorageError,
        UnknownUser,
    )
    from botkit.metrics import Instrument, Metrics
    from botkit.settings import to_toml
    from botkit.types import (
        NO_ADAPTER,
        NO_LORA,
        REDTEAM_PLATFORM,
        Chunk,
        ConversationScope,
        Message,
        MessageChange,
        Prompt,
        Reaction,
        Refuse,
        Reply,
        ReplyStatus,
        Responder,
        Role,
        SamplingParams,
        Turn,
        User,
    )

hookimpl = pluggy.HookimplMarker("botkit")
"""Marks a plugin function as an implementation of a botkit hook."""

try:
    __version__ = version("botkit")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

# Each public name and the module that defines it.
_EXPORTS: dict[str, str] = {
    "Adapter": "botkit.adapter",
    "AdapterSettings": "botkit.adapter",
    "BackendStatus": "botkit.api",
    "BotAPI": "botkit.api",
    "BotStatus": "botkit.api",
    "PluginState": "botkit.api",
    "PluginStatus": "botkit.api",
    "PluginSwitches": "botkit.api",
    "StateKey": "botkit.api",
    "Backend": "botkit.backend",
    "BackendSettings": "botkit.backend",
    "EngineLoad": "botkit.backend",
    "Command": "botkit.commands",
    "CommandContext": "botkit.commands",
    "AdapterError": "botkit.errors",
    "BotkitError": "botkit.errors",
    "ConfigError": "botkit.errors",
    "ControlError": "botkit.errors",
    "DuplicateNameError": "botkit.errors",
    "ExportError": "botkit.errors",
    "LoraError": "botkit.errors",
    "ModelLoadError": "botkit.errors",
    "NoRunningBot": "botkit.errors",
    "PlatformError": "botkit.errors",
    "PluginLoadError": "botkit.errors",
    "QueueFull": "botkit.errors",
    "StorageError": "botkit.errors",
    "UnknownUser": "botkit.errors",
    "Instrument": "botkit.metrics",
    "Metrics": "botkit.metrics",
    "to_toml": "botkit.settings",
    "NO_ADAPTER": "botkit.types",
    "NO_LORA": "botkit.types",
    "REDTEAM_PLATFORM": "botkit.types",
    "Chunk": "botkit.types",
    "ConversationScope": "botkit.types",
    "Message": "botkit.types",
    "MessageChange": "botkit.types",
    "Prompt": "botkit.types",
    "Reaction": "botkit.types",
    "Refuse": "botkit.types",
    "Reply": "botkit.types",
    "ReplyStatus": "botkit.types",
    "Responder": "botkit.types",
    "Role": "botkit.types",
    "SamplingParams": "botkit.types",
    "Turn": "botkit.types",
    "User": "botkit.types",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'botkit' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

# NO_ADAPTER and AdapterError are the old names of NO_LORA and LoraError, until the next release.
__all__ = [
    "NO_ADAPTER",
    "NO_LORA",
    "REDTEAM_PLATFORM",
    "Adapter",
    "AdapterError",
    "AdapterSettings",
    "Backend",
    "BackendSettings",
    "BackendStatus",
    "EngineLoad",
    "BotAPI",
    "BotStatus",
    "BotkitError",
    "Chunk",
    "Command",
    "CommandContext",
    "ConfigError",
    "ControlError",
    "ConversationScope",
    "DuplicateNameError",
    "ExportError",
    "Instrument",
    "LoraError",
    "Message",
    "MessageChange",
    "Metrics",
    "ModelLoadError",
    "NoRunningBot",
    "PlatformError",
    "PluginLoadError",
    "PluginState",
    "PluginStatus",
    "PluginSwitches",
    "Prompt",
    "QueueFull",
    "Reaction",
    "Refuse",
    "Reply",
    "ReplyStatus",
    "Responder",
    "Role",
    "SamplingParams",
    "StateKey",
    "StorageError",
    "Turn",
    "UnknownUser",
    "User",
    "__version__",
    "hookimpl",
    "to_toml",
]
