"""Finding plugins by name (built-ins, entry points, a folder) and choosing which of them to load."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from botkit.errors import ConfigError
from botkit.settings import Settings

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
    "redteam": "botkit.plugins.redteam",
    "scripted": "botkit.backends.scripted",
    "slack": "botkit.adapters.slack",
    "transformers": "botkit.backends.transformers",
    "web": "botkit.web.plugin",
}


@dataclass
class PluginSource:
    """Where a plugin comes from, before it is imported."""

    name: str
    origin: str  # "builtin", "entry point (dist x.y)", or a file path
    load: Any  # () -> object


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


def deselected_reason(name: str) -> str:
    """Why the config leaves out plugin ``name``, one that ``selected_names`` did not return."""
    restrict = os.environ.get(ENV_LOAD_PLUGINS)
    if restrict is not None and name not in {n.strip() for n in restrict.split(",")}:
        return f"not in {ENV_LOAD_PLUGINS}"
    return f"[plugins.{name}] enabled = false"


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
