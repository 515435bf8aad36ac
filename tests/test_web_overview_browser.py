"""The overview in a real browser (Debian's chromium, headless, through selenium) against `botkit web` beside `botkit run`.

The database is seeded with activity two hours back (so that the hour and the day it
falls in stay the same whenever the page is read within this run), and a bot runs beside
the console on the same database, with its control socket and metrics, so that the page
shows a real running bot: its backend, its console adapter, and the one message its
rate limit refused. The page is saved as overview.png ($WEB_SCREENSHOTS, as in
test_web_browser.py).
"""

from __future__ import annotations

import asyncio
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import test_web_browser
from overview_seed import seed_rows
from servers import wait_until_ready
from test_web_browser import Site, log_in, shoot
from web_helpers import add_test_accounts, serve_on_a_free_port

from botkit.control import request_sync
from botkit.errors import BotkitError
from botkit.storage import utcnow
from botkit.testing import bot_factory

WAIT = 30  # seconds the bot may take to answer a line
browser = test_web_browser.browser  # a chromium of this module's own, started as test_web_browser.py starts it


@dataclass(frozen=True)
class Overview(Site):
    socket: Path


def seeded_activity() -> tuple[list, list, list]:
    """Two hours back: 3 messages, 2 replies, 2 👍 and 1 👎, 3 moderation events; other hours and days answered
    in full (as many replies as messages), so that the hour two back is the only one of its kind."""
    now = utcnow()
    busy = now - timedelta(hours=2)
    messages = [(busy, "user")] * 3 + [(busy, "assistant")] * 2
    for hours_back in range(3, 24):
        count = (hours_back * 7) % 5
        messages += [
            (now - timedelta(hours=hours_back), role) for role in ("user", "assistant") for _ in range(count)
        ]
    for days_back in range(1, 7):
        count = 4 + (days_back * 3) % 7
        messages += [
            (now - timedelta(days=days_back, hours=1), role)
            for role in ("user", "assistant")
            for _ in range(count)
        ]
    feedback = [(busy, "reaction", 1), (busy, "reaction", 1), (busy, "reaction", -1)]
    feedback += [
        (now - timedelta(days=days_back), "reaction", 1 if days_back % 3 else -1) for days_back in range(1, 7)
    ]
    moderation = [(busy, "block", "email"), (busy, "block", "email"), (busy, "flag", "injection")]
    moderation += [(now - timedelta(days=3), "redact", "phone")]
    return messages, feedback, moderation


class Lines:
    """A process's stdout, line by line, read by a thread: ``wait_for(text)`` waits with a deadline."""

    def __init__(self, stream) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in stream], daemon=True).start()

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + WAIT
        while True:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if text in line:
                return


@pytest.fixture(scope="module")
def overview_site(tmp_path_factory) -> Overview:
    root = tmp_path_factory.mktemp("overview-site")
    data, socket = root / "data", root / "bot.sock"
    config = root / "config.toml"
    config.write_text(
        f'[bot]\ncontrol_socket = "{socket}"\n[backend]\ntype = "scripted"\ndefault_reply = "scripted answer"\n'
        f'[storage]\ndata_dir = "{data}"\n[metrics]\nenabled = true\nlisten = "127.0.0.1:0"\n'
        '[plugins.ratelimit]\nper_user = "1/hour"\n',
        encoding="utf-8",
    )

    async def seed() -> None:
        async with bot_factory(tmp_path_factory)({"storage": {"data_dir": str(data)}}) as bot:
            await seed_rows(bot.db, *seeded_activity())
            await add_test_accounts(bot)

    asyncio.run(seed())
    environment = {key: value for key, value in os.environ.items() if not key.startswith("BOTKIT_")}
    bot = subprocess.Popen(
        [sys.executable, "-m", "botkit", "-c", str(config), "run"],  # the console adapter alone
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=environment,
    )  # fmt: skip
    server = None
    try:

        def answers() -> bool:
            assert bot.poll() is None, "botkit run stopped"
            try:
                return bool(request_sync(socket, {"command": "status"}, timeout=2)["ok"])
            except BotkitError:
                return False

        wait_until_ready(answers, "botkit run")
        said = Lines(bot.stdout)
        for line in ("hello", "hello again"):  # the second is over the rate limit
            bot.stdin.write(f"{line}\n")
            bot.stdin.flush()
        said.wait_for("scripted answer")
        said.wait_for("faster than I can take them")
        server, url = serve_on_a_free_port(config)
        shots = Path(os.environ.get("WEB_SCREENSHOTS") or root / "screenshots")
        shots.mkdir(parents=True, exist_ok=True)
        yield Overview(url, config, data, shots, socket)
    finally:
        if server is not None:
            server.terminate()
            server.communicate(timeout=30)
        bot.stdin.close()
        bot.wait(timeout=60)


