"""The message pipeline: gates, commands, context, generation, filters, after-hooks, ordering."""

from __future__ import annotations

import asyncio
import logging

from botkit import Message, Refuse, ReplyStatus, Role, Turn, hookimpl


async def test_reply_is_streamed_and_recorded(bot):
    bot.backend.add_reply("Hel", "lo ", "there")
    reply = await bot.chat.say("hi")
    assert reply.updates == ["Hel", "Hello ", "Hello there"]
    assert reply.final == "Hello there"
    assert reply.status is ReplyStatus.COMPLETED
    prompt = bot.backend.prompts[0]
    assert prompt.current == Turn(Role.USER, "hi")
    assert prompt.system == bot.settings.bot.system_prompt
