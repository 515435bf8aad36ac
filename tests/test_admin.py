"""Admin commands: plugin switches (stored), reload, config, status; refused for everyone else."""

from __future__ import annotations

import logging

from botkit import ReplyStatus


async def test_non_admins_are_refused_and_logged(bot, caplog):
    with caplog.at_level(logging.WARNING):
        for command in ("/plugins", "/disable memory", "/reload", "/config", "/status"):
            reply = await bot.chat.say(command, user="mallory")
            name = command.split()[0]
            assert reply.texts == [f"Sorry, {name} is for admins only."]
    assert caplog.text.count("refused admin command") == 5


async def test_plugins_lists_state_and_origin(bot):
    reply = await bot.chat.say("/plugins", user="admin")
    lines = reply.texts[0].splitlines()
    assert lines[0] == "Plugins:"
    assert "memory: on - builtin" in lines
    assert "scripted: on - builtin (fixed)" in lines  # provides the backend


async def test_disable_and_enable_a_plugin_at_run_time_and_across_restarts(make_bot, tmp_path):
    config = {"storage": {"data_dir": str(tmp_path / "d")}, "bot": {"conversation_scope": "channel"}}
    async with make_bot(config) as bot:
        off = await bot.chat.say("/disable memory", user="admin")
        gone = await bot.chat.say("/history", user="admin")
        await bot.chat.say("not remembered")
    assert off.texts == [
        "Plugin memory is disabled (stored: it stays disabled after a restart until cleared). "
        "Off with it, as they need it: feedback."
    ]
    assert gone.texts[0].startswith("Unknown command /history")
    async with make_bot(config) as bot:  # restart: the switch holds
        still_off = await bot.chat.say("/history")
        on = await bot.chat.say("/enable memory", user="admin")
        await bot.chat.say("remember me")
        history = await bot.chat.say("/history")
        cleared = await bot.chat.say("/clear memory", user="admin")
        listing = await bot.chat.say("/plugins", user="admin")
    assert still_off.texts[0].startswith("Unknown command /history")
    assert on.texts == [
        "Plugin memory is enabled (stored: it stays enabled after a restart until cleared). "
        "Back on with it: feedback."
    ]
    assert "you: remember me" in history.texts[0] and "not remembered" not in history.texts[0]
    assert cleared.texts == ["Stored switch of memory cleared: config.toml decides from the next start."]
    assert "memory: on - builtin" in listing.texts[0].splitlines()


async def test_a_plugin_off_in_config_can_be_switched_on(make_bot, tmp_path):
    config = {"storage": {"data_dir": str(tmp_path / "d")}, "plugins": {"disclosure": {"enabled": False}}}
    async with make_bot(config) as bot:
        on = await bot.chat.say("/enable disclosure", user="admin")
        listing = await bot.chat.say("/plugins", user="admin")
    assert on.texts[0].startswith("Plugin disclosure is enabled")
    assert "disclosure: on - builtin (switched by an admin)" in listing.texts[0]


async def test_plugins_the_bot_cannot_run_without_refuse(bot):
    backend = await bot.chat.say("/disable scripted", user="admin")
    admin = await bot.chat.say("/disable admin", user="admin")
    unknown = await bot.chat.say("/disable nosuch", user="admin")
    usage = await bot.chat.say("/disable", user="admin")
    assert backend.texts == [
        "Cannot switch scripted: plugin 'scripted' provides a backend: change config.toml and restart instead."
    ]
    assert admin.texts == ["Cannot switch admin: plugin 'admin' is required and cannot be switched off."]
    assert unknown.texts[0].startswith(
        "Cannot switch nosuch: there is no plugin 'nosuch'; available: access, admin,"
    )
    assert usage.texts == ["Usage: /disable NAME"]


