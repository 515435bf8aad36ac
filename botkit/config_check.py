"""``botkit config check``: every problem of a config (file and environment) at once, not the first.

Start-up stops at the first invalid table, which suits a bot; a user fixing a config wants
the whole list. Each table is validated on its own (pydantic gathers the errors within one
model): botkit's own tables, then each plugin's, each backend's and each adapter's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from botkit.backend_set import DEFAULT, check_override_backends, raw_tables, validate_backend
from botkit.errors import ConfigError
from botkit.plugin_host import PluginHost
from botkit.settings import (
    Settings,
    config_path,
    env_name,
    read_toml,
    reject_secrets_in_file,
    settings_from_mapping,
    validate_table,
)


def config_problems(path: Path | None) -> list[str]:
    """Every problem of the config at ``path`` (default: as ``load_settings`` finds it), one per line."""
    path = config_path(path)
    data = read_toml(path) if path is not None else {}  # invalid TOML cannot be read past
    problems: list[str] = []
    settings = core_settings(data, path, problems)
    if settings is None:
        return problems
    host = PluginHost(settings)
    host.problems = problems
    # A plugin that fails to load is one problem among the rest (with on_error = "skip" the bot
    # starts without it: no problem then).
    on_error, settings.plugins.on_error = settings.plugins.on_error, "skip"
    if not collect(problems, host.load):
        return problems  # no plugins, no backend or adapter types: checking on would only mislead
    if on_error == "fail":
        problems += [f"plugin {info.name!r}: {info.error}" for info in host.infos.values() if info.error]
    registry = host.registry
    tables = raw_tables(settings)
    for name, raw in tables.items():
        if not isinstance(raw, dict):
            problems.append(f"{settings.source_name}: [backends.{name}] must be a table")
        else:
            collect(problems, lambda name=name, raw=raw: validate_backend(registry, settings, name, raw))
    if DEFAULT in settings.backends:
        problems.append(
            f"{settings.source_name}: [backends.{DEFAULT}]: the name {DEFAULT!r} is the [backend] table; "
            "give this backend another name"
        )
    collect(problems, lambda: check_override_backends(settings, dict.fromkeys(tables)))  # type: ignore[arg-type]
    for name, adapter in sorted(registry.adapters.items()):
        raw = settings.adapters.get(name, {})
        table = ("adapters", name)
        collect(
            problems,
            lambda model=adapter.settings_model, raw=raw, table=table: validate_table(
                model, raw, settings, table
            ),
        )
    return list(dict.fromkeys(problems))  # one problem met on two paths is told once


def collect(problems: list[str], check: Callable[[], Any]) -> bool:
    """Run ``check``; a ``ConfigError`` it raises joins ``problems`` (a line each) instead of stopping.

    True when ``check`` passed.
    """
    try:
        check()
    except ConfigError as error:
        problems += str(error).splitlines()
        return False
    return True


def core_settings(data: dict[str, Any], path: Path | None, problems: list[str]) -> Settings | None:
    """botkit's own tables: their problems join ``problems``; the settings without the bad values, to check on.

    A bad value in the environment is left out by hiding its variable while this runs: the
    environment is as it was when it returns. ``None`` when the settings still fail so.
    """
    try:
        return settings_from_mapping(data, path)
    except ConfigError as error:
        problems += str(error).splitlines()
    where = str(path) if path else "config"
    trimmed = dict(data)
    for name, field in Settings.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel) and name in trimmed:
            try:
                reject_secrets_in_file(model, trimmed[name], where, (name,))
            except ConfigError as error:
                problems += str(error).splitlines()
                trimmed.pop(name)
    hidden: dict[str, str] = {}
    try:
        try:
            Settings(**trimmed)
        except ValidationError as error:
            for problem in error.errors():
                loc = tuple(str(part) for part in problem["loc"])
                trimmed = without(trimmed, loc)
                variable = env_name(loc)
                if variable in os.environ:
                    hidden[variable] = os.environ.pop(variable)
        return settings_from_mapping(trimmed, path)
    except (ConfigError, ValidationError, SettingsError):
        return None
    finally:
        os.environ.update(hidden)


def without(data: dict[str, Any], loc: tuple[str, ...]) -> dict[str, Any]:
    """``data`` less the value at ``loc`` (or its deepest part that exists), copied, not changed."""
    if not loc or loc[0] not in data:
        return data
    copy = dict(data)
    inner = copy[loc[0]]
    if len(loc) == 1 or not isinstance(inner, dict) or loc[1] not in inner:
        del copy[loc[0]]
    else:
        copy[loc[0]] = without(inner, loc[1:])
    return copy
