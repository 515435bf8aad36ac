"""The privacy page: a user's data, their opt-out and forgetting them, for admins only, with a confirmation."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update
from web_helpers import add_test_accounts, client_for, console_of, log_in, page_csrf

from botkit.ops import load_bot
from botkit.plugins.memory import memory
from botkit.settings import settings_from_mapping
from botkit.storage import MessageRecord, UserRecord
from botkit.testing import WAIT_TIMEOUT
from botkit.web import audit
from botkit.web.app import create_app
from botkit.web.settings import WebSettings

MARKUP = '<script>window.x = 1</script><img src=x onerror="window.x = 2">'


async def seed(bot) -> None:
    """ann (shown as "Ann Smith"): two messages, one with markup; bob: one."""
    await bot.chat.say("my secret is zebra-4471", user="ann")
    await bot.chat.say(MARKUP, user="ann", channel="lobby")
    await bot.chat.say("bob asks about the weather", user="bob")
    assert await memory(bot).flush(WAIT_TIMEOUT)
    async with bot.db.session() as session:
        await session.execute(
            update(UserRecord).where(UserRecord.platform_user_id == "ann").values(display_name="Ann Smith")
        )


async def stored(bot, text: str) -> int:
    async with bot.db.sessions() as session:
        return await session.scalar(select(func.count()).where(MessageRecord.text.contains(text))) or 0


async def actions(bot) -> list[tuple[str, str, str]]:
    return [(entry.actor, entry.action, entry.target) for entry in await audit.recent(bot.db)]


async def test_an_admin_sees_counts_and_reads_text_only_when_asked_for(make_bot):
    async with make_bot() as bot, console_of(bot) as app, client_for(app) as http:
        await seed(bot)
        await log_in(http, "alice")
        empty = await http.get("/privacy")
        counts = await http.get("/privacy", params={"platform": "test", "user": "ann smith"})
        texts = await http.get("/privacy", params={"platform": "test", "user": "ann", "text": "1"})
        logged = await actions(bot)
    assert empty.status_code == 200 and '<option value="test">test</option>' in empty.text
    assert counts.status_code == 200
    assert "<h2>test:ann (Ann Smith)</h2>" in counts.text
    assert "<span>2 messages</span><span>0 feedback entries</span><span>0 moderation events</span>" in counts.text
    assert "test:general: 1 message, the last" in counts.text and "test:lobby: 1 message" in counts.text
    assert "allowed" in counts.text and 'value="optout">Opt out</button>' in counts.text
    # Her two messages and the bot's replies to them, and her user row.
    assert '<td id="would-delete">4 messages, 0 conversations, 0 feedback entries' in counts.text
    assert "zebra" not in counts.text and "bob asks" not in counts.text
    assert "my secret is zebra-4471" in texts.text
    assert "&lt;script&gt;window.x = 1&lt;/script&gt;" in texts.text and MARKUP not in texts.text
    assert logged[:2] == [("alice", "privacy.show-text", "test:ann"), ("alice", "privacy.show", "test:ann")]


async def test_an_unknown_user_or_platform_is_a_clear_message(make_bot):
    async with make_bot() as bot, console_of(bot) as app, client_for(app) as http:
        await seed(bot)
        await log_in(http, "alice")
        nobody = await http.get("/privacy", params={"platform": "test", "user": "zoe"})
        platform = await http.get("/privacy", params={"platform": "slack", "user": "ann"})
        confirm = await http.get("/privacy/forget", params={"platform": "test", "user": "zoe"})
    assert nobody.status_code == 400
    assert "no user &#39;zoe&#39; is stored on test: give their platform id or display name" in nobody.text
    assert platform.status_code == 400
    assert "no user is stored on platform &#39;slack&#39; (platforms with users: test)" in platform.text
    assert confirm.status_code == 404 and "no user &#39;zoe&#39;" in confirm.text


async def test_forgetting_inside_the_bot_asks_first_then_deletes_and_the_bot_forgets_too(make_bot):
    async with make_bot() as bot:
        await add_test_accounts(bot)
        app = create_app(bot, WebSettings(), live=True)
        async with client_for(app) as http:
            await seed(bot)
            await log_in(http, "alice")
            page = await http.get("/privacy/forget", params={"platform": "test", "user": "ann"})
            csrf = await page_csrf(http, "/privacy")
            unconfirmed = await http.post("/privacy/forget", data={"csrf": csrf, "platform": "test", "user": "ann"})
            kept = await stored(bot, "zebra")
            done = await http.post(
                "/privacy/forget", data={"csrf": csrf, "platform": "test", "user": "ann", "confirm": "test:ann"}
            )
            left = (await stored(bot, "zebra"), await stored(bot, "window.x"), await stored(bot, "bob asks"))
            await bot.chat.say("what did ann say?", user="bob")  # in #general, where she wrote
            prompt = bot.backend.render(bot.backend.prompts[-1])
            logged = await actions(bot)
    assert page.status_code == 200
    assert "<h1>Forget test:ann (Ann Smith)?</h1>" in page.text
    assert "<li>4 messages: theirs, the bot's replies to them" in page.text
    assert "It cannot be undone." in page.text
    assert unconfirmed.status_code == 303 and unconfirmed.headers["location"] == "/privacy/forget?platform=test&user=ann"
    assert kept == 1
    assert done.status_code == 200
    assert "Everything stored about test:ann (Ann Smith) is deleted (by the running bot)." in done.text
    assert "<tr><td>messages</td><td>4</td></tr>" in done.text and "<tr><td>user rows</td><td>1</td></tr>" in done.text
    assert left == (0, 0, 1)
    assert "zebra" not in prompt  # the bot's history cache let go of her too
    assert ("alice", "privacy.forget", "test:ann") in logged


@pytest.fixture
async def loaded_bot(make_bot, tmp_path):
    """A bot as `botkit web` has it (loaded, never started) on a database a bot seeded."""
    async with make_bot({"storage": {"data_dir": str(tmp_path)}}) as bot:
        await seed(bot)
    loaded = load_bot(settings_from_mapping({"backend": {"type": "scripted"}, "storage": {"data_dir": str(tmp_path)}}))
    await loaded.db.connect()
    await add_test_accounts(loaded)
    yield loaded
    await loaded.db.close()


async def test_beside_the_bot_the_console_forgets_when_no_bot_runs(loaded_bot):
    async with client_for(create_app(loaded_bot, WebSettings())) as http:
        await log_in(http, "alice")
        page = await http.get("/privacy/forget", params={"platform": "test", "user": "ann"})
        csrf = await page_csrf(http, "/privacy")
        done = await http.post(
            "/privacy/forget", data={"csrf": csrf, "platform": "test", "user": "ann", "confirm": "test:ann"}
        )
        again = await http.get("/privacy", params={"platform": "test", "user": "ann"})
    assert "This console runs beside the bot: the running bot does the deletion" in page.text
    assert "is deleted (by this process)." in done.text
    assert (await stored(loaded_bot, "zebra"), await stored(loaded_bot, "bob asks")) == (0, 1)
    assert again.status_code == 400 and "no user &#39;ann&#39; is stored on test" in again.text


async def test_the_opt_out_switch_is_the_users_own_optout(make_bot):
    async with make_bot() as bot, console_of(bot) as app, client_for(app) as http:
        await seed(bot)
        await log_in(http, "alice")
        csrf = await page_csrf(http, "/privacy")
        switched = await http.post("/privacy/optout", data={"csrf": csrf, "platform": "test", "user": "ann", "switch": "optout"})
        shown = await http.get(switched.headers["location"])
        told = await bot.chat.say("/optout", user="ann")
        again = await http.post("/privacy/optout", data={"csrf": csrf, "platform": "test", "user": "ann", "switch": "optout"})
        back = await http.post("/privacy/optout", data={"csrf": csrf, "platform": "test", "user": "ann", "switch": "optin"})
        bad = await http.post("/privacy/optout", data={"csrf": csrf, "platform": "test", "user": "ann", "switch": "maybe"})
        logged = await actions(bot)
    assert switched.status_code == 303
    assert "Opted out: their messages are never exported for training." in shown.text
    assert "opted out since" in shown.text and 'value="optin">Opt back in</button>' in shown.text
    assert told.texts[0].startswith("You are already opted out")
    assert "done=optout-already" in again.headers["location"] and "done=optin" in back.headers["location"]
    assert bad.status_code == 400 and "switch &#39;maybe&#39;: optout or optin" in bad.text
    changes = [entry for entry in logged if entry[1] in ("privacy.optout", "privacy.optin")]
    assert changes == [("alice", "privacy.optin", "test:ann"), ("alice", "privacy.optout", "test:ann")]


async def test_a_reviewer_cannot_see_or_forget_and_a_form_without_its_token_changes_nothing(make_bot):
    async with make_bot() as bot, console_of(bot) as app:
        await seed(bot)
        forget = {"platform": "test", "user": "ann", "confirm": "test:ann"}
        async with client_for(app) as http:
            await log_in(http, "rita")
            home = await http.get("/")
            for path in ("/privacy", "/privacy/forget?platform=test&user=ann"):
                refused = await http.get(path)
                assert refused.status_code == 403 and "this page is for admins" in refused.text
            csrf = await page_csrf(http, "/")
            assert (await http.post("/privacy/forget", data={"csrf": csrf, **forget})).status_code == 403
            switch = {"csrf": csrf, "platform": "test", "user": "ann", "switch": "optout"}
            assert (await http.post("/privacy/optout", data=switch)).status_code == 403
        async with client_for(app) as http:
            await log_in(http, "alice")
            for data in (forget, {**forget, "csrf": "not-the-token"}):
                assert (await http.post("/privacy/forget", data=data)).status_code == 403
        assert await stored(bot, "zebra") == 1
        logged = await actions(bot)
    assert 'href="/privacy"' not in home.text
    assert [action for _, action, _ in logged if action.startswith("privacy.")] == []


async def test_when_a_plugin_cannot_let_go_nothing_is_deleted_and_the_page_says_so(make_bot, tmp_path):
    from botkit import hookimpl

    class Stuck:
        @hookimpl
        async def botkit_forget_user(self, platform, user_id, bot):
            return False  # its pending writes cannot reach the database now

    async with make_bot({"storage": {"data_dir": str(tmp_path / "d")}}, plugins={"stuck": Stuck()}) as bot:
        await add_test_accounts(bot)
        async with client_for(create_app(bot, WebSettings(), live=True)) as http:
            await seed(bot)
            await log_in(http, "alice")
            csrf = await page_csrf(http, "/privacy")
            refused = await http.post(
                "/privacy/forget", data={"csrf": csrf, "platform": "test", "user": "ann", "confirm": "test:ann"}
            )
            kept = await stored(bot, "zebra")
            logged = await actions(bot)
    assert refused.status_code == 503
    assert "a plugin cannot let go of the user now" in refused.text and "nothing was deleted" in refused.text
    assert kept == 1 and "privacy.forget" not in [action for _, action, _ in logged]
