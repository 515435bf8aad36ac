"""The privacy page in a real browser: look a user up, forget them after the confirmation, and they are gone.

Debian's chromium, headless, through selenium (the browser fixture and helpers of
tests/test_web_browser.py), against `botkit web` on a SQLite database seeded here.
Screenshots go where that module puts its own ($WEB_SCREENSHOTS renews docs/images/web).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest
from export_helpers import settle, talk
from sqlalchemy import update
from test_web_browser import Site, browser, log_in, served_site, shoot, wait_for  # noqa: F401  (browser: a fixture)

from botkit.storage import UserRecord

DANAS = {
    "My account number is 4471, can you reset it?": "I cannot reset accounts.",
    "Where is the staging runbook?": "In the ops wiki.",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    """`botkit web` on a database where dana ("Dana Scully") and erin talked in #support."""

    async def fill(bot) -> None:
        for question, answer in DANAS.items():
            await talk(bot, question, answer, user="dana", channel="support")
        await talk(bot, "erin asks about the weather", "Sunny.", user="erin", channel="support")
        await bot.chat.say("/optout", user="dana")
        await settle(bot)
        async with bot.db.session() as session:
            await session.execute(
                update(UserRecord).where(UserRecord.platform_user_id == "dana").values(display_name="Dana Scully")
            )

    yield from served_site(tmp_path_factory, "web-privacy", fill)


def stored_texts(site: Site) -> list[str]:
    """Every message text in the database, read straight from the SQLite file."""
    with sqlite3.connect(site.data / "botkit.db") as db:
        return [text for (text,) in db.execute("SELECT text FROM messages ORDER BY id")]


def test_look_up_a_user_and_forget_them_with_confirmation(browser, site):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import Select

    log_in(browser, site, "alice")
    browser.find_element(By.LINK_TEXT, "Privacy").click()
    wait_for(browser, shown.url_to_be(f"{site.url}/privacy"))
    Select(browser.find_element(By.NAME, "platform")).select_by_value("test")
    browser.find_element(By.NAME, "user").send_keys("dana scully")
    browser.find_element(By.NAME, "text").click()
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    wait_for(browser, shown.presence_of_element_located((By.ID, "user-data")))
    data = browser.find_element(By.ID, "user-data").text
    assert "test:dana (Dana Scully)" in data
    assert "2 messages" in browser.find_element(By.ID, "stored").text
    assert browser.find_element(By.ID, "optout").text.startswith("opted out since")
    assert "My account number is 4471, can you reset it?" in data and "erin" not in data
    assert browser.find_element(By.ID, "would-delete").text.startswith("4 messages, 0 conversations")
    shoot(browser, site, "privacy")

    browser.find_element(By.ID, "forget").click()
    wait_for(browser, shown.url_contains("/privacy/forget?"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Forget test:dana (Dana Scully)?"
    assert browser.find_element(By.ID, "will-delete").text.startswith("4 messages: theirs, the bot's replies")
    shoot(browser, site, "privacy-forget")
    assert any("Where is the staging runbook?" == text for text in stored_texts(site))  # nothing gone yet

    browser.find_element(By.ID, "confirm-forget").click()
    wait_for(browser, shown.title_contains("Forgotten"))
    assert "Everything stored about test:dana (Dana Scully) is deleted" in browser.find_element(By.TAG_NAME, "main").text
    counts = dict(row.text.rsplit(" ", 1) for row in browser.find_elements(By.CSS_SELECTOR, "#deleted tbody tr"))
    assert counts["messages"] == "4" and counts["privacy records"] == "1" and counts["user rows"] == "1"
    shoot(browser, site, "privacy-forgotten")

    assert stored_texts(site) == ["erin asks about the weather", "Sunny."]  # dana's are gone, erin's stay
    browser.get(f"{site.url}/privacy?platform=test&user=dana")
    assert "no user 'dana' is stored on test" in browser.find_element(By.CSS_SELECTOR, "[role=alert]").text
    browser.get(f"{site.url}/audit")
    log = browser.find_element(By.TAG_NAME, "tbody").text
    assert "alice privacy.forget test:dana" in log and "alice privacy.show-text test:dana" in log