def bar_titles(browser, chart: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [
        title.get_attribute("textContent")
        for title in browser.find_elements(By.CSS_SELECTOR, f"#chart-{chart} g.bar > title")
    ]


def test_an_admin_sees_the_running_bot_and_the_charts_show_the_stored_numbers(browser, overview_site):
    from selenium.webdriver.common.by import By

    site = overview_site
    log_in(browser, site, "alice")
    main = browser.find_element(By.TAG_NAME, "main")
    assert browser.find_element(By.TAG_NAME, "h1").text == "botkit console"
    assert browser.find_element(By.CSS_SELECTOR, ".overview h2").text == "Overview"

    hours = bar_titles(browser, "hours-messages")
    assert len(hours) == 24
    busy = [title for title in hours if title.endswith("UTC: 3 messages, 2 replies")]
    assert len(busy) == 1
    # The bar of 3 messages is drawn to the scale of the y axis.
    bars = browser.find_elements(By.CSS_SELECTOR, "#chart-hours-messages g.bar")
    drawn = bars[hours.index(busy[0])].find_element(By.CSS_SELECTOR, "rect.bar-messages")
    top = int(browser.find_element(By.CSS_SELECTOR, "#chart-hours-messages svg text.axis-label").text)
    axes = browser.find_elements(By.CSS_SELECTOR, "#chart-hours-messages svg line.axis")
    plot = float(axes[1].get_attribute("y1")) - float(axes[0].get_attribute("y1"))  # from the top line to 0
    assert float(drawn.get_attribute("height")) == pytest.approx(plot * 3 / top, abs=0.1)
    assert drawn.size["height"] > 0

    votes = bar_titles(browser, "hours-votes")
    assert any(title.endswith("UTC: 2 up, 1 down (33% down)") for title in votes)
    moderation = bar_titles(browser, "moderation")
    assert len(moderation) == 7
    assert any(title.endswith("(block email 2, flag injection 1)") for title in moderation)

    # The same numbers as a table, for whoever cannot see the bars.
    figure = browser.find_element(By.ID, "chart-moderation")
    figure.find_element(By.TAG_NAME, "summary").click()
    assert "block email 2, flag injection 1" in figure.find_element(By.CSS_SELECTOR, "table.numbers").text

    # The bot beside the console, through its control socket.
    assert f"(control socket {site.socket}): ready" in browser.find_element(By.ID, "live-source").text
    assert "scripted" in browser.find_element(By.ID, "backends").text
    assert "console connected" in browser.find_element(By.ID, "adapters").text
    refusals = browser.find_element(By.ID, "refusals").text
    assert "Since the running bot started: 1 (user 1)" in refusals
    assert "up to date" in browser.find_element(By.ID, "database").text
    assert (
        "Rows" in main.text and "nothing waits for the database" in browser.find_element(By.ID, "spool").text
    )

    figure.find_element(By.TAG_NAME, "summary").click()  # folded again for the picture
    browser.execute_script("window.scrollTo(0, 0)")
    height = browser.execute_script("return document.documentElement.scrollHeight")
    size = browser.get_window_size()
    browser.set_window_size(size["width"], height + 120)
    try:
        shoot(browser, site, "overview")
    finally:
        browser.set_window_size(size["width"], size["height"])


def test_a_reviewer_sees_the_activity_and_not_the_bot_or_the_database(browser, overview_site):
    from selenium.webdriver.common.by import By

    log_in(browser, overview_site, "rita")
    assert len(bar_titles(browser, "days-messages")) == 7
    text = browser.find_element(By.TAG_NAME, "main").text
    assert "Activity" in text
    for admins_only in ("Running bot", "Rate-limit refusals", "Database", "Spool"):
        assert admins_only not in text
