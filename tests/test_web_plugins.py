"""The plugins page: each plugin's state and why, settings with secrets masked, and the stored switch."""

from __future__ import annotations

import pytest
from web_helpers import add_test_accounts, client_for, log_in, page_csrf

from botkit.ops import load_bot
from botkit.settings import settings_from_mapping
from botkit.web import audit
from botkit.web.app import create_app
from botkit.web.settings import WebSettings


async def switch(http, name: str, wanted: str):
    return await http.post(f"/plugins/{name}/switch", data={"csrf": await page_csrf(http, "/plugins"), "switch": wanted})


def row_of(page: str, name: str) -> str:
    start = page.index(f'<tr id="plugin-{name}">')
    return page[start : page.index("</tr>", start)]


async def test_inside_the_running_bot_a_switch_acts_at_once_and_the_bot_refuses_the_plugins_commands(make_bot):
    async with make_bot() as bot:
        await add_test_accounts(bot)
        app = create_app(bot, WebSettings(), live=True)
        async with client_for(app) as http:
            await log_in(http, "alice")
            assert (await bot.chat.say("/optout", user="ann")).texts[0].startswith("Done:")
            response = await switch(http, "privacy", "disable")
            assert response.status_code == 303
            page = (await http.get(response.headers["location"])).text
            assert "Plugin privacy is disabled (stored: it stays disabled after a restart until cleared)." in page
            row = row_of(page, "privacy")
            assert "<td>off</td>" in row and "switched by an admin (stored)" in row
            assert not bot.plugins.is_on("privacy") and "optout" not in bot.commands
            refused = await bot.chat.say("/optout", user="ann")
            assert refused.texts == ["Unknown command /optout. Type /help to see the commands."]
            await switch(http, "privacy", "enable")
            assert bot.plugins.is_on("privacy") and "optout" in bot.commands
        actions = [(entry.action, entry.target) for entry in await audit.recent(bot.db)]
        assert actions[:2] == [("plugin.enable", "privacy"), ("plugin.disable", "privacy")]


@pytest.fixture
async def loaded_bot(tmp_path):
    """A bot as `botkit web` has it: loaded and its database connected, never started."""
    bot = load_bot(settings_from_mapping({"backend": {"type": "scripted"}, "storage": {"data_dir": str(tmp_path)}}))
    await bot.db.connect()
    await bot.migrator.ensure_current(True)
    yield bot
    await bot.db.close()


async def test_beside_the_bot_the_switch_is_stored_for_its_next_start(loaded_bot, make_bot, tmp_path):
    await add_test_accounts(loaded_bot)
    app = create_app(loaded_bot, WebSettings())
    async with client_for(app) as http:
        await log_in(http, "alice")
        response = await switch(http, "privacy", "disable")
        page = (await http.get(response.headers["location"])).text
        assert "privacy: disable stored; the bot applies it at its next start" in page
        row = row_of(page, "privacy")
        assert "<td>off</td>" in row and "switched by an admin (stored)" in row
    # The bot started next on this database runs without it.
    async with make_bot({"storage": {"data_dir": str(tmp_path)}}) as bot:
        assert not bot.plugins.is_on("privacy")
    async with client_for(app) as http:
        await log_in(http, "alice")
        cleared = await switch(http, "privacy", "clear")
        row = row_of((await http.get(cleared.headers["location"])).text, "privacy")
        assert "<td>on</td>" in row and "switched by an admin" not in row  # config.toml decides again
    async with make_bot({"storage": {"data_dir": str(tmp_path)}}) as bot:
        assert bot.plugins.is_on("privacy")


async def test_a_plugin_that_cannot_be_switched_has_no_switch_and_a_forged_request_is_refused(loaded_bot):
    await add_test_accounts(loaded_bot)
    app = create_app(loaded_bot, WebSettings())
    async with client_for(app) as http:
        await log_in(http, "alice")
        page = (await http.get("/plugins")).text
        assert 'action="/plugins/admin/switch"' not in row_of(page, "admin")
        assert 'action="/plugins/web/switch"' not in row_of(page, "web")  # the console cannot switch itself off
        assert "fixed: plugin &#39;admin&#39; is required" in row_of(page, "admin")
        refused = await switch(http, "admin", "disable")
        assert refused.status_code == 400 and "plugin &#39;admin&#39; is required and cannot be switched off" in refused.text
        unknown = await switch(http, "nosuch", "disable")
        assert unknown.status_code == 400 and "there is no plugin &#39;nosuch&#39;" in unknown.text
        assert [entry.action for entry in await audit.recent(loaded_bot.db)] == ["login"]


async def test_a_reviewer_can_neither_see_nor_switch_plugins(loaded_bot):
    await add_test_accounts(loaded_bot)
    app = create_app(loaded_bot, WebSettings())
    async with client_for(app) as http:
        await log_in(http, "rita")
        assert (await http.get("/plugins")).status_code == 403
        csrf = await page_csrf(http, "/")
        forged = await http.post("/plugins/privacy/switch", data={"csrf": csrf, "switch": "disable"})
        assert forged.status_code == 403
    async with client_for(app) as http:
        await log_in(http, "alice")
        assert "switched by an admin" not in row_of((await http.get("/plugins")).text, "privacy")


async def test_settings_are_shown_with_secrets_masked(tmp_path, monkeypatch):
    monkeypatch.setenv("BOTKIT_PLUGINS__RATELIMIT__PASSWORD", "redis-hunter2")
    settings = settings_from_mapping(
        {"backend": {"type": "scripted"}, "storage": {"data_dir": str(tmp_path)}, "plugins": {"ratelimit": {"per_user": "5/minute"}}}
    )
    bot = load_bot(settings)
    await bot.db.connect()
    try:
        await bot.migrator.ensure_current(True)
        await add_test_accounts(bot)
        async with client_for(create_app(bot, WebSettings())) as http:
            await log_in(http, "alice")
            row = row_of((await http.get("/plugins")).text, "ratelimit")
    finally:
        await bot.db.close()
    assert "per_user = &#34;5/minute&#34;" in row
    assert "redis-hunter2" not in row and "**********" in row
