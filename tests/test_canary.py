"""Canary rollouts: the statistics, the sticky arm of a conversation, routing, storage and auto-rollback."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from botkit.canary import (
    CANARY,
    CONTROL,
    PROMOTED,
    ROLLED_BACK,
    Canaries,
    CanaryError,
    arm_for,
    report_lines,
)
from botkit.canary_stats import normal_cdf, two_proportion_test, wilson_interval
from botkit.control import ControlServer
from botkit.finetune.plugin import WATCH
from botkit.plugins.feedback import recorder
from botkit.plugins.memory import memory
from botkit.storage import CanaryRecord, MessageRecord
from botkit.testing import WAIT_TIMEOUT, eventually

LORAS = {"backend": {"type": "scripted", "loras": {"v1": "adapters/v1.gguf", "v2": "adapters/v2.gguf"}}}
# The watch looks often, so that a test sees its rollback soon; a test that must not race it turns it off.
WATCH_OFTEN = {"finetune": {"canary": {"check_interval": 0.2, "min_votes": 30, "alpha": 0.01}}}
NO_AUTO_ROLLBACK = {"finetune": {"canary": {"auto_rollback": False, "check_interval": 3600}}}


# -- statistics, against values computed by hand and published tables


def test_wilson_interval_matches_the_published_values():
    low, high = wilson_interval(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)
    low, high = wilson_interval(0, 10)  # stays inside [0, 1] where p ± z·se would not
    assert low == 0.0 and round(high, 4) == 0.2775
    low, high = wilson_interval(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    assert wilson_interval(0, 0) == (0.0, 1.0)  # no votes: nothing is known


def test_wilson_interval_refuses_impossible_counts():
    with pytest.raises(ValueError, match="between 0 and trials"):
        wilson_interval(11, 10)


def test_two_proportion_test_matches_a_hand_computed_case():
    # 60/100 against 40/100: pooled p = 0.5, se = sqrt(0.25 * 0.02), z = 0.2 / se = 2·√2.
    test = two_proportion_test(60, 100, 40, 100)
    assert test is not None
    assert test.z == pytest.approx(2 * math.sqrt(2))
    assert test.p_value == pytest.approx(0.0046777, abs=1e-6)
    assert test.p_greater == pytest.approx(0.0023389, abs=1e-6)
    reverse = two_proportion_test(40, 100, 60, 100)
    assert reverse is not None and reverse.z == pytest.approx(-test.z)
    assert reverse.p_greater == pytest.approx(1 - test.p_greater)


def test_two_proportion_test_is_none_without_data_to_judge():
    assert two_proportion_test(0, 0, 3, 10) is None  # an arm without votes
    assert two_proportion_test(0, 10, 0, 20) is None  # no variance: both 0
    assert two_proportion_test(10, 10, 20, 20) is None  # both 1


def test_normal_cdf_known_points():
    assert normal_cdf(0) == 0.5
    assert normal_cdf(1.959963984540054) == pytest.approx(0.975)
    assert normal_cdf(-1.6448536) == pytest.approx(0.05)


# -- the arm of a conversation


def test_the_arm_is_sticky_and_takes_about_its_share():
    keys = [f"discord:{n}" for n in range(20_000)]
    arms = [arm_for(key, 10, "canary-1") for key in keys]
    assert arms == [arm_for(key, 10, "canary-1") for key in keys]  # the same key, the same arm
    share = arms.count(CANARY) / len(keys)
    assert 0.09 < share < 0.11
    # Another rollout (another salt) draws other conversations, in about the same number.
    other = [arm_for(key, 10, "canary-2") for key in keys]
    assert other != arms and 0.09 < other.count(CANARY) / len(keys) < 0.11
    # A larger share keeps every canary conversation of the smaller one on the canary.
    wider = [arm_for(key, 30, "canary-1") for key in keys]
    assert all(w == CANARY for a, w in zip(arms, wider, strict=True) if a == CANARY)


# -- refusals


async def test_a_backend_that_cannot_run_two_adapters_side_by_side_is_refused(make_bot):
    async with make_bot() as bot:  # the scripted backend without loras
        with pytest.raises(CanaryError, match="cannot run two LoRA adapters side by side.*loras"):
            await bot.start_canary("default", "v2", 10)
        assert bot.canaries.plans == []


async def test_an_unknown_adapter_a_bad_share_and_a_second_canary_are_refused(make_bot):
    async with make_bot(LORAS) as bot:
        with pytest.raises(CanaryError, match="no LoRA adapter 'v3'; its LoRA adapters: v1, v2"):
            await bot.start_canary("default", "v3", 10)
        with pytest.raises(CanaryError, match="above 0 and below 100, not 100"):
            await bot.start_canary("default", "v2", 100)
        await bot.start_canary("default", "v2", 10)
        with pytest.raises(CanaryError, match="is running already: promote or roll it back first"):
            await bot.start_canary("default", "v1", 10)


# -- routing, storage, promote and rollback


async def stored_replies(bot) -> list[tuple[str | None, str | None, str]]:
    """(arm, adapter, channel) of every stored reply, oldest first."""
    assert await memory(bot).flush(WAIT_TIMEOUT), "memory writes did not reach the database"
    async with bot.db.sessions() as session:
        rows = await session.execute(
            select(MessageRecord.arm, MessageRecord.adapter, MessageRecord.channel_id)
            .where(MessageRecord.role == "assistant")
            .order_by(MessageRecord.id)
        )
        return [tuple(row) for row in rows]


async def test_each_conversation_keeps_its_arm_and_every_reply_records_it(make_bot):
    async with make_bot({**LORAS, **NO_AUTO_ROLLBACK}) as bot:
        await bot.switch_lora("default", "v1")
        plan = await bot.start_canary("default", "v2", 50)
        keys = []
        for turn in range(2):
            for channel in range(20):
                reply = await bot.chat.say(f"question {turn}", channel=f"c{channel}")
                keys.append(reply.message.conversation_key(bot.settings.bot.conversation_scope))
        replies = await stored_replies(bot)
        used = [request.lora for request in bot.backend.requests]
    assert plan.control_lora == "v1" and plan.canary_lora == "v2"
    assert {arm for arm, _, _ in replies} == {CONTROL, CANARY}
    for (arm, adapter, _), lora, key in zip(replies, used, keys, strict=True):
        assert adapter == lora == ("v2" if arm == CANARY else "v1")  # the backend got the arm's adapter
        assert arm == plan.arm(key)
    by_channel = {channel: arm for arm, _, channel in replies[:20]}
    assert by_channel == {channel: arm for arm, _, channel in replies[20:]}  # sticky across turns


async def test_a_place_that_names_its_adapter_stays_out_of_the_canary(make_bot):
    config = {**LORAS, **NO_AUTO_ROLLBACK, "overrides": {"test:pinned": {"lora": "v1"}}}
    async with make_bot(config) as bot:
        await bot.start_canary("default", "v2", 99.99)
        await bot.chat.say("hi", channel="pinned")
        await bot.chat.say("hi", channel="other")
        replies = await stored_replies(bot)
    assert replies == [(None, "v1", "pinned"), (CANARY, "v2", "other")]


async def test_the_canary_survives_a_restart(make_bot, tmp_path):
    config = {**LORAS, **NO_AUTO_ROLLBACK, "storage": {"data_dir": str(tmp_path / "data")}}
    async with make_bot(config) as bot:
        plan = await bot.start_canary("default", "v2", 25)
    async with make_bot(config) as bot:
        assert bot.canaries.plan_for("default") == plan
        reply = await bot.chat.say("hi", channel="c1")
        key = reply.message.conversation_key(bot.settings.bot.conversation_scope)
        assert (await stored_replies(bot))[0][0] == plan.arm(key)


async def test_promote_from_elsewhere_switches_everyone_without_a_restart(make_bot):
    async with make_bot({**LORAS, **NO_AUTO_ROLLBACK}) as bot:
        await bot.switch_lora("default", "v1")
        await bot.start_canary("default", "v2", 50)
        # Another replica (or the CLI) on the same database promotes it; this bot takes it at its next look.
        elsewhere = Canaries(bot.db)
        await elsewhere.end("default", PROMOTED, "looks good")
        notes = await bot.refresh_canaries()
        for channel in range(10):
            await bot.chat.say("hi", channel=f"c{channel}")
        replies = await stored_replies(bot)
    assert notes == [
        "canary 1 on backend 'default': 50% of conversations get LoRA adapter 'v2', the rest v1: promoted"
    ]
    assert bot.backend.active_lora == "v2"
    assert replies == [(None, "v2", f"c{channel}") for channel in range(10)]


async def test_rollback_switches_everyone_back_to_the_control(make_bot):
    async with make_bot({**LORAS, **NO_AUTO_ROLLBACK}) as bot:
        await bot.switch_lora("default", "v1")
        await bot.start_canary("default", "v2", 99.99)
        note = await bot.end_canary("default", ROLLED_BACK, "by hand")
        await bot.chat.say("hi")
        replies = await stored_replies(bot)
        async with bot.db.sessions() as session:
            row = await session.scalar(select(CanaryRecord))
    assert note.endswith("rolled back (by hand), everyone gets v1 now")
    assert replies == [(None, "v1", "general")]
    assert (row.outcome, row.reason) == (ROLLED_BACK, "by hand") and row.ended_at is not None


# -- the 200-conversation rollout


async def converse(bot, conversations: int, dislike: dict[str, int]) -> None:
    """One question per conversation, each reply rated; ``dislike[adapter]`` in ten of an adapter's replies get 👎."""
    rated = {adapter: 0 for adapter in dislike}
    for n in range(conversations):
        reply = await bot.chat.say("How do I reset my password?", channel=f"c{n}")
        adapter = bot.backend.requests[-1].lora  # what the model really answered with
        negative = rated[adapter] % 10 < dislike[adapter]
        rated[adapter] += 1
        await bot.chat.react(reply, "👎" if negative else "👍", user=f"voter{n}")
    assert await recorder(bot).settle(WAIT_TIMEOUT)


