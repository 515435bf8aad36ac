"""What plugins contribute through the ``botkit_register_*`` hooks, validated and named."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel
from sqlalchemy import MetaData

from botkit.errors import DuplicateNameError
from botkit.settings import Settings
from botkit.storage.migrations import MigrationBranch

if TYPE_CHECKING:
    from botkit.adapter import Adapter, AdapterSettings
    from botkit.api import BotAPI
    from botkit.backend import Backend, BackendSettings
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
    factory: Callable[[BotAPI, AdapterSettings], Adapter]
    settings_model: type[AdapterSettings]
    plugin: str


@dataclass(frozen=True, slots=True)
class PluginTraits:
    """What a plugin declares about itself (``botkit_register_plugin``)."""

    plugin: str
    required: bool = False  # never switched off at run time (admins would lock themselves out)
    needs: tuple[str, ...] = ()  # plugins it cannot work without


# A probe scorer: the reply a probe got and the probe (its JSON object) -> why it failed, or None.
ProbeScorer = Callable[[str, Mapping[str, Any]], "str | None"]


@dataclass(frozen=True, slots=True)
class ProbeSuite:
    """A suite of red-team probes (``botkit_register_probes``): a data file and the scorers it names."""

    name: str
    path: Path
    plugin: str
    description: str = ""
    scorers: Mapping[str, ProbeScorer] = field(default_factory=dict)


class RegisterProbes(Protocol):
    def __call__(
        self,
        suite: str,
        path: Path,
        *,
        description: str = "",
        scorers: Mapping[str, ProbeScorer] | None = None,
    ) -> None: ...


class RegisterPlugin(Protocol):
    def __call__(self, *, required: bool = False, needs: tuple[str, ...] | list[str] = ()) -> None: ...


class RegisterSettings(Protocol):
    def __call__(self, plugin_name: str, model: type[BaseModel], *, top_level: bool = False) -> None: ...


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


class RegisterMigrations(Protocol):
    def __call__(self, versions: Path, metadata: MetaData) -> None: ...


class Registry:
    """Everything registered by the loaded plugins, keyed by name."""

    def __init__(self) -> None:
        self.settings_models: dict[str, type[BaseModel]] = {}
        self.top_level_models: dict[str, type[BaseModel]] = {}  # a plugin's own top-level table: [finetune]
        self.backends: dict[str, BackendType] = {}
        self.adapters: dict[str, AdapterType] = {}
        self.commands: dict[str, Command] = {}
        self.migrations: dict[str, MigrationBranch] = {}  # by plugin name
        self.probe_suites: dict[str, ProbeSuite] = {}  # red-team probes, by suite name
        self.owners: dict[tuple[str, str], str] = {}  # (kind, name) -> plugin that registered it
        # Declared by each plugin about itself; kept while a plugin is switched off, unlike the rest.
        self.traits: dict[str, PluginTraits] = {}

    def _tables(self) -> dict[str, dict[str, Any]]:
        return {
            "settings": self.settings_models,
            "top-level table": self.top_level_models,
            "backend": self.backends,
            "adapter": self.adapters,
            "command": self.commands,
            "migrations": self.migrations,
            "probe suite": self.probe_suites,
        }

    def _claim(self, kind: str, name: str, plugin: str) -> None:
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"{kind} name {name!r}: use letters, digits, '-' and '_'")
        owner = self.owners.get((kind, name))
        if owner is not None:
            raise DuplicateNameError(
                f"{kind} {name!r} is registered by both plugin {owner!r} and plugin {plugin!r}; "
                f"disable one of them in config.toml ([plugins.{plugin}] enabled = false)"
            )
        self.owners[(kind, name)] = plugin

    def owner(self, kind: str, name: str) -> str | None:
        """The plugin that registered ``name`` as a ``kind`` ("command", "backend", ...)."""
        return self.owners.get((kind, name))

    def withdraw(self, plugin: str) -> dict[tuple[str, str], Any]:
        """Remove and return everything ``plugin`` registered (``restore`` puts it back)."""
        tables = self._tables()
        entries: dict[tuple[str, str], Any] = {}
        for (kind, name), owner in list(self.owners.items()):
            if owner == plugin:
                del self.owners[(kind, name)]
                entries[(kind, name)] = tables[kind].pop(name, None)
        return entries

    def restore(self, plugin: str, entries: dict[tuple[str, str], Any]) -> None:
        tables = self._tables()
        for (kind, name), value in entries.items():
            self._claim(kind, name, plugin)
            tables[kind][name] = value

    def forget(self, plugin: str) -> None:
        """Drop everything ``plugin`` registered (it failed to load)."""
        self.withdraw(plugin)
        self.traits.pop(plugin, None)

    def traits_of(self, plugin: str) -> PluginTraits:
        return self.traits.get(plugin) or PluginTraits(plugin)

    def plugin_registrar(self, plugin: str) -> RegisterPlugin:
        def register(*, required: bool = False, needs: tuple[str, ...] | list[str] = ()) -> None:
            if plugin in self.traits:
                raise ValueError("botkit_register_plugin: register was called twice")
            if isinstance(needs, str) or not all(isinstance(n, str) and n for n in needs):
                raise TypeError("botkit_register_plugin: needs must be a list of plugin names")
            if plugin in needs:
                raise ValueError("botkit_register_plugin: a plugin cannot need itself")
            self.traits[plugin] = PluginTraits(plugin, bool(required), tuple(needs))

        return register

    def settings_registrar(self, plugin: str) -> RegisterSettings:
        def register(plugin_name: str, model: type[BaseModel], *, top_level: bool = False) -> None:
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise TypeError(f"plugin {plugin!r}: settings model must be a pydantic BaseModel class")
            if not top_level:
                self._claim("settings", plugin_name, plugin)
                self.settings_models[plugin_name] = model
                return
            if plugin_name in Settings.model_fields:
                raise ValueError(f"[{plugin_name}] is botkit's own table; rename the plugin to claim one")
            if plugin_name != plugin:
                # The name tells whose table it is before any plugin loads (settings.reject_unknown_tables).
                raise ValueError(
                    f"a plugin claims only the top-level table of its own name: [{plugin}], not [{plugin_name}]"
                )
            self._claim("top-level table", plugin_name, plugin)
            self.top_level_models[plugin_name] = model

        return register

    def backend_registrar(self, plugin: str) -> RegisterBackend:
        def register(type_name: str, factory: Callable[[Any], Backend], settings_model: type) -> None:
            self._claim("backend", type_name, plugin)
            self.backends[type_name] = BackendType(type_name, factory, settings_model, plugin)

        return register

    def adapter_registrar(self, plugin: str) -> RegisterAdapter:
        def register(name: str, factory: Callable[[Any, Any], Adapter], settings_model: type) -> None:
            self._claim("adapter", name, plugin)
            self.adapters[name] = AdapterType(name, factory, settings_model, plugin)

        return register

    def migrations_registrar(self, plugin: str) -> RegisterMigrations:
        def register(versions: Path, metadata: MetaData) -> None:
            if not Path(versions).is_dir():
                raise ValueError(f"migrations folder {versions} does not exist")
            self._claim("migrations", plugin, plugin)
            self.migrations[plugin] = MigrationBranch(plugin, Path(versions), metadata)

        return register

    def probes_registrar(self, plugin: str) -> RegisterProbes:
        def register(
            suite: str,
            path: Path,
            *,
            description: str = "",
            scorers: Mapping[str, ProbeScorer] | None = None,
        ) -> None:
            path = Path(path)
            if not path.is_file():
                raise ValueError(f"probe suite {suite!r}: {path} is not a file")
            for name, scorer in (scorers or {}).items():
                if not callable(scorer):
                    raise TypeError(f"probe suite {suite!r}: scorer {name!r} is not callable")
            self._claim("probe suite", suite, plugin)
            self.probe_suites[suite] = ProbeSuite(suite, path, plugin, description, dict(scorers or {}))

        return register

    def command_registrar(self, plugin: str) -> RegisterCommand:
        def register(command: Command) -> None:
            self._claim("command", command.name, plugin)
            self.commands[command.name] = command

        return register
