"""The Exports and runs page in a real browser: a seeded export and run, deployed and rolled back through `botkit web`.

As tests/test_web_browser.py: Debian's chromium through selenium, `botkit web` in a process
of its own, screenshots into $WEB_SCREENSHOTS (docs/images/web) or a temporary folder. The
config's backend is the embedded SmolLM2 (llama.cpp), which deploy checks the adapter
against without loading it; no bot runs, so deploy says what the bot does when it starts.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from runs_helpers import real_export, write_run
from test_deploy import adapters  # noqa: F401 - a fixture, used by name
from test_web_browser import Site, browser, log_in, shoot, wait_for  # noqa: F401 - fixtures, used by name
from web_helpers import add_test_accounts, serve_on_a_free_port

from botkit.settings import load_settings
from botkit.testing import bot_factory

CONFIG = """\
[bot]
control_socket = "ctl.sock"

[backend]
type = "llamacpp"   # the embedded SmolLM2, never loaded by `botkit web`

[storage]
data_dir = "state"
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory, adapters) -> Site:  # noqa: F811
    root = tmp_path_factory.mktemp("web-runs")
    config = root / "config.toml"
    config.write_text(CONFIG, encoding="utf-8")

    async def seed() -> None:
        async with bot_factory(tmp_path_factory)({"storage": {"data_dir": str(root / "state")}}) as bot:
            await real_export(bot, root / "data" / "export")
            await add_test_accounts(bot)

    asyncio.run(seed())
    write_run(root / "runs" / "2026-11", root / "data" / "export", adapter=adapters / "good.gguf")
    write_run(root / "runs" / "2026-12", root / "data" / "export", complete=False)
    shots = Path(os.environ.get("WEB_SCREENSHOTS") or root / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    server, url = serve_on_a_free_port(config)
    try:
        yield Site(url, config, root, shots)
    finally:
        server.terminate()
        server.communicate(timeout=30)


def test_a_seeded_run_is_deployed_and_rolled_back_from_the_page(browser, site):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown

    run = site.data / "runs" / "2026-11"
    adapter = run / "adapter.gguf"
    log_in(browser, site, "alice")
    browser.find_element(By.LINK_TEXT, "Exports and runs").click()
    wait_for(browser, shown.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Exports and runs"))
    runs = browser.find_elements(By.CSS_SELECTOR, "tr.run")
    assert sorted(row.find_element(By.TAG_NAME, "strong").text for row in runs) == ["2026-11", "2026-12"]
    page = browser.find_element(By.TAG_NAME, "main").text
    assert "interrupted at step 20 of 30" in page and "2.1333 / 1.9000" in page
    assert "chat/train.jsonl: 3" in page

    row = next(row for row in runs if row.find_element(By.TAG_NAME, "strong").text == "2026-11")
    row.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(browser, shown.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Deploy?"))
    checks = browser.find_element(By.CSS_SELECTOR, "pre.checks").text
    assert f"{adapter}: licence apache-2.0" in checks
    shoot(browser, site, "runs-deploy")
    browser.find_element(By.XPATH, "//button[text()='Deploy']").click()
    wait_for(browser, shown.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Deployed"))
    said = browser.find_element(By.CSS_SELECTOR, "pre.said").text
    assert f'[backend] now has lora_path = "{adapter}"' in said
    assert f"no running bot found at {site.config.parent / 'ctl.sock'}; it loads the adapter when it starts" in said
    assert load_settings(site.config).backend["lora_path"] == str(adapter)

    browser.find_element(By.LINK_TEXT, "Back to exports and runs").click()
    wait_for(browser, shown.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Exports and runs"))
    assert "in use: default" in browser.find_element(By.CSS_SELECTOR, "table.runs").text
    shoot(browser, site, "runs")
    browser.find_element(By.CSS_SELECTOR, "section.export summary").click()
    card = wait_for(browser, shown.visibility_of_element_located((By.CSS_SELECTOR, "section.export pre")))
    assert "# botkit conversation export" in card.text and "## Counts per filter" in card.text

    browser.find_element(By.XPATH, "//button[text()='Roll back']").click()
    wait_for(browser, shown.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Roll back?"))
    browser.find_element(By.XPATH, "//form[@method='post']//button[text()='Roll back']").click()
    wait_for(browser, shown.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Rolled back"))
    assert "[backend] now has no lora_path" in browser.find_element(By.CSS_SELECTOR, "pre.said").text
    assert "lora_path" not in load_settings(site.config).backend
