"""What plugins contribute through the ``botkit_register_*`` hooks, validated and named."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from botkit.errors import DuplicateNameError

if TYPE_CHECKING:
    from botkit.adapter import Adapter, AdapterSettings
    from botkit.backend import Backend, BackendSettings
    from botkit.bot import Bot
    from botkit.commands import Command


@dataclass(frozen=True, slots=True)
class BackendType:
    name: str
    factory: Callable[[BackendSettings], Backend]
    settings_model: type[BackendSettings]
    plugin: str


@dataclass(frozen=True, slots=True)
class AdapterType:
    name: str
    factory: Callable[[Bot, AdapterSettings], Adapter]
    settings_model: type[AdapterSettings]
    plugin: str


class RegisterSettings(Protocol):
    def __call__(self, plugin_name: str, model: type[BaseModel]) -> None: ...


class RegisterBackend(Protocol):
    def __call__(
        self,
        type_name: str,
        factory: Callable[[Any], Backend],
        settings_model: type[BackendSettings],
    ) -> None: ...


class RegisterAdapter(Protocol):
    def __call__(
        self,
        name: str,
        factory: Callable[[Any, Any], Adapter],
        settings_model: type[AdapterSettings],
    ) -> None: ...


class RegisterCommand(Protocol):
    def __call__(self, command: Command) -> None: ...


class Registry:
    """Everything registered by the loaded plugins, keyed by name."""

    def __init__(self) -> None:
        self.settings_models: dict[str, type[BaseModel]] = {}
        self.backends: dict[str, BackendType] = {}
        self.adapters: dict[str, AdapterType] = {}
        self.commands: dict[str, Command] = {}
        self.command_plugins: dict[str, str] = {}

    def _claim(self, kind: str, table: dict[str, Any], name: str, plugin: str) -> None:
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise DuplicateNameError(
                f"plugin {plugin!r} registered {kind} {name!r}: names are letters, digits, '-' and '_'"
            )
        if name in table:
            existing = table[name]
            owner = getattr(existing, "plugin", None) or self.command_plugins.get(name, "?")
            raise DuplicateNameError(
                f"{kind} {name!r} is registered by both plugin {owner!r} and plugin {plugin!r}; "
                f"disable one of them in config.toml ([plugins.{plugin}] enabled = false)"
            )

    def settings_registrar(self, plugin: str) -> RegisterSettings:
        def register(plugin_name: str, model: type[BaseModel]) -> None:
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise TypeError(f"plugin {plugin!r}: settings model must be a pydantic BaseModel class")
            self._claim("settings", self.settings_models, plugin_name, plugin)
            self.settings_models[plugin_name] = model

        return register

    def backend_registrar(self, plugin: str) -> RegisterBackend:
        def register(type_name: str, factory: Callable[[Any], Backend], settings_model: type) -> None:
            self._claim("backend", self.backends, type_name, plugin)
            self.backends[type_name] = BackendType(type_name, factory, settings_model, plugin)

        return register

    def adapter_registrar(self, plugin: str) -> RegisterAdapter:
        def register(name: str, factory: Callable[[Any, Any], Adapter], settings_model: type) -> None:
            self._claim("adapter", self.adapters, name, plugin)
            self.adapters[name] = AdapterType(name, factory, settings_model, plugin)

        return register

    def command_registrar(self, plugin: str) -> RegisterCommand:
        def register(command: Command) -> None:
            self._claim("command", self.commands, command.name, plugin)
            self.commands[command.name] = command
            self.command_plugins[command.name] = plugin

        return register
