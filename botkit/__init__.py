"""botkit: run your own instruction-tuned LLM chatbot on Slack, Discord and the console.

What a plugin author needs is importable from here; other modules are internal.
"""

from importlib.metadata import PackageNotFoundError, version

import pluggy

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
)
from botkit.settings import to_toml
from botkit.types import (
    NO_ADAPTER,
    NO_LORA,
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

# NO_ADAPTER and AdapterError are the old names of NO_LORA and LoraError, until the next release.
__all__ = [
    "NO_ADAPTER",
    "NO_LORA",
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
    "LoraError",
    "Message",
    "MessageChange",
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
    "User",
    "__version__",
    "hookimpl",
    "to_toml",
]