async def test_a_canary_users_dislike_is_rolled_back_automatically(make_bot):
    async with make_bot({**LORAS, **WATCH_OFTEN, "metrics": {"enabled": True}}) as bot:
        await bot.switch_lora("default", "v1")
        plan = await bot.start_canary("default", "v2", 50)
        await converse(bot, 200, dislike={"v1": 2, "v2": 6})
        await eventually(
            lambda: bot.canaries.plan_for("default") is None, what="the canary to be rolled back"
        )
        async with bot.db.sessions() as session:
            row = await session.scalar(select(CanaryRecord))
        results = await bot.canaries.results(plan)
        replies = await stored_replies(bot)
        await bot.chat.say("and now?", channel="c0")
        body, _ = bot.metrics.exposition()
    assert row.outcome == ROLLED_BACK and row.reason.startswith("auto_rollback: 👎 rate")
    assert bot.backend.active_lora == "v1"
    assert bot.backend.requests[-1].lora == "v1"  # a canary conversation is back on the control
    canary, control = results.canary, results.control
    assert canary.votes >= 30 and control.votes >= 30
    assert canary.negative_rate > 0.5 > 0.3 > control.negative_rate
    assert {arm for arm, _, _ in replies if arm} == {CONTROL, CANARY}
    counted = {
        sample.labels["arm"]: sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "botkit_canary_replies_total" and sample.labels["status"] == "completed"
    }
    assert counted == {CONTROL: control.replies, CANARY: canary.replies}
    lines = report_lines(results)
    assert "👎" in lines[1] and "95% CI" in lines[2] and "that the canary's is higher" in lines[3]


