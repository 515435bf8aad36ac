"""The Exports and runs page: the catalogue of `botkit finetune runs`, and deploy / rollback as the CLI does them."""

from __future__ import annotations

import html
import os
import shutil
from pathlib import Path

import pytest
from runs_helpers import real_export, write_run
from test_deploy import CONFIG, NO_BOT, FakeBot, adapters, config, with_lora  # noqa: F401 - fixtures, used by name
from test_redteam_gate import results
from web_helpers import add_test_accounts, client_for, log_in, page_csrf

from botkit.bot import Bot
from botkit.ops import load_bot
from botkit.settings import load_settings
from botkit.web import audit
from botkit.web.app import create_app
from botkit.web.settings import WebSettings


@pytest.fixture
async def console_bot(config):  # noqa: F811
    """The bot `botkit web --config config.toml` serves: loaded from the file, its database connected."""
    bot = load_bot(load_settings(config))
    await bot.db.connect()
    await bot.migrator.ensure_current(True)
    await add_test_accounts(bot)
    yield bot
    await bot.db.close()


@pytest.fixture
def run(config, adapters) -> Path:  # noqa: F811
    return write_run(config.parent / "runs" / "2026-11", config.parent / "data" / "export", adapter=adapters / "good.gguf")


async def deploy_form(http, run: Path, **extra: str):
    page = await http.get("/runs/deploy", params={"run": str(run)})
    assert page.status_code == 200, page.text
    return page, {"csrf": await page_csrf(http, "/runs"), "run": str(run), "backend": "default", **extra}


async def test_reviewers_may_not_see_or_deploy(console_bot, run):
    async with client_for(create_app(console_bot, WebSettings())) as http:
        await log_in(http, "rita")
        for path in ("/runs", f"/runs/deploy?run={run}", "/runs/rollback"):
            refused = await http.get(path)
            assert refused.status_code == 403 and "this page is for admins" in refused.text
        csrf = await page_csrf(http, "/review")
        assert (await http.post("/runs/deploy", data={"csrf": csrf, "run": str(run)})).status_code == 403
    assert "lora_path" not in load_settings(Path(console_bot.settings.source_path)).backend


async def test_the_page_shows_exports_with_their_card_and_runs_with_their_metrics(console_bot, make_bot, config, run):  # noqa: F811
    async with make_bot() as bot:
        await real_export(bot, config.parent / "data" / "export")
    hostile = config.parent / "data" / "hostile"
    (hostile / "chat").mkdir(parents=True)
    (hostile / "chat" / "train.jsonl").write_text("{}\n", encoding="utf-8")
    (hostile / "README.md").write_text("# botkit conversation export\n<script>alert(1)</script>\n", encoding="utf-8")
    async with client_for(create_app(console_bot, WebSettings())) as http:
        await log_in(http, "alice")
        page = (await http.get("/runs")).text
    assert "<h1>Exports and runs</h1>" in page
    assert "chat/train.jsonl: 3" in page and "## Counts per filter" in page  # the real export's card
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "the dataset card lists no files" in page
    row = page[page.index('<tr class="run">') : page.index("</tr>", page.index('<tr class="run">'))]
    assert "2026-11" in row and "complete" in row and "2.1333 / 1.9000" in row and "2.5000 → 2.2500" in row
    assert f'name="run" value="{run}"' in row and "adapter.gguf" in row
    assert "none (the base model)" in page and f"no running bot found at {config.parent / 'ctl.sock'}" in page


async def test_deploy_shows_the_checks_then_writes_the_config_as_the_cli_does_and_rollback_undoes_it(console_bot, config, run):  # noqa: F811
    adapter = run / "adapter.gguf"
    async with client_for(create_app(console_bot, WebSettings())) as http:
        await log_in(http, "alice")
        confirm, form = await deploy_form(http, run)
        checks = html.unescape(confirm.text)
        assert "a LoRA adapter for 'Smollm2 135M 8k Lc100K Mix1 Ep2' (SmolLM2-135M-Instruct.Q4_1.gguf), the model of [backend]" in checks
        assert f"{adapter}: licence apache-2.0" in checks
        assert (
            f"[finetune.gate]: not checked: no red-team results beside the adapter ({run / 'redteam.json'}), "
            "and required = false"
        ) in checks
        assert config.read_text(encoding="utf-8") == CONFIG  # looking writes nothing

        forged = await http.post("/runs/deploy", data={**form, "csrf": "forged"})
        assert forged.status_code == 403 and config.read_text(encoding="utf-8") == CONFIG

        done = await http.post("/runs/deploy", data=form)
        assert done.status_code == 200, done.text
        said = html.unescape(done.text)
        assert f'{config}: [backend] now has lora_path = "{adapter}"' in said
        assert f"no running bot found at {config.parent / 'ctl.sock'}; {NO_BOT}" in said  # the CLI's words
        assert config.read_text(encoding="utf-8") == with_lora(CONFIG, f'lora_path = "{adapter}"')

        listing = (await http.get("/runs")).text
        assert "in use: default" in listing and "to the base model" in listing
        rollback = await http.get("/runs/rollback", params={"backend": "default"})
        assert "backend default: back to the base model, without adapter" in html.unescape(rollback.text)
        back = await http.post("/runs/rollback", data={"csrf": await page_csrf(http, "/runs"), "backend": "default"})
        assert back.status_code == 200, back.text
        assert f"{config}: [backend] now has no lora_path" in html.unescape(back.text)
        assert config.read_text(encoding="utf-8") == CONFIG
        assert "no deploy recorded to undo" in (await http.get("/runs")).text
    actions = [(entry.action, entry.target) for entry in await audit.recent(console_bot.db)]
    assert actions[:2] == [("finetune.rollback", "default: none"), ("finetune.deploy", f"default: {adapter}")]


