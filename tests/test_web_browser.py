"""The web console in a real browser: Debian's chromium, headless, driven by selenium, against `botkit web`.

One browser and one `botkit web` process on a seeded SQLite database serve every test
here (module fixtures). Nothing is downloaded: selenium is pointed at /usr/bin/chromium
and /usr/bin/chromedriver (scripts/test installs them). Each page's screenshot is saved,
into $WEB_SCREENSHOTS when set (docs/web.md's come from there), else a temporary folder.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from export_helpers import PII_OFF, read_records, settle, talk
from web_helpers import PASSWORDS, add_test_accounts, serve_on_a_free_port

from botkit.testing import bot_factory

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
XSS = '<script>window.xssRan = 1</script><img src=x onerror="window.xssRan = 2">'
WAIT = 15  # seconds a page may take to show what a step waits for

PAIRS = {
    "What is a mutex?": "A lock that one task holds at a time.",
    "How do I rotate the staging keys?": "Run the rotate script.",
    "What does 50% off_sale mean?": "Half price.",
    XSS: f"You sent {XSS}",
}


@dataclass(frozen=True)
class Site:
    url: str
    config: Path
    data: Path
    shots: Path


def seed_config(data: Path) -> dict:
    return {"storage": {"data_dir": str(data)}, "plugins": {"moderation": {"input_actions": PII_OFF, "output_actions": PII_OFF}}}


def served_site(tmp_path_factory, name: str, fill: Callable[[Any], Awaitable[None]]) -> Iterator[Site]:
    """`botkit web` (a process) on a fresh SQLite database that ``fill(bot)`` seeds, with the test accounts."""
    root = tmp_path_factory.mktemp(name)
    data = root / "data"
    config = root / "config.toml"
    config.write_text(f'[backend]\ntype = "scripted"\n[storage]\ndata_dir = "{data}"\n', encoding="utf-8")

    async def seed() -> None:
        async with bot_factory(tmp_path_factory)(seed_config(data)) as bot:
            await fill(bot)
            await settle(bot)
            await add_test_accounts(bot)

    asyncio.run(seed())
    shots = Path(os.environ.get("WEB_SCREENSHOTS") or root / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    server, url = serve_on_a_free_port(config)
    try:
        yield Site(url, config, data, shots)
    finally:
        server.terminate()
        server.communicate(timeout=30)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    async def fill(bot) -> None:
        for question, answer in PAIRS.items():
            await talk(bot, question, answer, user="dana", channel="support")

    yield from served_site(tmp_path_factory, "web-site", fill)


@pytest.fixture(scope="module")
def browser():
    for program in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(program):
            raise RuntimeError(f"{program} is missing: `apt-get install chromium chromium-driver` (scripts/test does this)")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def wait_for(browser, condition):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT).until(condition)


def log_in(browser, site: Site, name: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown

    browser.get(f"{site.url}/login")
    browser.delete_all_cookies()
    browser.get(f"{site.url}/login")
    browser.find_element(By.NAME, "name").send_keys(name)
    browser.find_element(By.NAME, "password").send_keys(PASSWORDS[name])
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait_for(browser, shown.url_to_be(f"{site.url}/"))


def shoot(browser, site: Site, name: str) -> None:
    browser.save_screenshot(str(site.shots / f"{name}.png"))


def test_log_in_and_every_page_shows(browser, site):
    from selenium.webdriver.common.by import By

    browser.get(f"{site.url}/login")
    shoot(browser, site, "login")
    log_in(browser, site, "alice")
    assert "alice (admin)" in browser.find_element(By.CSS_SELECTOR, "header .logout").text
    for path, name, heading in (
        ("/", "home", "botkit console"),
        ("/review", "review", "Review queue"),
        ("/review/export-counts", "export-counts", "What the export would keep"),
        ("/conversations?channel=support", "conversations", "Conversations"),
        ("/plugins", "plugins", "Plugins"),
        ("/audit", "audit", "Audit log"),
    ):
        browser.get(site.url + path)
        assert browser.find_element(By.TAG_NAME, "h1").text == heading
        shoot(browser, site, name)


def test_search_a_conversation_and_read_its_thread(browser, site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown

    log_in(browser, site, "rita")
    browser.get(f"{site.url}/conversations")
    field = browser.find_element(By.NAME, "text")
    field.send_keys("50% OFF_")
    field.submit()
    wait_for(browser, shown.url_contains("text=50%25+OFF_"))
    rows = browser.find_elements(By.CSS_SELECTOR, "table.results tbody tr")
    assert [row.find_element(By.CSS_SELECTOR, "td.text").text for row in rows] == ["What does 50% off_sale mean?"]
    rows[0].find_element(By.TAG_NAME, "a").click()
    wait_for(browser, shown.url_contains("/conversations/"))
    thread = browser.find_element(By.TAG_NAME, "main").text
    assert "What does 50% off_sale mean?" in thread and "Half price." in thread
    assert "status completed" in thread
    shoot(browser, site, "thread")


def test_markup_in_messages_stays_text_and_never_runs(browser, site):
    from selenium.webdriver.common.by import By

    log_in(browser, site, "alice")
    for path in ("/review?state=all", "/conversations?text=xssRan"):
        browser.get(site.url + path)
        assert browser.execute_script("return window.xssRan") is None
        assert "<script>window.xssRan = 1</script>" in browser.find_element(By.TAG_NAME, "main").text
    browser.find_element(By.CSS_SELECTOR, "table.results a").click()
    assert browser.execute_script("return window.xssRan") is None
    assert f"You sent {XSS}" in browser.find_element(By.TAG_NAME, "main").text


def test_correct_an_answer_with_the_keyboard_and_the_next_export_has_it(browser, site, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as shown

    log_in(browser, site, "rita")
    browser.get(f"{site.url}/review?state=pending")
    first = browser.find_element(By.CSS_SELECTOR, "[data-candidate]")
    assert first.get_attribute("data-selected") is not None  # the shortcuts' script ran
    question = first.find_element(By.CSS_SELECTOR, "p .text").text
    correction = f"The corrected answer to: {question}"
    keys = ActionChains(browser)
    keys.send_keys("e").pause(0).send_keys(correction).key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(Keys.CONTROL)
    keys.perform()
    wait_for(browser, shown.url_contains("corrected"))
    assert "corrected" in browser.find_element(By.CSS_SELECTOR, "[role=status]").text
    shoot(browser, site, "review-corrected")

    out = tmp_path / "export"
    exported = subprocess.run(
        [sys.executable, "-m", "botkit", "-c", str(site.config), "export", "--out", str(out),
         "--format", "alpaca-jsonl", "--validation-fraction", "0"],
        capture_output=True, text=True, timeout=120,
        env={key: value for key, value in os.environ.items() if not key.startswith("BOTKIT_")},
    )
    assert exported.returncode == 0, exported.stderr
    outputs = {r["instruction"]: r["output"] for r in read_records(out / "alpaca-jsonl" / "train.jsonl")}
    assert outputs[question] == correction


async def test_switch_a_plugin_off_and_the_bot_refuses_its_commands(browser, site, make_bot):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown

    log_in(browser, site, "alice")
    browser.get(f"{site.url}/plugins")
    browser.find_element(By.CSS_SELECTOR, '#plugin-privacy button[value="disable"]').click()
    wait_for(browser, shown.url_contains("done="))
    row = browser.find_element(By.ID, "plugin-privacy").text
    assert "switched by an admin (stored)" in row
    async with make_bot(seed_config(site.data)) as bot:
        refused = await bot.chat.say("/optout", user="dana")
    assert refused.texts == ["Unknown command /optout. Type /help to see the commands."]

    browser.find_element(By.CSS_SELECTOR, '#plugin-privacy button[value="clear"]').click()
    wait_for(browser, shown.url_contains("clear"))
    async with make_bot(seed_config(site.data)) as bot:
        answered = await bot.chat.say("/optout", user="dana")
    assert answered.texts[0].startswith("Done:")
    browser.get(f"{site.url}/audit")
    log = browser.find_element(By.TAG_NAME, "tbody").text
    assert "alice plugin.clear privacy" in log and "alice plugin.disable privacy" in log
    assert "rita review.correct" in log
    shoot(browser, site, "audit")  # again, now that it has more to show