async def test_a_canary_as_good_as_the_control_keeps_running(make_bot):
    async with make_bot({**LORAS, "finetune": {"canary": {"check_interval": 3600, "min_votes": 30}}}) as bot:
        await bot.switch_lora("default", "v1")
        await bot.start_canary("default", "v2", 50)
        await converse(bot, 80, dislike={"v1": 3, "v2": 3})
        notes = await bot.state.require(WATCH).check()
        assert notes == []
        assert bot.canaries.plan_for("default") is not None


async def test_admins_see_and_end_a_canary_with_the_canary_command(make_bot):
    async with make_bot({**LORAS, **NO_AUTO_ROLLBACK}) as bot:
        await bot.switch_lora("default", "v1")
        await bot.start_canary("default", "v2", 50)
        refused = await bot.chat.say("/canary rollback", user="mallory")
        shown = await bot.chat.say("/canary", user="admin")
        ended = await bot.chat.say("/canary rollback", user="admin")
        again = await bot.chat.say("/canary rollback", user="admin")
        none = await bot.chat.say("/canary", user="admin")
    assert refused.texts == ["Sorry, /canary is for admins only."]
    assert (
        shown.texts[0]
        .splitlines()[0]
        .startswith(
            "canary 1 on backend 'default': 50% of conversations get LoRA adapter 'v2', the rest v1, since "
        )
    )
    assert "control  0 replies" in shown.texts[0] and "not testable yet" in shown.texts[0]
    assert ended.texts[0].endswith("rolled back (rollback by admin test:admin), everyone gets v1 now")
    assert again.texts == ["Canary not ended: no canary is running on backend 'default'"]
    assert none.texts == ["no canary is running"]
    assert bot.backend.active_lora == "v1"


