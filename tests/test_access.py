"""Access control: admins by role, allow and deny lists of users, channels and roles, DMs."""

from __future__ import annotations

import pytest

from botkit import ReplyStatus
from botkit.errors import ConfigError


def access(**settings) -> dict:
    return {"plugins": {"access": settings}}


def answered(reply) -> bool:
    return reply.status is ReplyStatus.COMPLETED


async def test_everyone_is_allowed_by_default(bot):
    assert answered(await bot.chat.say("hi", user="anyone", channel="anywhere"))
    assert answered(await bot.chat.say("hi", user="anyone", channel="dm-anyone", dm=True))


async def test_admins_by_role_and_by_id(make_bot):
    async with make_bot(access(admin_roles=["test:mods"])) as bot:
        mod = bot.chat.message("x", user="m", roles=("mods",))
        other_platform_role = bot.chat.message("x", user="n", roles=("admins",))
        listed = bot.chat.message("x", user="admin")  # [bot] admins of the test config
        assert await bot.is_admin(mod.author, mod)
        assert not await bot.is_admin(other_platform_role.author, other_platform_role)
        assert await bot.is_admin(listed.author, listed)


async def test_deny_lists_refuse_and_a_refusal_text_can_be_set(make_bot):
    config = access(
        deny_users=["test:troll"],
        deny_roles=["test:muted"],
        deny_channels=["test:offtopic"],
        refusal="Sorry, I can't help you here.",
    )
    async with make_bot(config) as bot:
        troll = await bot.chat.say("hi", user="troll")
        muted = await bot.chat.say("hi", user="m", roles=("muted",))
        offtopic = await bot.chat.say("hi", channel="offtopic")
        fine = await bot.chat.say("hi", user="nice")
        admin = await bot.chat.say("hi", user="admin", channel="offtopic")
    for refused in (troll, muted, offtopic):
        assert refused.texts == ["Sorry, I can't help you here."] and refused.final is None
    assert answered(fine) and answered(admin)  # admins are always let through


async def test_allow_lists_admit_only_whom_they_name(make_bot):
    config = access(allow_users=["test:ann"], allow_roles=["test:staff"], allow_channels=["test:help"])
    async with make_bot(config) as bot:
        ann = await bot.chat.say("hi", user="ann", channel="help")
        staff = await bot.chat.say("hi", user="sam", roles=("staff",), channel="help")
        stranger = await bot.chat.say("hi", user="zed", channel="help")
        wrong_channel = await bot.chat.say("hi", user="ann", channel="random")
        dm = await bot.chat.say("hi", user="ann", channel="dm-ann", dm=True)
    assert answered(ann) and answered(staff) and answered(dm)
    assert stranger.texts == [] and stranger.final is None  # silent by default
    assert wrong_channel.final is None


async def test_deny_beats_allow(make_bot):
    async with make_bot(access(allow_users=["test:ann"], deny_users=["test:ann"])) as bot:
        assert (await bot.chat.say("hi", user="ann")).final is None


async def test_direct_messages_can_be_switched_off(make_bot):
    async with make_bot(access(dms=False)) as bot:
        dm = await bot.chat.say("hi", user="ann", channel="dm-ann", dm=True)
        channel = await bot.chat.say("hi", user="ann")
        admin_dm = await bot.chat.say("hi", user="admin", channel="dm-admin", dm=True)
    assert dm.final is None and answered(channel) and answered(admin_dm)


async def test_refused_users_do_not_use_up_rate_limits(make_bot):
    config = {"plugins": {"access": {"deny_users": ["test:troll"]}, "ratelimit": {"global": "2/minute"}}}
    async with make_bot(config) as bot:
        for _ in range(5):
            await bot.chat.say("spam", user="troll")
        replies = [await bot.chat.say("hi", user=f"u{i}") for i in range(2)]
    assert all(answered(r) for r in replies)


async def test_entries_must_name_their_platform(make_bot):
    with pytest.raises(
        ConfigError, match=r"\[plugins.access\] deny_users: Value error, '1234' must be 'platform:id'"
    ):
        async with make_bot(access(deny_users=["1234"])):
            pass
