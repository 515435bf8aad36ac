"""Retries as metrics: the chat platforms' API (botkit_platform_retries_total) and the openai backend's own loop."""

from __future__ import annotations

import pytest
from fake_discord import FakeDiscord, start_discord
from fake_slack import FakeSlack, start_slack
from openai_server import Failure, StubServer
from test_metrics import samples, value
from test_openai_backend import PLUGINS, fast_retries

from botkit import ReplyStatus

METRICS = {"metrics": {"enabled": True}}


def scrape(bot) -> dict:
    return samples(bot.metrics.exposition()[0].decode())


@pytest.fixture
async def slack(monkeypatch):
    async with FakeSlack() as fake:
        monkeypatch.setenv("BOTKIT_ADAPTERS__SLACK__BOT_TOKEN", fake.bot_token)
        monkeypatch.setenv("BOTKIT_ADAPTERS__SLACK__APP_TOKEN", fake.app_token)
        fake.add_user("U1", "alice")
        yield fake


@pytest.fixture
async def discord(monkeypatch):
    async with FakeDiscord() as fake:
        monkeypatch.setenv("BOTKIT_ADAPTERS__DISCORD__TOKEN", fake.token)
        yield fake


async def test_a_slack_call_answered_429_then_ok_counts_one_rate_limited_retry(make_bot, slack):
    async with start_slack(make_bot, slack, config=METRICS) as (bot, adapter):
        slack.fail_next("chat.postMessage", 429, retry_after=0)
        answer = await adapter.client.chat_postMessage(channel="C1", text="hello")
        scraped = scrape(bot)
    assert answer["ok"] and [call.status for call in slack.calls_to("chat.postMessage")][0] == 429
    assert value(scraped, "botkit_platform_retries_total", platform="slack", reason="rate_limited") == 1
    assert value(scraped, "botkit_platform_retries_total", platform="slack", reason="connection") == 0


async def test_a_discord_request_answered_429_then_ok_counts_one_rate_limited_retry(make_bot, discord):
    route = "/channels/{channel}/messages"
    async with start_discord(make_bot, discord, config=METRICS) as (bot, _adapter):
        before = value(
            scrape(bot), "botkit_platform_retries_total", platform="discord", reason="rate_limited"
        )
        discord.rate_limit_next("POST", route, retry_after=0.01)
        await discord.say("hello", mention_bot=True)
        await discord.wait_for(lambda: any(call.status == 200 for call in discord.calls_to("POST", route)))
        scraped = scrape(bot)
    assert [call.status for call in discord.calls_to("POST", route)][:2] == [429, 200]
    assert before == 0
    assert value(scraped, "botkit_platform_retries_total", platform="discord", reason="rate_limited") == 1
    assert value(scraped, "botkit_platform_retries_total", platform="discord", reason="server_error") == 0


async def test_a_discord_5xx_it_retries_counts_as_a_server_error(make_bot, discord):
    route = "/channels/{channel}/messages"
    async with start_discord(make_bot, discord, config=METRICS) as (bot, _adapter):
        discord.fail_next("POST", route, 502)
        await discord.say("hello", mention_bot=True)
        await discord.wait_for(lambda: any(call.status == 200 for call in discord.calls_to("POST", route)))
        scraped = scrape(bot)
    assert value(scraped, "botkit_platform_retries_total", platform="discord", reason="server_error") == 1


async def test_the_openai_backend_counts_its_retries_by_reason(make_bot):
    with StubServer() as stub:
        stub.script.append(Failure(429, {"Retry-After": "0"}))
        async with make_bot({**fast_retries(stub.base_url), **METRICS}, plugins=PLUGINS) as bot:
            reply = await bot.chat.say("hi")
            scraped = scrape(bot)
    assert reply.status is ReplyStatus.COMPLETED and len(stub.requests) == 2
    assert value(scraped, "botkit_backend_retries_total", backend="default", reason="rate_limited") == 1
    assert value(scraped, "botkit_backend_retries_total", backend="default", reason="server_error") == 0


async def test_a_slack_call_whose_connection_drops_is_retried_and_counted_as_a_connection_retry(
    make_bot, slack
):
    async with start_slack(make_bot, slack, config=METRICS) as (bot, adapter):
        slack.drop_next("chat.postMessage")
        answer = await adapter.client.chat_postMessage(channel="C1", text="hello")
        scraped = scrape(bot)
    assert answer["ok"] and [call.status for call in slack.calls_to("chat.postMessage")] == [0, 200]
    assert [m["text"] for m in slack.bot_messages("C1")] == ["hello"]
    assert value(scraped, "botkit_platform_retries_total", platform="slack", reason="connection") == 1
    assert value(scraped, "botkit_platform_retries_total", platform="slack", reason="rate_limited") == 0
