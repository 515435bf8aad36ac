"""Finding, selecting, loading and registering plugins: built-ins, entry points and a folder."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from botkit import hookspecs
from botkit.errors import ConfigError, PluginLoadError
from botkit.registry import Registry
from botkit.settings import Settings, plugin_table, reject_unknown_tables, validate_table

log = logging.getLogger("botkit.plugins")

ENTRY_POINT_GROUP = "botkit"
ENV_LOAD_PLUGINS = "BOTKIT_LOAD_PLUGINS"

# Built-in plugins are ordinary plugins: same hooks, same switches.
BUILTIN_PLUGINS: dict[str, str] = {
    "access": "botkit.plugins.access",
    "admin": "botkit.plugins.admin",
    "commands": "botkit.plugins.commands",
    "console": "botkit.adapters.console",
    "discord": "botkit.adapters.discord",
    "disclosure": "botkit.plugins.disclosure",
    "feedback": "botkit.plugins.feedback",
    "finetune": "botkit.finetune.plugin",
    "llamacpp": "botkit.backends.llamacpp",
    "memory": "botkit.plugins.memory",
    "mentions": "botkit.plugins.mentions",
    "moderation": "botkit.plugins.moderation",
    "openai": "botkit.backends.openai_http",
    "privacy": "botkit.plugins.privacy",
    "ratelimit": "botkit.plugins.ratelimit",
    "scripted": "botkit.backends.scripted",
    "slack": "botkit.adapters.slack",
    "transformers": "botkit.backends.transformers",
}

_REGISTER_HOOKS = {
    "botkit_register_settings": "settings_registrar",
    "botkit_register_backends": "backend_registrar",
    "botkit_register_adapters": "adapter_registrar",
    "botkit_register_commands": "command_registrar",
    "botkit_register_migrations": "migrations_registrar",
}


@dataclass
class PluginSource:
    """Where a plugin comes from, before it is imported."""

    name: str
    origin: str  # "builtin", "entry point (dist x.y)", or a file path
    load: Any  # () -> object


@dataclass
class PluginInfo:
    name: str
    origin: str
    enabled: bool
    loaded: bool
    hooks: list[str] = field(default_factory=list)
    error: str | None = None


def discover(directory: Path | None) -> dict[str, PluginSource]:
    """Every plugin that could be loaded, by name. Duplicate names are an error."""
    sources: dict[str, PluginSource] = {}

    def add(source: PluginSource) -> None:
        if source.name in sources:
            raise ConfigError(
                f"two plugins are named {source.name!r}: {sources[source.name].origin} and "
                f"{source.origin}; rename or uninstall one"
            )
        sources[source.name] = source

    for name, module in BUILTIN_PLUGINS.items():
        add(PluginSource(name, "builtin", lambda module=module: importlib.import_module(module)))
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist
        origin = f"entry point ({dist.name} {dist.version})" if dist else "entry point"
        add(PluginSource(entry_point.name, origin, entry_point.load))
    if directory is not None:
        if not directory.is_dir():
            raise ConfigError(f"[plugins] directory: {directory} is not a folder")
        for path in sorted(directory.glob("*.py")):
            if not path.stem.startswith("_"):
                add(PluginSource(path.stem, str(path), lambda path=path: _import_file(path)))
    return sources


def _import_file(path: Path) -> ModuleType:
    module_name = f"botkit_plugin_dir.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def selected_names(sources: dict[str, PluginSource], settings: Settings) -> set[str]:
    """Names to load: all known, less ``enabled = false`` tables, within BOTKIT_LOAD_PLUGINS."""
    available = ", ".join(sorted(sources))
    tables = settings.plugins.tables()
    for name in tables:
        if name not in sources:
            raise ConfigError(
                f"{settings.source_name}: [plugins.{name}]: unknown plugin {name!r}; available: {available}"
            )
    names = set(sources)
    restrict = os.environ.get(ENV_LOAD_PLUGINS)
    if restrict is not None:
        wanted = {n.strip() for n in restrict.split(",") if n.strip()}
        unknown = wanted - set(sources)
        if unknown:
            raise ConfigError(
                f"{ENV_LOAD_PLUGINS}: unknown plugin(s) {', '.join(sorted(unknown))}; available: {available}"
            )
        names &= wanted
    for name, table in tables.items():
        enabled = table.get("enabled", True) if isinstance(table, dict) else True
        if isinstance(enabled, str) and enabled.lower() in ("true", "false"):  # from the environment
            enabled = enabled.lower() == "true"
        if not isinstance(enabled, bool):
            raise ConfigError(
                f"{settings.source_name}: [plugins.{name}] enabled: expected true or false (got {enabled!r})"
            )
        if not enabled:
            names.discard(name)
    return names


class PluginHost:
    """The pluggy manager with botkit's plugins loaded and their contributions registered."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pm = pluggy.PluginManager("botkit")
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.infos: dict[str, PluginInfo] = {}
        self.plugin_settings: dict[str, Any] = {}
        self.sources: dict[str, PluginSource] = {}
        self._suspended: dict[str, tuple[object, dict[tuple[str, str], Any]]] = {}

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def load(self, extra: dict[str, object] | None = None) -> None:
        """Import, register and configure every selected plugin, and ``extra`` ones (tests, embedding).

        A plugin that fails raises ``PluginLoadError`` when ``[plugins] on_error``
        is "fail", and is left out with a logged error when it is "skip".
        """
        self.sources = discover(self.settings.plugins.directory)
        for name, plugin in (extra or {}).items():
            if name in self.sources:
                raise ConfigError(
                    f"a plugin named {name!r} is already installed ({self.sources[name].origin})"
                )
            self.sources[name] = PluginSource(name, "given", lambda plugin=plugin: plugin)
        names = selected_names(self.sources, self.settings)
        # Built-ins register first, so that a clash names the third-party plugin.
        ordered = sorted(self.sources.items(), key=lambda item: (item[1].origin != "builtin", item[0]))
        for name, source in ordered:
            self.infos[name] = PluginInfo(name, source.origin, enabled=name in names, loaded=False)
        self._activate([name for name, _ in ordered if name in names])

    def _activate(self, names: list[str]) -> None:
        for name in names:
            source = self.sources[name]
            self._guarded(
                self.infos[name], lambda source=source, name=name: self.pm.register(source.load(), name=name)
            )
        for step in (self._check_hooks, self._collect, self._configure):
            for name in names:
                if self.pm.get_plugin(name) is not None:
                    self._guarded(self.infos[name], lambda name=name, step=step: step(name))
        self.pm.check_pending()
        self._reject_stray_tables()
        for name in names:
            plugin = self.pm.get_plugin(name)
            if plugin is not None:
                info = self.infos[name]
                info.loaded = info.enabled = True
                info.hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])

    # -- switching plugins while the bot runs ---------------------------------

    def switchable(self, name: str) -> str | None:
        """Why ``name`` cannot be switched without a restart, or ``None`` when it can."""
        if name not in self.infos:
            available = ", ".join(sorted(self.infos))
            return f"there is no plugin {name!r}; available: {available}"
        kinds = {kind for (kind, _), owner in self.registry.owners.items() if owner == name}
        for kind in ("backend", "adapter", "migrations"):
            if kind in kinds:
                return f"plugin {name!r} provides a {kind}: change config.toml and restart instead"
        plugin = self.pm.get_plugin(name) or self._suspended.get(name, (None, {}))[0]
        if getattr(plugin, "BOTKIT_REQUIRED", False):
            return f"plugin {name!r} is required and cannot be switched off"
        return None

    def suspend(self, name: str) -> None:
        """Take a loaded plugin out: its hooks stop being called, its commands disappear."""
        plugin = self.pm.get_plugin(name)
        if plugin is None:
            return
        self.pm.unregister(plugin)
        self._suspended[name] = (plugin, self.registry.withdraw(name))
        self.infos[name].enabled = False

    def resume(self, name: str) -> None:
        """Put a plugin (back) in: a suspended one as it was, one never loaded from its source.

        Raises ``PluginLoadError`` when it cannot load, whatever ``on_error`` says.
        """
        if self.pm.get_plugin(name) is not None:
            return
        if name in self._suspended:
            plugin, entries = self._suspended.pop(name)
            self.pm.register(plugin, name=name)
            self.registry.restore(name, entries)
            self.infos[name].enabled = True
            return
        saved, self.settings.plugins.on_error = self.settings.plugins.on_error, "fail"
        try:
            self._activate([name])
        finally:
            self.settings.plugins.on_error = saved

    def pm_names(self) -> list[str]:
        return [name for name, _ in self.pm.list_name_plugin()]

    def _guarded(self, info: PluginInfo, step: Any) -> None:
        try:
            step()
        except ConfigError:
            raise  # the user's config, not the plugin, is wrong: always stop
        except PluginLoadError as error:
            self._failed(info, error)
        except Exception as error:
            self._failed(info, PluginLoadError(info.name, f"{type(error).__name__}: {error}"))

    def _failed(self, info: PluginInfo, error: PluginLoadError) -> None:
        info.error = error.cause
        self.registry.forget(info.name)
        plugin = self.pm.get_plugin(info.name)
        if plugin is not None:
            self.pm.unregister(plugin)
        if self.settings.plugins.on_error == "fail":
            raise error
        log.error('%s; starting without it ([plugins] on_error = "skip")', error)

    def _check_hooks(self, name: str) -> None:
        """A misspelled hook or a wrapper fails loudly, naming the plugin."""
        plugin = self.pm.get_plugin(name)
        for caller in self.pm.get_hookcallers(plugin) or []:
            if any(
                impl.plugin is plugin and (impl.hookwrapper or impl.wrapper)
                for impl in caller.get_hookimpls()
            ):
                raise PluginLoadError(
                    name, f"{caller.name} is a wrapper; botkit calls hooks itself and does not run wrappers"
                )
            if caller.spec is None and any(
                impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls()
            ):
                known = ", ".join(hookspecs.HOOK_NAMES)
                raise PluginLoadError(
                    name, f"implements unknown hook {caller.name!r}; botkit's hooks are: {known}"
                )

    def _collect(self, name: str) -> None:
        """Call the plugin's ``botkit_register_*`` implementations with registrars bound to it."""
        plugin = self.pm.get_plugin(name)
        for hook_name, registrar in _REGISTER_HOOKS.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin is plugin:
                    result = impl.function(register=getattr(self.registry, registrar)(name))
                    if inspect.isawaitable(result):
                        close = getattr(result, "close", None)
                        if close is not None:
                            close()  # never run: do not leave a "never awaited" warning behind
                        raise PluginLoadError(name, f"{hook_name} must be a plain function, not async")

    def _configure(self, name: str) -> None:
        """Validate the ``[plugins.X]`` tables of the settings models plugin ``name`` registered."""
        tables = self.settings.plugins.tables()
        for settings_name, model in self.registry.settings_models.items():
            if self.registry.owner("settings", settings_name) != name:
                continue
            table = {k: v for k, v in tables.get(settings_name, {}).items() if k != "enabled"}
            self.plugin_settings[settings_name] = validate_table(
                model, table, self.settings, ("plugins", settings_name)
            )

    def check_tables(self, settings: Settings) -> None:
        """Check the top-level tables of ``settings`` that are not botkit's own, e.g. ``[finetune]``.

        Each must be named after an installed plugin; a loaded plugin's must be one it claimed
        (``register(name, model, top_level=True)``) and validate against that model. Raises
        ``ConfigError``. Tools read a claimed table with ``botkit.ops.config_table``.
        """
        reject_unknown_tables(settings, self.sources)
        for name in settings.top_level_extras():
            if name in self.pm_names() and name not in self.registry.top_level_models:
                raise ConfigError(
                    f"{settings.source_name}: [{name}]: plugin {name!r} has no top-level table; "
                    f"its settings, if any, go in [plugins.{name}]"
                )
        for name, model in self.registry.top_level_models.items():
            validate_table(model, plugin_table(settings, name), settings, (name,))

    def _reject_stray_tables(self) -> None:
        self.check_tables(self.settings)
        tables = self.settings.plugins.tables()
        for name, table in tables.items():
            keys = set(table) - {"enabled"} if isinstance(table, dict) else set()
            if keys and name in self.pm_names() and name not in self.registry.settings_models:
                raise ConfigError(
                    f"{self.settings.source_name}: [plugins.{name}]: plugin {name!r} has no settings "
                    f"(found {', '.join(sorted(keys))}); only 'enabled' applies"
                )
