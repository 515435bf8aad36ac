"""The overview on the console's home page: admins see it all, reviewers the activity; the charts carry the numbers."""

from __future__ import annotations

import re

import pytest
from overview_seed import NOW, seed_overview
from web_helpers import add_test_accounts, client_for, console_of, log_in

from botkit.web.app import create_app
from botkit.web.settings import WebSettings


@pytest.fixture(autouse=True)
def at_now(monkeypatch):
    """The page's "now" is the seed's, so that every bucket holds what the seed put there."""
    monkeypatch.setattr("botkit.web.overview_pages.utcnow", lambda: NOW)


def titles(html: str) -> list[str]:
    """The tooltips of the charts' bars."""
    return re.findall(r"<title>([^<]*)</title>", html)


async def test_an_admin_sees_the_charts_with_the_stored_numbers_and_the_state_of_everything(bot):
    await seed_overview(bot.db)
    async with console_of(bot) as app, client_for(app) as http:
        await log_in(http, "alice")
        page = await http.get("/")
    assert page.status_code == 200
    html = page.text
    shown = titles(html)
    assert "11-20 15:00 UTC: 3 messages, 2 replies" in shown
    assert "11-19 16:00 UTC: 2 messages, 0 replies" in shown
    assert "11-20 15:00 UTC: 2 up, 1 down (33% down)" in shown
    assert "Fri 2026-11-20 UTC: 4 messages, 2 replies" in shown
    assert "Wed 2026-11-18 UTC: 0 up, 1 down (100% down)" in shown
    assert "Fri 2026-11-20 UTC: 3 events (block email 2, flag injection 1)" in shown
    assert "Wed 2026-11-18 UTC: 1 events (redact phone 1)" in shown
    assert len([title for title in shown if title.startswith("11-")]) == 48  # 24 hours, two charts
    # Each chart is described for a screen reader, and its numbers are in a table too.
    assert "6 messages from users and 2 replies in the last 24 hours." in html
    assert "<td>Fri 2026-11-20</td><td>3</td><td>block email 2, flag injection 1</td>" in html
    # The links to the pages stay.
    assert 'href="/review"' in html and 'href="/audit"' in html
    # Beside no running bot: said, not guessed. The rest is read from the database and the disk.
    assert "Backends, queues and adapters: not known: no running bot reachable" in html
    assert "Rate-limit refusals" in html and "Not stored per day" in html
    assert re.search(r"<th scope=\"col\">messages</th>.*?<td>12</td>", html, re.S)
    assert "up to date" in html and "nothing waits for the database" in html
    assert " style=" not in html and "<script" not in html


async def test_a_reviewer_sees_the_activity_only(bot):
    await seed_overview(bot.db)
    async with console_of(bot) as app, client_for(app) as http:
        await log_in(http, "rita")
        page = await http.get("/")
    assert page.status_code == 200
    assert "11-20 15:00 UTC: 3 messages, 2 replies" in titles(page.text)
    for admins_only in (
        "Running bot",
        "Rate-limit refusals",
        "<h3>Database</h3>",
        "<h3>Spool</h3>",
        "sqlite+aiosqlite",
    ):
        assert admins_only not in page.text


async def test_inside_the_bot_the_page_shows_its_backends_and_adapters(bot):
    await add_test_accounts(bot)
    app = create_app(bot, WebSettings(), live=True)
    async with client_for(app) as http:
        await log_in(http, "alice")
        page = await http.get("/")
    assert page.status_code == 200
    assert "(this process): <strong>ready</strong>" in page.text
    backends = page.text.split('<table id="backends">', 1)[1].split("</table>", 1)[0]
    assert 'default <span class="meta">scripted</span>' in backends and "(at most" in backends
    assert "not known" not in page.text


async def test_stored_names_are_text_on_the_page(bot):
    from botkit.storage import ModerationEventRecord

    async with bot.db.session() as session:
        session.add(
            ModerationEventRecord(
                direction="in", category="<img src=x onerror=alert(1)>", action="flag", created_at=NOW
            )
        )
    async with console_of(bot) as app, client_for(app) as http:
        await log_in(http, "alice")
        page = await http.get("/")
    assert "<img src=x" not in page.text
    assert "flag &lt;img src=x onerror=alert(1)&gt; 1" in page.text
