"""Rate limits: per user, channel and globally, tiers, admins, token budgets, memory and a real Redis."""

from __future__ import annotations

import asyncio
import re

import pytest

from botkit import ReplyStatus
from botkit.errors import ConfigError


def limits(**settings) -> dict:
    return {"plugins": {"ratelimit": settings}}


def answered(reply) -> bool:
    return reply.status is ReplyStatus.COMPLETED


async def test_per_user_limit_tells_once_then_drops_silently(make_bot):
    async with make_bot(limits(per_user="3/minute")) as bot:
        replies = [await bot.chat.say(f"message {i}", user="alice") for i in range(6)]
        other = await bot.chat.say("my turn", user="bob")
    assert [answered(r) for r in replies] == [True, True, True, False, False, False]
    notice = replies[3].texts
    assert len(notice) == 1 and re.fullmatch(
        r"You're sending messages faster than I can take them\. Please try again in \d+ s\.", notice[0]
    )
    assert replies[4].texts == [] and replies[5].texts == []  # told once per window
    assert answered(other)
    assert [p.current.text for p in bot.backend.prompts] == ["message 0", "message 1", "message 2", "my turn"]


async def test_commands_count_against_the_limit_too(make_bot):
    async with make_bot(limits(per_user="2/minute")) as bot:
        await bot.chat.say("/help")
        await bot.chat.say("/help")
        limited = await bot.chat.say("/help")
    assert limited.texts[0].startswith("You're sending messages faster")


async def test_per_channel_and_global_limits(make_bot):
    async with make_bot(limits(per_channel="2/minute")) as bot:
        first = [await bot.chat.say("hi", user=user, channel="busy") for user in ("a", "b", "c")]
        elsewhere = await bot.chat.say("hi", user="c", channel="quiet")
    assert [answered(r) for r in first] == [True, True, False]
    assert first[2].texts[0].startswith("This channel is sending me more messages")
    assert answered(elsewhere)
    async with make_bot(limits(**{"global": "2/minute"})) as bot:
        replies = [await bot.chat.say("hi", user=user, channel=user) for user in ("a", "b", "c")]
    assert [answered(r) for r in replies] == [True, True, False]
    assert replies[2].texts[0].startswith("I'm getting more messages than I can take")


async def test_role_tiers_and_admin_exemption(make_bot):
    config = limits(per_user="1/minute", tiers={"supporter": "3/minute", "friend": "2/minute"})
    async with make_bot(config) as bot:
        plain = [await bot.chat.say("x", user="p") for _ in range(2)]
        supporter = [await bot.chat.say("x", user="s", roles=("friend", "supporter")) for _ in range(4)]
        admin = [await bot.chat.say("x", user="admin") for _ in range(5)]
    assert [answered(r) for r in plain] == [True, False]
    assert [answered(r) for r in supporter] == [True, True, True, False]  # the most generous tier
    assert all(answered(r) for r in admin)


async def test_admins_can_be_limited_too(make_bot):
    async with make_bot(limits(per_user="1/minute", exempt_admins=False)) as bot:
        replies = [await bot.chat.say("x", user="admin") for _ in range(2)]
    assert [answered(r) for r in replies] == [True, False]


async def test_daily_token_budget(make_bot):
    async with make_bot(limits(tokens_per_day=120)) as bot:
        first = await bot.chat.say("a question", user="alice")
        spent = first.status is ReplyStatus.COMPLETED
        replies = [await bot.chat.say("another question " * 20, user="alice") for _ in range(3)]
        bob = await bot.chat.say("hello", user="bob")
    assert spent and answered(replies[0])  # the budget is checked before, spent after
    assert not answered(replies[1])
    assert re.fullmatch(
        r"You've used today's budget of 120 tokens\. It renews in [\d.]+ (h|min|s)\.", replies[1].texts[0]
    )
    assert replies[2].texts == []
    assert answered(bob)


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        (
            "per_user",
            "five a minute",
            "[plugins.ratelimit] per_user: Value error, must be 'N/period', e.g. '5/minute'",
        ),
        ("global", "3/fortnight", "[plugins.ratelimit] global: Value error, must be 'N/period'"),
        ("tiers", {"vip": "lots"}, "[plugins.ratelimit] tiers: Value error, tier 'vip': must be 'N/period'"),
        (
            "storage",
            "mongodb://x",
            "[plugins.ratelimit] storage: Value error, must be 'memory://' or 'redis://",
        ),
        ("storage", "redis://:pw@h:6379", "BOTKIT_PLUGINS__RATELIMIT__PASSWORD"),
    ],
)
async def test_bad_settings_name_the_key_and_a_valid_example(make_bot, key, value, shown):
    with pytest.raises(ConfigError) as error:
        async with make_bot(limits(**{key: value})):
            pass
    assert shown in str(error.value)
    assert ":pw@" not in str(error.value)


async def test_a_flood_from_one_user_does_not_slow_the_others(make_bot):
    async with make_bot(limits(per_user="5/minute")) as bot:
        flood = [bot.chat.say_nowait(f"spam {i}", user="flooder", channel=f"c{i % 7}") for i in range(1000)]
        others = [await bot.chat.say("hello", user=f"user{i}", channel="general") for i in range(5)]
        await asyncio.gather(*(task for task, _ in flood))
    # The five admitted messages may wait for the one model ("The model is busy; ..."): only
    # the rate-limit notice is counted, and the flooder gets it once, not once per refusal.
    sent = [text for _, reply in flood for text in reply.sent]
    notices = [text for text in sent if not text.startswith("The model is busy")]
    assert len(notices) == 1 and notices[0].startswith("You're sending messages faster")
    assert sum(answered(reply) for _, reply in flood) == 5
    assert all(answered(r) for r in others)


async def test_redis_shares_limits_between_bot_processes(make_bot, redis_server):
    config = limits(per_user="2/minute", storage=redis_server.url)
    async with make_bot(config) as first, make_bot(config) as second:
        replies = [
            await first.chat.say("one", user="carol"),
            await second.chat.say("two", user="carol"),
            await first.chat.say("three", user="carol"),
            await second.chat.say("four", user="carol"),
        ]
    assert [answered(r) for r in replies] == [True, True, False, False]
    assert len(replies[2].texts) == 1 and replies[3].texts == []  # one notice across both processes


async def test_unreachable_redis_lets_messages_through_and_says_so(make_bot, caplog):
    from servers import free_port

    async with make_bot(limits(per_user="1/minute", storage=f"redis://127.0.0.1:{free_port()}/0")) as bot:
        replies = [await bot.chat.say("x") for _ in range(2)]
    assert all(answered(r) for r in replies)
    assert "cannot be reached; messages pass unlimited" in caplog.text
