"""Plugin loading: built-ins, entry points, a plugins folder, switches, and typed load errors."""

from __future__ import annotations

import logging
import textwrap

import pytest

from botkit import hookimpl, hookspecs
from botkit.bot import Bot
from botkit.errors import ConfigError, PluginLoadError
from botkit.plugin_discovery import BUILTIN_PLUGINS
from botkit.plugin_host import PluginHost
from botkit.settings import settings_from_mapping


def host_for(config: dict | None = None, extra: dict | None = None) -> PluginHost:
    host = PluginHost(settings_from_mapping({"backend": {"type": "scripted"}, **(config or {})}))
    host.load(extra)
    return host


def test_builtins_load_and_every_hook_is_known():
    host = host_for()
    assert set(host.pm_names()) == set(BUILTIN_PLUGINS)
    host.pm.check_pending()  # would raise on a misspelled hook
    assert host.infos["llamacpp"].hooks == ["botkit_register_backends"]
    assert host.infos["commands"].origin == "builtin"
    assert {"help", "stop"} <= set(host.registry.commands)
    assert set(host.registry.backends) == {"llamacpp", "openai", "scripted", "transformers"}
    assert {"console", "slack"} <= set(host.registry.adapters)


def test_hookspecs_are_all_registered():
    host = host_for()
    assert set(hookspecs.HOOK_NAMES) == {name for name in dir(host.pm.hook) if name.startswith("botkit_")}


def test_misspelled_hook_is_a_typed_error_naming_the_plugin():
    class Typo:
        @hookimpl
        def botkit_gat(self, message):  # should be botkit_gate
            return None

    with pytest.raises(PluginLoadError) as error:
        host_for(extra={"typo": Typo()})
    assert error.value.plugin == "typo"
    assert "implements unknown hook 'botkit_gat'" in str(error.value)
    assert str(error.value).startswith("plugin 'typo': ")


def test_plugin_can_be_disabled_in_config():
    host = host_for({"plugins": {"commands": {"enabled": False}}})
    assert "commands" not in host.pm_names()
    assert host.infos["commands"].enabled is False
    assert "help" not in host.registry.commands


async def test_disabled_commands_plugin_means_no_commands(make_bot):
    async with make_bot({"plugins": {"commands": {"enabled": False}}}) as bot:
        reply = await bot.chat.say("/help")
    assert reply.texts == ["Unknown command /help."]  # no hint at a command that is not there


async def test_unknown_command_hints_at_help_only_while_help_is_there(make_bot):
    async with make_bot({"plugins": {"commands": {"enabled": False}}}) as bot:
        without = await bot.chat.say("/nope")
        await bot.chat.say("/enable commands", user="admin")
        with_help = await bot.chat.say("/nope")
    assert without.texts == ["Unknown command /nope."]
    assert with_help.texts == ["Unknown command /nope. Type /help to see the commands."]


def test_disabling_every_backend_names_the_problem():
    settings = settings_from_mapping(
        {
            "plugins": {
                "llamacpp": {"enabled": False},
                "openai": {"enabled": False},
                "scripted": {"enabled": False},
                "transformers": {"enabled": False},
            }
        }
    )
    with pytest.raises(
        ConfigError, match=r"no backend 'llamacpp'; available: none \(are the backend plugins disabled\?\)"
    ):
        Bot.load(settings)


def test_enabled_must_be_a_boolean():
    with pytest.raises(
        ConfigError, match=r"\[plugins.commands\] enabled: expected true or false \(got 'no'\)"
    ):
        host_for({"plugins": {"commands": {"enabled": "no"}}})


def test_unknown_plugin_in_config_lists_the_available_ones():
    with pytest.raises(ConfigError) as error:
        host_for({"plugins": {"moderaton": {"enabled": True}}})
    available = ", ".join(sorted(BUILTIN_PLUGINS))  # access, admin, commands, console, ...
    assert f"unknown plugin 'moderaton'; available: {available}" in str(error.value)


def test_environment_variable_restricts_what_loads(monkeypatch):
    monkeypatch.setenv("BOTKIT_LOAD_PLUGINS", "scripted, console")
    host = host_for()
    assert set(host.pm_names()) == {"scripted", "console"}
    monkeypatch.setenv("BOTKIT_LOAD_PLUGINS", "scripted,nosuch")
    with pytest.raises(ConfigError, match="BOTKIT_LOAD_PLUGINS: unknown plugin.s. nosuch; available:"):
        host_for()


def write_plugin(folder, name, source):
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")