async def test_a_gate_refusal_is_shown_and_only_a_ticked_force_deploys(console_bot, config, run):  # noqa: F811
    config.write_text(CONFIG + "\n[finetune.gate]\nmax_drop = 0.0\n", encoding="utf-8")
    results(run, {"injection": 0.5}, {"injection": 0.9})
    before = config.read_text(encoding="utf-8")
    async with client_for(create_app(console_bot, WebSettings())) as http:
        await log_in(http, "alice")
        confirm, form = await deploy_form(http, run)
        assert "the adapter misses [finetune.gate]; nothing was deployed" in confirm.text
        assert 'name="force"' in confirm.text
        assert (
            "[finetune.gate]: no suite more than 0 points under the base model&#39;s, least pass rates: none; "
            f"red-team results: {run / 'redteam.json'}"
        ) in confirm.text
        refused = await http.post("/runs/deploy", data=form)
        assert refused.status_code == 400
        assert "injection: pass rate 50.0% against the base model&#39;s 90.0%" in refused.text
        assert config.read_text(encoding="utf-8") == before
        forced = await http.post("/runs/deploy", data={**form, "force": "on"})
        assert forced.status_code == 200, forced.text
        assert "warning: deploying anyway (--force)" in forced.text
        assert f'lora_path = "{run / "adapter.gguf"}"' in config.read_text(encoding="utf-8")
    actions = [(entry.action, entry.target) for entry in await audit.recent(console_bot.db)]
    assert actions[:2] == [
        ("finetune.deploy", f"default: {run / 'adapter.gguf'} --force"),
        ("finetune.deploy.failed", f"default: {run / 'adapter.gguf'}"),
    ]


async def test_only_a_listed_run_is_deployed(console_bot, config, adapters, tmp_path):  # noqa: F811
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(adapters / "good.gguf", elsewhere / "adapter.gguf")
    (elsewhere / "training.json").write_text("{}", encoding="utf-8")
    async with client_for(create_app(console_bot, WebSettings())) as http:
        await log_in(http, "alice")
        page = await http.get("/runs/deploy", params={"run": str(elsewhere)})
        assert page.status_code == 400
        assert f"{elsewhere}: not a run of the listed folders ([finetune] folders)" in page.text
        refused = await http.post("/runs/deploy", data={"csrf": await page_csrf(http, "/runs"), "run": str(elsewhere)})
        assert refused.status_code == 400
    assert config.read_text(encoding="utf-8") == CONFIG


async def test_inside_the_bot_deploy_asks_the_running_bot_over_its_control_socket(console_bot, config, run):  # noqa: F811
    adapter = run / "adapter.gguf"
    status = {"default": {"type": "llamacpp", "model": "m", "adapter": str(adapter), "adapters": [str(adapter)]}}
    fake = FakeBot(
        config.parent / "ctl.sock",
        {
            "reload": {"ok": True, "notes": [f"backend now answers with LoRA adapter {adapter}"]},
            "status": {"ok": True, "pid": 4711, "backends": status},
        },
    )
    try:
        async with client_for(create_app(console_bot, WebSettings(), live=True)) as http:
            await log_in(http, "alice")
            _, form = await deploy_form(http, run)
            done = html.unescape((await http.post("/runs/deploy", data=form)).text)
    finally:
        fake.shutdown()
        fake.server_close()
    assert "the running bot reloaded its config:" in done
    assert f"backend default of the running bot (pid 4711) now answers with adapter {adapter}" in done
    assert fake.commands[-2:] == ["reload", "status"]


async def test_inside_the_bot_with_its_control_socket_off_deploy_reloads_this_bot(config, run):  # noqa: F811
    # `botkit run` with the console and no control socket: the page asks the bot it runs in.
    config.write_text(CONFIG.replace('control_socket = "ctl.sock"', 'control_socket = "off"'), encoding="utf-8")
    adapter = run / "adapter.gguf"
    bot = Bot.load(load_settings(config))
    await bot.start()
    try:
        await add_test_accounts(bot)
        async with client_for(create_app(bot, WebSettings(), live=True)) as http:
            await log_in(http, "alice")
            before = html.unescape((await http.get("/runs")).text)
            _, form = await deploy_form(http, run)
            done = html.unescape((await http.post("/runs/deploy", data=form)).text)
            after = html.unescape((await http.get("/runs")).text)
        assert bot.backends["default"].summary()["adapter"] == str(adapter)
    finally:
        await bot.stop()
    assert '[bot] control_socket is "off"' not in done, done
    assert "the running bot reloaded its config:" in done
    assert f"backend default of the running bot (pid {os.getpid()}) now answers with adapter {adapter}" in done
    assert f'lora_path = "{adapter}"' in config.read_text(encoding="utf-8")
    # The listing asks this bot too: the base model before, the deployed adapter after.
    assert [running_bot_cell(page) for page in (before, after)] == ["none (the base model)", str(adapter)]


def running_bot_cell(page: str) -> str:
    """The "Running bot" cell of the default backend's row of "Adapter in use"."""
    row = page.split('<tr id="backend-default">')[1].split("</tr>")[0]
    return row.split("<td>")[3].split("</td>")[0].strip()
