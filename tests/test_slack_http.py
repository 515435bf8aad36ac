"""The Slack adapter in HTTP mode: signed Events API requests from the fake Slack to Bolt's own web server."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from fake_slack import FakeSlack, start_slack

from botkit.testing import WAIT_TIMEOUT, eventually


@pytest.fixture
async def slack(make_bot, monkeypatch):
    async with FakeSlack() as fake:
        monkeypatch.setenv("BOTKIT_ADAPTERS__SLACK__BOT_TOKEN", fake.bot_token)
        monkeypatch.setenv("BOTKIT_ADAPTERS__SLACK__SIGNING_SECRET", fake.signing_secret)
        fake.add_user("U1", "alice")
        yield fake


HTTP = {"mode": "http", "host": "127.0.0.1", "port": 0}


def endpoint(adapter) -> str:
    return f"http://127.0.0.1:{adapter.http_port}/slack/events"


def replies(slack: FakeSlack, channel: str, thread_ts: str) -> list[str]:
    return [m["text"] for m in slack.thread(channel, thread_ts) if m.get("bot_id") == slack.bot_id]


async def test_a_request_with_a_bad_signature_is_rejected(make_bot, slack):
    async with start_slack(make_bot, slack, **HTTP) as (bot, adapter):
        forged = slack.mention("C1", "do something bad")
        status, _ = await slack.post_event(endpoint(adapter), forged, secret="not-the-signing-secret")
        assert status == 401
        bot.backend.say("Hello.")
        genuine = slack.mention("C1", "hello")
        status, _ = await slack.post_event(endpoint(adapter), genuine)
        assert status == 200
        await slack.wait_for(lambda: replies(slack, "C1", genuine["ts"]) == ["Hello."])

    assert [p.current.text for p in bot.backend.prompts] == ["hello"]
    assert replies(slack, "C1", forged["ts"]) == []


@pytest.mark.parametrize("timestamp", ["soon", "", "1.7e9", "1" + "0" * 400])
async def test_a_malformed_timestamp_is_refused_like_a_bad_signature(make_bot, slack, caplog, timestamp):
    async with start_slack(make_bot, slack, **HTTP) as (bot, adapter):
        event = slack.mention("C1", "hello")
        body = json.dumps(slack.event_callback(event))
        status, _ = await slack.post_signed(
            endpoint(adapter), body, "application/json", timestamp_header=timestamp
        )
        assert status == 401
        bot.backend.say("Hello.")
        status, _ = await slack.post_event(endpoint(adapter), slack.mention("C1", "hello again"))
        assert status == 200

    assert [p.current.text for p in bot.backend.prompts] == ["hello again"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_retries_are_answered_once_and_a_retry_of_a_lost_delivery_is_answered(make_bot, slack):
    async with start_slack(make_bot, slack, **HTTP) as (bot, adapter):
        answer = bot.backend.hold()
        event = slack.mention("C1", "answer me once")
        # Acknowledged while its answer is held: Slack's 3-second acknowledgement never waits for the model.
        first = await asyncio.wait_for(
            slack.post_event(endpoint(adapter), event, event_id="EvA"), WAIT_TIMEOUT
        )
        assert first[0] == 200
        retries = [slack.post_event(endpoint(adapter), event, event_id="EvA", retry_num=n) for n in (1, 2, 3)]
        assert [status for status, _ in await asyncio.gather(*retries)] == [200, 200, 200]
        lost = slack.mention("C1", "my first delivery never came")
        assert (await slack.post_event(endpoint(adapter), lost, event_id="EvB", retry_num=1))[0] == 200
        answer.open()
        await slack.wait_for(lambda: len(replies(slack, "C1", lost["ts"])) == 1)
        await slack.wait_for(
            lambda: len(replies(slack, "C1", event["ts"])) == 1 and not bot.pipeline._in_flight
        )

    assert sorted(p.current.text for p in bot.backend.prompts) == [
        "answer me once",
        "my first delivery never came",
    ]


async def test_url_verification_and_slash_commands_over_http(make_bot, slack):
    async with start_slack(make_bot, slack, **HTTP) as (_bot, adapter):
        challenge = json.dumps({"token": "t", "challenge": "c-123", "type": "url_verification"})
        status, body = await slack.post_signed(endpoint(adapter), challenge, "application/json")
        assert (status, json.loads(body)["challenge"]) == (200, "c-123")
        status, _ = await slack.post_command(endpoint(adapter), "/botkit", "help", user="U1", channel="C1")
        assert status == 200
        await slack.wait_for(lambda: slack.responses)

    assert "/reset" in slack.responses[0]["text"]


def counted(bot, result: str) -> float:
    """``botkit_deliveries_total`` of Slack events with ``result``: 'first', 'repeat', 'unchecked'."""
    value = bot.metrics.registry.get_sample_value(
        "botkit_deliveries_total", {"platform": "slack", "result": result}
    )
    return value or 0.0


METRICS = {"metrics": {"enabled": True}}


async def test_a_retry_that_reaches_a_restarted_bot_is_not_answered_again(make_bot, slack, storage_config):
    config = {**storage_config, **METRICS}
    event = slack.mention("C1", "answer me once")
    async with start_slack(make_bot, slack, config, **HTTP) as (bot, adapter):
        bot.backend.say("Once.")
        assert (await slack.post_event(endpoint(adapter), event, event_id="EvR"))[0] == 200
        await slack.wait_for(lambda: replies(slack, "C1", event["ts"]) == ["Once."])
    # Slack did not see the acknowledgement (the bot restarted meanwhile) and retries.
    async with start_slack(make_bot, slack, config, **HTTP) as (restarted, adapter):
        restarted.backend.say("Twice.")
        status, _ = await slack.post_event(endpoint(adapter), event, event_id="EvR", retry_num=1)
        assert status == 200
        await eventually(lambda: counted(restarted, "repeat") == 1, what="the retry dropped")

    assert restarted.backend.prompts == []
    assert replies(slack, "C1", event["ts"]) == ["Once."]


async def test_two_replicas_behind_a_load_balancer_answer_an_event_and_its_retry_once(
    make_bot, slack, storage_config, tmp_path
):
    storage = storage_config["storage"]
    if "url" not in storage:  # one SQLite file, each replica with a data folder of its own
        storage = {**storage, "url": f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"}
    other = {**storage, "data_dir": str(tmp_path / "other")}
    event = slack.mention("C1", "answer me once")
    async with (
        start_slack(make_bot, slack, {"storage": storage, **METRICS}, **HTTP) as (one, first),
        start_slack(make_bot, slack, {"storage": other, **METRICS}, **HTTP) as (two, second),
    ):
        for bot in (one, two):
            bot.backend.say("Once.")
        # The event reaches one replica and its retry the other, at the same time.
        statuses = await asyncio.gather(
            slack.post_event(endpoint(first), event, event_id="EvL"),
            slack.post_event(endpoint(second), event, event_id="EvL", retry_num=1),
        )
        assert [status for status, _ in statuses] == [200, 200]
        await eventually(
            lambda: sum(counted(bot, result) for bot in (one, two) for result in ("first", "repeat")) == 2,
            what="both deliveries claimed",
        )
        await slack.wait_for(lambda: replies(slack, "C1", event["ts"]) == ["Once."])
        assert [counted(bot, "first") for bot in (one, two)] in ([1, 0], [0, 1])

    assert len(one.backend.prompts) + len(two.backend.prompts) == 1
    assert replies(slack, "C1", event["ts"]) == ["Once."]


async def test_with_the_database_down_an_event_is_answered_and_the_log_keeps_its_text_out(
    make_bot, slack, tmp_path, caplog
):
    from test_memory import sqlite_locked

    config = {"storage": {"data_dir": str(tmp_path / "data"), "busy_timeout": 0.2}, **METRICS}
    async with start_slack(make_bot, slack, config, **HTTP) as (bot, adapter):
        bot.backend.say("Answered anyway.")
        event = slack.mention("C1", "my secret plan")
        with caplog.at_level(logging.INFO), sqlite_locked(bot.db.sqlite_path):
            assert (await slack.post_event(endpoint(adapter), event, event_id="EvD"))[0] == 200
            await slack.wait_for(lambda: replies(slack, "C1", event["ts"]) == ["Answered anyway."])
        assert counted(bot, "unchecked") == 1

    warnings = [r.getMessage() for r in caplog.records if r.name == "botkit.deliveries"]
    assert len(warnings) == 1 and "cannot check slack deliveries against the database" in warnings[0]
    assert "my secret plan" not in caplog.text
