"""What plugins declare through botkit_register_plugin (required, needs) and how switching honours it."""

from __future__ import annotations

import logging

import pytest

from botkit import PluginLoadError, hookimpl
from botkit.plugin_host import read_stored_switches


class Needs:
    """A third-party plugin that cannot work without the named plugins."""

    def __init__(self, *needs: str) -> None:
        self.needs = list(needs)
        self.events: list[str] = []

    @hookimpl
    def botkit_register_plugin(self, register):
        register(needs=self.needs)

    @hookimpl
    def botkit_startup(self, bot):
        self.events.append("startup")

    @hookimpl
    def botkit_shutdown(self, bot):
        self.events.append("shutdown")


class Pinned:
    @hookimpl
    def botkit_register_plugin(self, register):
        register(required=True)


async def plugin_lines(bot) -> list[str]:
    reply = await bot.chat.say("/plugins", user="admin")
    return reply.texts[0].splitlines()


async def test_feedback_is_off_while_memory_is_and_says_why(make_bot, caplog):
    with caplog.at_level(logging.WARNING, logger="botkit.plugins"):
        async with make_bot({"plugins": {"memory": {"enabled": False}}}) as bot:
            lines = await plugin_lines(bot)
            command = await bot.chat.say("/feedback", user="admin")
            refused = await bot.chat.say("/enable feedback", user="admin")
            assert not bot.plugins.is_on("feedback")
    assert "feedback: off - builtin (needs plugin 'memory', which is off)" in lines
    assert "plugin 'feedback' is off: it needs plugin 'memory', which is off" in caplog.text
    assert command.texts[0].startswith("Unknown command /feedback")
    assert refused.texts == [
        "Cannot enable feedback: it needs plugin 'memory', which is off; enable memory first"
    ]


async def test_switching_a_needed_plugin_takes_its_dependants_along_and_back(make_bot, tmp_path):
    needy = Needs("memory")
    config = {"storage": {"data_dir": str(tmp_path / "d")}}
    async with make_bot(config, plugins={"needy": needy}) as bot:
        off = await bot.chat.say("/disable memory", user="admin")
        states_off = {p.name: p.on for p in await bot.plugins.list()}
        on = await bot.chat.say("/enable memory", user="admin")
        states_on = {p.name: p.on for p in await bot.plugins.list()}
        stored = await read_stored_switches(bot.db)
    assert off.texts[0].endswith("Off with it, as they need it: feedback, needy.")
    assert on.texts[0].endswith("Back on with it: feedback, needy.")
    assert states_off["needy"] is False and states_off["feedback"] is False
    assert states_on["needy"] is True and states_on["feedback"] is True
    # Their own hooks ran as they went and came back; only memory's switch is stored.
    assert needy.events == ["startup", "shutdown", "startup", "shutdown"]
    assert stored == {"memory": True}


async def test_an_admins_switch_beats_coming_back_with_a_need(make_bot, tmp_path):
    config = {"storage": {"data_dir": str(tmp_path / "d")}}
    async with make_bot(config) as bot:
        await bot.chat.say("/disable memory", user="admin")
        await bot.chat.say("/disable feedback", user="admin")
        on = await bot.chat.say("/enable memory", user="admin")
        assert not bot.plugins.is_on("feedback")
    assert "Back on with it" not in on.texts[0]
    async with make_bot(config) as restarted:  # both stored switches hold after a restart
        assert restarted.plugins.is_on("memory") and not restarted.plugins.is_on("feedback")


async def test_a_stored_switch_that_turns_a_need_on_brings_its_dependants(make_bot, tmp_path):
    data = {"data_dir": str(tmp_path / "d")}
    async with make_bot({"storage": data}) as bot:
        await bot.chat.say("/enable memory", user="admin")  # stored, although already on
    async with make_bot({"storage": data, "plugins": {"memory": {"enabled": False}}}) as bot:
        assert bot.plugins.is_on("memory") and bot.plugins.is_on("feedback")


async def test_a_required_plugin_is_never_switched_off(make_bot):
    async with make_bot(plugins={"pinned": Pinned()}) as bot:
        refused = await bot.chat.say("/disable pinned", user="admin")
        listing = {p.name: p for p in await bot.plugins.list()}
    assert refused.texts == ["Cannot switch pinned: plugin 'pinned' is required and cannot be switched off."]
    assert listing["pinned"].on and listing["pinned"].fixed
    assert listing["admin"].fixed == "plugin 'admin' is required and cannot be switched off"


@pytest.mark.parametrize(
    ("needs", "cause"),
    [
        ("memory", "needs must be a list of plugin names"),
        (["selfish"], "a plugin cannot need itself"),
    ],
)
async def test_bad_declarations_are_load_errors_naming_the_plugin(make_bot, needs, cause):
    class Bad:
        @hookimpl
        def botkit_register_plugin(self, register):
            register(needs=needs)

    with pytest.raises(PluginLoadError) as error:
        async with make_bot(plugins={"selfish": Bad()}):
            pass  # start-up is expected to raise
    assert error.value.plugin == "selfish" and cause in str(error.value)