# -- the control socket and the command line


async def test_the_control_socket_starts_reports_and_promotes_a_canary(make_bot):
    async with make_bot({**LORAS, **NO_AUTO_ROLLBACK}) as bot:
        control = ControlServer(bot, exclusive=False)
        refused = await control.run_command("canary", request={"action": "start", "lora": "v9", "share": 10})
        bad = await control.run_command("canary", request={"action": "start", "lora": "v2"})
        started = await control.run_command("canary", request={"action": "start", "lora": "v2", "share": 10})
        report = await control.run_command("canary", request={"action": "status"})
        promoted = await control.run_command("canary", request={"action": "promote"})
    assert refused == {
        "ok": False,
        "error": "backend 'default' has no LoRA adapter 'v9'; its LoRA adapters: "
        "v1, v2 (name the new adapter in [backend] loras and reload)",
    }
    assert bad["ok"] is False and '"share" (percent)' in bad["error"]
    assert started == {
        "ok": True,
        "notes": [
            "canary 1 on backend 'default': 10% of conversations get LoRA adapter 'v2', the rest the base model"
        ],
    }
    assert report["ok"] and report["report"][0].startswith("canary 1 on backend 'default'")
    assert promoted["ok"] and promoted["notes"][0].endswith("promoted, everyone gets LoRA adapter 'v2' now")
    assert bot.backend.active_lora == "v2"


def botkit_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "botkit", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


async def test_the_command_line_shows_the_results_and_rolls_back_without_a_running_bot(make_bot, tmp_path):
    data = tmp_path / "data"
    config = tmp_path / "config.toml"
    config.write_text(
        '[backend]\ntype = "scripted"\nloras = { v1 = "v1.gguf", v2 = "v2.gguf" }\n'
        f'[storage]\ndata_dir = "{data}"\n[bot]\ncontrol_socket = "off"\n',
        encoding="utf-8",
    )
    async with make_bot({**LORAS, **NO_AUTO_ROLLBACK, "storage": {"data_dir": str(data)}}) as bot:
        await bot.start_canary("default", "v2", 50)
        await converse(bot, 10, dislike={None: 0, "v2": 10})
        await memory(bot).flush(WAIT_TIMEOUT)
        results = await bot.canaries.results(bot.canaries.plans[0])
        status = await asyncio.to_thread(
            botkit_cli, "-c", str(config), "finetune", "canary", "status", cwd=tmp_path
        )
        start = await asyncio.to_thread(
            botkit_cli, "-c", str(config), "finetune", "canary", "start", "v2", "--share", "5", cwd=tmp_path
        )
        rollback = await asyncio.to_thread(
            botkit_cli,
            "-c",
            str(config),
            "finetune",
            "canary",
            "rollback",
            "--reason",
            "too many 👎",
            cwd=tmp_path,
        )
        notes = await bot.refresh_canaries()  # as the running bot's watch would, at its next look
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines() == report_lines(results)
    assert f"👎 {results.canary.negative} (100.0%)" in status.stdout
    assert start.returncode == 1
    assert "no running bot answered" in start.stderr and "start the bot, then run this again" in start.stderr
    assert rollback.returncode == 0, rollback.stderr
    assert "rolled_back in the database; no running bot answered" in rollback.stdout
    assert "a running bot takes it within [finetune.canary] check_interval" in rollback.stdout
    assert notes == [
        "canary 1 on backend 'default': 50% of conversations get LoRA adapter 'v2', the rest the base model: rolled_back"
    ]
    assert bot.canaries.plans == []


async def test_of_two_endings_at_once_only_the_first_counts(make_bot):
    async with make_bot({**LORAS, **NO_AUTO_ROLLBACK}) as bot:
        await bot.switch_lora("default", "v1")
        await bot.start_canary("default", "v2", 50)
        replica = Canaries(bot.db)
        await replica.refresh()  # another replica saw the canary running
        await bot.end_canary("default", ROLLED_BACK, "auto_rollback")
        with pytest.raises(CanaryError, match="no canary is running on backend 'default'"):
            await replica.end("default", PROMOTED, "an admin, a moment later")
        async with bot.db.sessions() as session:
            row = await session.scalar(select(CanaryRecord))
    assert row.outcome == ROLLED_BACK
    assert bot.backend.active_lora == "v1"
