"""The commands plugins add to ``botkit``: which plugins are asked when the command starts, and how.

There is no bot yet when ``botkit`` starts. The plugins are found as the bot finds them
(built-ins, entry points, ``[plugins] directory``) and switched off as it switches them off
(``BOTKIT_LOAD_PLUGINS``, ``[plugins.NAME] enabled = false`` in the config named before the
command, by $BOTKIT_CONFIG or ./config.toml), imported, and asked through
``botkit_register_cli`` alone: no other hook runs and nothing is configured, so a plugin keeps
its heavy imports (torch, discord) inside its commands. A plugin that fails here is left out
with a warning; the commands that load the plugins report the failure in full.
"""

from __future__ import annotations

import importlib
import inspect
from functools import partial
from pathlib import Path

import click
import pluggy

from botkit import hookspecs
from botkit.errors import ConfigError, DuplicateNameError, PluginLoadError
from botkit.plugin_discovery import BUILTIN_PLUGINS, PluginSource, discover, selected_names
from botkit.settings import load_settings


class CommandGroup(click.Group):
    """A click group that refuses a second command of one name instead of silently replacing the first."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        name = name or cmd.name
        if name in self.commands:
            raise DuplicateNameError(f"there is already a command {name!r}; a plugin cannot replace it")
        super().add_command(cmd, name)


def add_plugin_commands(cli: click.Group, config: Path | None) -> None:
    """Let every plugin that is on add its commands to ``cli`` through ``botkit_register_cli``.

    A plugin that cannot be imported, or whose implementation raises or clashes with a
    command already there, adds nothing (not half its commands) and is named on standard error.
    """
    pm = pluggy.PluginManager("botkit")
    pm.add_hookspecs(hookspecs)
    for name, source in plugins_to_ask(config).items():
        before = dict(cli.commands)
        try:
            plugin = source.load()
            pm.register(plugin, name=name)
            ask(pm, name, plugin, cli)
        except Exception as error:
            cli.commands.clear()
            cli.commands.update(before)
            cause = error.cause if isinstance(error, PluginLoadError) else f"{type(error).__name__}: {error}"
            click.echo(
                f"botkit: warning: plugin {name!r} adds no commands: {cause} (leave it out with "
                f"[plugins.{name}] enabled = false, or BOTKIT_LOAD_PLUGINS)",
                err=True,
            )


def ask(pm: pluggy.PluginManager, name: str, plugin: object, cli: click.Group) -> None:
    for impl in pm.hook.botkit_register_cli.get_hookimpls():
        if impl.plugin is plugin:
            result = impl.function(cli=cli)
            if inspect.isawaitable(result):
                close = getattr(result, "close", None)
                if close is not None:
                    close()  # never run: no "never awaited" warning
                raise PluginLoadError(name, "botkit_register_cli must be a plain function, not async")


def plugins_to_ask(config: Path | None) -> dict[str, PluginSource]:
    """The plugins that are on, as the bot chooses them from the config; the built-ins first.

    When the config cannot be read or names unknown plugins, only the built-ins are asked,
    so their commands stay; the command run reports the problem (as ``botkit config check`` does).
    """
    try:
        settings = load_settings(config)
        sources = discover(settings.plugins.directory)
        names = selected_names(sources, settings)
    except ConfigError:
        sources = {
            name: PluginSource(name, "builtin", partial(importlib.import_module, module))
            for name, module in BUILTIN_PLUGINS.items()
        }
        names = set(sources)
    ordered = sorted(names, key=lambda name: (sources[name].origin != "builtin", name))
    return {name: sources[name] for name in ordered}