PING_PLUGIN = """
    from botkit import Command, hookimpl

    async def ping(ctx):
        return "pong " + ctx.args

    @hookimpl
    def botkit_register_commands(register):
        register(Command("ping", "answer pong", ping))
"""


async def test_single_file_plugin_from_the_plugins_folder(make_bot, tmp_path):
    folder = tmp_path / "plugins"
    write_plugin(folder, "ping", PING_PLUGIN)
    write_plugin(folder, "_helper", "raise RuntimeError('private modules are not plugins')")
    async with make_bot({"plugins": {"directory": str(folder)}}) as bot:
        reply = await bot.chat.say("/ping me")
        assert bot.host.infos["ping"].origin == str(folder / "ping.py")
    assert reply.texts == ["pong me"]


def test_plugin_that_fails_to_import_is_named_with_its_cause(tmp_path):
    folder = tmp_path / "plugins"
    write_plugin(folder, "broken", "import nonexistent_module_for_botkit_tests\n")
    with pytest.raises(PluginLoadError) as error:
        host_for({"plugins": {"directory": str(folder)}})
    assert str(error.value) == (
        "plugin 'broken': ModuleNotFoundError: No module named 'nonexistent_module_for_botkit_tests'"
    )


async def test_on_error_skip_starts_without_the_broken_plugin(make_bot, tmp_path, caplog):
    folder = tmp_path / "plugins"
    write_plugin(folder, "broken", "import nonexistent_module_for_botkit_tests\n")
    write_plugin(folder, "ping", PING_PLUGIN)
    config = {"plugins": {"directory": str(folder), "on_error": "skip"}}
    with caplog.at_level(logging.ERROR, logger="botkit.plugins"):
        async with make_bot(config) as bot:
            reply = await bot.chat.say("/ping ok")
            assert "broken" not in bot.host.pm_names()
            assert bot.host.infos["broken"].error.startswith("ModuleNotFoundError")
    assert reply.texts == ["pong ok"]
    assert "plugin 'broken': ModuleNotFoundError" in caplog.text and "starting without it" in caplog.text


def test_registration_failure_is_typed_and_leaves_nothing_behind(tmp_path, caplog):
    folder = tmp_path / "plugins"
    write_plugin(
        folder,
        "clash",
        """
        from botkit import Command, hookimpl

        async def mine(ctx):
            return "mine"

        @hookimpl
        def botkit_register_commands(register):
            register(Command("mycmd", "registered first", mine))
            register(Command("help", "clashes with the built-in", mine))
        """,
    )
    with pytest.raises(PluginLoadError) as error:
        host_for({"plugins": {"directory": str(folder)}})
    assert (
        "plugin 'clash': DuplicateNameError: command 'help' is registered by both plugin 'commands'"
        in str(error.value)
    )
    host = host_for({"plugins": {"directory": str(folder), "on_error": "skip"}})
    assert "mycmd" not in host.registry.commands
    assert host.registry.owner("command", "help") == "commands"


def test_plugins_folder_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="is not a folder"):
        host_for({"plugins": {"directory": str(tmp_path / "missing")}})


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "botkit_wave.py").write_text(
        textwrap.dedent(PING_PLUGIN).replace('"ping"', '"wave"'), encoding="utf-8"
    )
    dist = site / "botkit_wave-1.2.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: botkit-wave\nVersion: 1.2\n", encoding="utf-8"
    )
    (dist / "entry_points.txt").write_text("[botkit]\nwave = botkit_wave\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    host = host_for()
    assert host.infos["wave"].origin == "entry point (botkit-wave 1.2)"
    assert "wave" in host.registry.commands
    disabled = host_for({"plugins": {"wave": {"enabled": False}}})
    assert "wave" not in disabled.registry.commands


def test_hook_wrappers_are_refused_by_name():
    class Wrapper:
        @hookimpl(wrapper=True)
        def botkit_gate(self, message):
            return (yield)

    with pytest.raises(PluginLoadError, match="plugin 'wrapping': botkit_gate is a wrapper"):
        host_for(extra={"wrapping": Wrapper()})


def test_plugins_can_be_disabled_from_the_environment(monkeypatch):
    monkeypatch.setenv("BOTKIT_PLUGINS__MEMORY__ENABLED", "false")
    from botkit.settings import load_settings

    host = PluginHost(load_settings())
    host.load()
    assert "memory" not in host.pm_names()


def test_async_register_hooks_are_refused():
    class Async:
        @hookimpl
        async def botkit_register_commands(self, register):
            pass

    with pytest.raises(
        PluginLoadError, match="plugin 'late': botkit_register_commands must be a plain function"
    ):
        host_for(extra={"late": Async()})