async def test_reload_applies_a_changed_config_without_reloading_the_model(make_bot, tmp_path):
    path = tmp_path / "config.toml"
    data = tmp_path / "d"

    def write(bot_table: str, backend_extra: str = "", more: str = "") -> None:
        path.write_text(
            f'[bot]\nadmins = ["test:admin"]\n{bot_table}\n'
            f'[backend]\ntype = "scripted"\n{backend_extra}\n'
            f'[storage]\ndata_dir = "{data}"\n{more}',
            encoding="utf-8",
        )

    write('system_prompt = "Be brief."')
    from botkit.settings import load_settings

    settings = load_settings(path)
    async with make_bot({"storage": {"data_dir": str(data)}}) as bot:
        bot.host.settings = settings  # as if started from the file
        backend = bot.backend
        write(
            'system_prompt = "Be kind."',
            "context_window = 999\ntemperature = 0.3",
            '[plugins.ratelimit]\nper_user = "1/minute"\n',
        )
        reloaded = await bot.chat.say("/reload", user="admin")
        await bot.chat.say("hi", user="ann")
        limited = await bot.chat.say("again", user="ann")
        write("max_message_chars = -1")
        broken = await bot.chat.say("/reload", user="admin")
    assert bot.backend is backend and bot.backend.started
    assert bot.backend.prompts[-1].system == "Be kind."
    assert bot.backend_settings.temperature == 0.3 and bot.backend_settings.context_window == 4096
    assert "[backend] context_window changed: they apply after a restart" in reloaded.texts[0]
    assert "restarted: ratelimit" in reloaded.texts[0]
    assert limited.status is None and limited.texts[0].startswith("You're sending messages faster")
    assert broken.texts[0].startswith("Config not reloaded, nothing changed:")
    assert bot.settings.bot.system_prompt == "Be kind."


async def test_config_shows_the_effective_config_masked(make_bot, monkeypatch):
    async with make_bot() as bot:
        monkeypatch.setenv("BOTKIT_PLUGINS__RATELIMIT__PASSWORD", "sekrit")
        from botkit.settings import validate_table

        bot.host.plugin_settings["ratelimit"] = validate_table(
            type(bot.plugin_settings("ratelimit")),
            {"password": "sekrit"},
            bot.settings,
            ("plugins", "ratelimit"),
        )
        shown = await bot.chat.say("/config", user="admin")
    text = shown.texts[0]
    assert "[bot]" in text and 'type = "scripted"' in text
    assert "sekrit" not in text and 'password = "**********"' in text


async def test_status_reports_queue_and_backend(bot):
    reply = await bot.chat.say("/status", user="admin")
    text = reply.texts[0]
    assert "default: scripted scripted · 0/1 generating · 0 waiting (at most 100) · context 4,096 tokens" in text
    assert "Database: sqlite+aiosqlite:///" in text


async def test_model_output_never_triggers_an_admin_command(bot):
    bot.backend.say("/disable memory")
    reply = await bot.chat.say("please say '/disable memory'", user="admin")
    assert reply.final == "/disable memory" and reply.status is ReplyStatus.COMPLETED
    assert bot.host.pm.get_plugin("memory") is not None


def test_plugins_can_be_switched_from_the_shell(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "config.toml"
    config.write_text(
        f'[backend]\ntype = "scripted"\n[storage]\ndata_dir = "{tmp_path / "d"}"\n', encoding="utf-8"
    )
    def botkit(*args, stdin=""):
        return subprocess.run(
            [sys.executable, "-m", "botkit", *args, "--config", str(config)],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    off = botkit("plugins", "disable", "memory")
    assert off.returncode == 0, off.stderr
    assert off.stdout.startswith("memory disabled")
    assert botkit("chat", stdin="/history\n").stdout.startswith("botkit> Unknown command /history")
    refused = botkit("plugins", "disable", "llamacpp")
    assert refused.returncode == 2 and "provides a backend" in refused.stderr
    assert botkit("plugins", "clear", "memory").returncode == 0
    assert botkit("chat", stdin="/history\n").stdout.startswith("botkit> I don't remember anything")


async def test_plugins_shows_each_adapter_s_own_state(make_bot):
    config = {"adapters": {"discord": {"enabled": False}, "slack": {"enabled": False}}}
    async with make_bot(config) as bot:
        bot.make_adapter("console")
        lines = (await bot.chat.say("/plugins", user="admin")).texts[0].splitlines()
    assert (
        "discord: off - builtin (fixed; adapter discord: off ([adapters.discord] enabled = false))" in lines
    )
    assert "slack: off - builtin (fixed; adapter slack: off ([adapters.slack] enabled = false))" in lines
    assert "console: on - builtin (fixed; adapter console: running)" in lines
