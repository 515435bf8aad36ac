"""The overview's numbers (botkit.overview, botkit.overview_live): exact bucket counts on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from overview_seed import NOW, at, seed_overview

from botkit.overview import (
    activity,
    by_day,
    database_state,
    days_of_the_week,
    hours_of_the_week,
    moderation_per_day,
)
from botkit.overview_live import NOT_KNOWN, live_from_answers, live_state, read_overview, spool_state


def test_the_windows_end_with_the_bucket_that_holds_now():
    hours = hours_of_the_week(NOW)
    assert hours.start == at(14, 0) and hours.count == 6 * 24 + 16 and hours.end == at(20, 16)
    days = days_of_the_week(NOW)
    assert days.start == at(14, 0) and days.count == 7 and days.end == at(21, 0)
    # A moment given in another zone is the same moment.
    from datetime import timedelta, timezone

    assert hours_of_the_week(NOW.astimezone(timezone(timedelta(hours=-8)))) == hours


async def test_messages_and_votes_per_hour_and_per_day(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        await seed_overview(bot.db)
        hours = await activity(bot.db, hours_of_the_week(NOW))
    last_24 = hours[-24:]
    assert last_24[0].start == at(19, 16) and last_24[-1].start == at(20, 15)
    counted = {
        bucket.start: (bucket.messages, bucket.replies, bucket.positive, bucket.negative) for bucket in hours
    }
    assert {start: counts for start, counts in counted.items() if counts != (0, 0, 0, 0)} == {
        at(20, 15): (3, 2, 2, 1),
        at(20, 14): (1, 0, 0, 0),
        at(19, 16): (2, 0, 0, 0),
        at(19, 15): (1, 0, 0, 0),
        at(18, 9): (0, 0, 0, 1),
        at(14, 0): (0, 1, 0, 0),
    }
    assert last_24[-1].negative_rate == pytest.approx(1 / 3)
    assert last_24[0].negative_rate is None
    days = by_day(hours)
    assert [day.start for day in days] == [at(day, 0) for day in range(14, 21)]
    assert [(day.messages, day.replies, day.positive, day.negative) for day in days] == [
        (0, 1, 0, 0),
        (0, 0, 0, 0),
        (0, 0, 0, 0),
        (0, 0, 0, 0),
        (0, 0, 0, 1),
        (3, 0, 0, 0),
        (4, 2, 2, 1),
    ]


async def test_moderation_events_per_day_by_action_and_category(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        await seed_overview(bot.db)
        days = await moderation_per_day(bot.db, days_of_the_week(NOW))
    assert [day.total for day in days] == [0, 0, 0, 0, 1, 0, 3]
    assert days[-1].counts == {("block", "email"): 2, ("flag", "injection"): 1}
    assert days[-1].by_action() == {"block": 2, "flag": 1}
    assert days[4].counts == {("redact", "phone"): 1}


async def test_the_database_state_names_the_engine_revision_and_rows(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        await seed_overview(bot.db)
        state = await database_state(bot.db, bot.migrator)
        heads = bot.migrator.heads()
    assert state.up_to_date and set(state.revisions) <= heads and state.revisions
    assert state.size_bytes and state.size_bytes > 0
    if bot.db.is_sqlite:
        assert state.engine == "sqlite" and not state.rows_estimated
        assert state.rows == {
            "messages": 12,
            "conversations": 1,
            "users": 1,
            "feedback": 6,
            "moderation_events": 5,
        }
    else:
        # The planner's estimates: tables never analysed are counted, so these are exact here too.
        assert state.engine == "postgresql" and state.rows_estimated
        assert state.rows["messages"] == 12 and state.rows["moderation_events"] == 5
        assert "password" not in state.url


async def test_beside_no_bot_the_running_state_is_not_known_and_says_why(make_bot, write_config, tmp_path):
    socket = tmp_path / "bot.sock"
    async with make_bot({"bot": {"control_socket": str(socket)}}) as bot:
        live = await live_state(bot, in_process=False)
        assert live.unknown == f"{NOT_KNOWN} (none answers on {socket})"
        assert live.backends == () and live.as_json() == {
            "source": f"control socket {socket}",
            "unknown": live.unknown,
        }
    async with make_bot({"bot": {"control_socket": "off"}}) as bot:
        live = await live_state(bot, in_process=False)
        assert live.unknown == f"{NOT_KNOWN} ([bot] control_socket is off)"


async def test_in_process_the_bot_reports_its_backends_and_metrics(make_bot):
    async with make_bot({"metrics": {"enabled": True}}) as bot:
        bot.metrics.counter("botkit_ratelimit_refusals_total", "", ("scope",)).labels(scope="user").inc(3)
        live = await live_state(bot, in_process=True)
    assert live.unknown is None and live.source == "this process" and live.ready is True
    assert [backend.name for backend in live.backends] == ["default"]
    assert live.backends[0].type == "scripted"
    assert live.metrics_on and live.ratelimit_refusals == {"user": 3}
    assert live.uptime_s is not None and live.uptime_s >= 0


def test_a_status_from_an_older_bot_is_not_known_rather_than_guessed():
    live = live_from_answers("control socket /x", {"ok": True, "pid": 7}, None)
    assert live.unknown is not None and "lacks" in live.unknown
    ready = {"pid": 7, "backends": {}, "readiness": {"ready": True, "checks": {}}}
    garbled = live_from_answers("control socket /x", ready, "this is {not metrics")
    assert garbled.unknown is None and not garbled.metrics_on and garbled.ratelimit_refusals == {}


def test_adapters_come_from_the_readiness_checks_and_metrics_add_up_across_platforms():
    status = {
        "pid": 42,
        "backends": {},
        "readiness": {
            "ready": False,
            "checks": {
                "model": {"ok": True, "detail": "loaded"},
                "adapter:slack": {"ok": True, "detail": "connected"},
                "adapter:discord": {"ok": False, "detail": "not connected"},
            },
        },
    }
    metrics = (
        'botkit_messages_refused_total{platform="slack",reason="ratelimit"} 2.0\n'
        'botkit_messages_refused_total{platform="discord",reason="ratelimit"} 3.0\n'
        'botkit_messages_refused_total{platform="slack",reason="moderation"} 1.0\n'
        'botkit_spool_records{writer="memory"} 4.0\n'
    )
    live = live_from_answers("control socket /x", status, metrics)
    assert [(a.name, a.connected, a.detail) for a in live.adapters] == [
        ("slack", True, "connected"),
        ("discord", False, "not connected"),
    ]
    assert live.ready is False and live.pid == 42
    assert live.refused == {"moderation": 1, "ratelimit": 5} and live.spooled == {"memory": 4}
    assert live.ratelimit_refusals == {}


async def test_the_spool_state_lists_the_journals_and_their_bytes(make_bot, tmp_path):
    async with make_bot({"storage": {"data_dir": str(tmp_path / "data")}}) as bot:
        state = spool_state(bot.settings.storage)
        assert set(state.files) <= {"memory.jsonl"} and state.waiting_bytes == 0  # made at the first write
        (tmp_path / "data" / "spool" / "memory-2.jsonl").write_text('{"left": "by a bot that stopped"}\n')
        state = spool_state(bot.settings.storage)
        assert state.files["memory-2.jsonl"] == 34 and state.waiting_bytes == 34


async def test_a_reviewers_overview_holds_the_activity_only(make_bot):
    async with make_bot() as bot:
        await seed_overview(bot.db)
        seen = await read_overview(bot, NOW, operations=False)
        full = await read_overview(bot, NOW, in_process=True)
    assert seen.database is None and seen.live is None and seen.spool is None
    assert (
        [bucket.messages for bucket in seen.hours][-1] == 3 and len(seen.hours) == 24 and len(seen.days) == 7
    )
    assert full.database is not None and full.live is not None and full.live.source == "this process"
    data = full.as_json()
    assert data["days"][-1] == {
        "start": "2026-11-20T00:00:00+00:00", "messages": 4, "replies": 2, "positive": 2, "negative": 1,
        "negative_rate": pytest.approx(1 / 3),
    }  # fmt: skip
    assert data["ratelimit_refusals_per_day"] is None
    assert datetime.fromisoformat(data["now"]) == NOW.astimezone(UTC)


@pytest.fixture
def seeded_config(tmp_path):
    """A config.toml on a SQLite database holding the seeded rows (no bot runs: its control socket is free)."""
    config = tmp_path / "config.toml"
    data = tmp_path / "data"
    config.write_text(
        f'[bot]\ncontrol_socket = "{tmp_path / "bot.sock"}"\n[backend]\ntype = "scripted"\n'
        f'[storage]\ndata_dir = "{data}"\n',
        encoding="utf-8",
    )
    return config


async def seed_config_database(config):
    from botkit.ops import load_bot, load_settings

    bot = load_bot(load_settings(config))
    await bot.db.connect()
    try:
        await bot.migrator.upgrade()
        await seed_overview(bot.db)
    finally:
        await bot.db.close()


def section(lines: list[str], title: str) -> list[str]:
    """The lines under ``title`` up to the next blank line."""
    start = lines.index(title) + 1
    end = lines.index("", start) if "" in lines[start:] else len(lines)
    return lines[start:end]


async def test_botkit_overview_prints_the_numbers_as_text_and_json(seeded_config, tmp_path):
    from click.testing import CliRunner

    from botkit.cli import create_cli

    await seed_config_database(seeded_config)
    at_option = ["--at", "2026-11-20T15:30"]

    def invoke(*args):
        return CliRunner().invoke(create_cli(), ["-c", str(seeded_config), "overview", *at_option, *args])

    shown = await asyncio.to_thread(invoke)
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0] == "overview at 2026-11-20 15:30 UTC"
    hours = {line[:16].strip(): line[16:].split() for line in section(lines, "last 24 hours (UTC)")[1:]}
    assert len(hours) == 24
    assert hours["11-20 15:00"] == ["3", "2", "2", "1", "33%"]
    assert hours["11-19 16:00"] == ["2", "0", "0", "0", "-"]
    days = {line[:16].strip(): line[16:].split() for line in section(lines, "last 7 days (UTC)")[1:]}
    assert days["2026-11-20"] == ["4", "2", "2", "1", "33%"]
    assert days["2026-11-18"] == ["0", "0", "0", "1", "100%"]
    assert "  2026-11-20  3  (block email 2, flag injection 1)" in lines
    assert f"running bot: {NOT_KNOWN} (none answers on {tmp_path / 'bot.sock'})" in lines
    assert any(line.startswith("rate-limit refusals: not stored per day") for line in lines)
    assert "  rows: messages 12, conversations 1, users 1, feedback 6, moderation_events 5" in lines

    printed = await asyncio.to_thread(invoke, "--json")
    assert printed.exit_code == 0, printed.output
    data = json.loads(printed.output)
    assert [hour["messages"] for hour in data["hours"]][-2:] == [1, 3]
    assert [day["negative"] for day in data["days"]] == [0, 0, 0, 0, 1, 0, 1]
    assert data["moderation"][-1]["events"] == [
        {"action": "block", "category": "email", "count": 2},
        {"action": "flag", "category": "injection", "count": 1},
    ]
    assert data["live"]["unknown"].startswith(NOT_KNOWN) and data["database"]["engine"] == "sqlite"

    wrong = CliRunner().invoke(create_cli(), ["-c", str(seeded_config), "overview", "--at", "yesterday"])
    assert wrong.exit_code == 2 and "give a date and time as YYYY-MM-DDTHH:MM" in wrong.output
