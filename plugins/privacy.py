"""Privacy: /optout of training exports, /forgetme (after confirmation), /mydata, and retention.

``/optout`` keeps a user's messages for the conversation but marks them never
to be exported for training (``/optin`` undoes it). ``/forgetme`` deletes
every row that names the user: their messages and the replies to them, the
conversations whose key names them (DMs, per-user conversations), their
feedback, moderation events, privacy records and user row.
``retention_days`` purges messages older than that, daily.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, func, select

from botkit import BotAPI, Command, CommandContext, Message, StateKey, hookimpl
from botkit.storage import (
    FeedbackRecord,
    MessageRecord,
    PluginStateRecord,
    compact_text_index,
    forget_user,
    opt_in,
    opt_out,
    user_data,
    utcnow,
)

log = logging.getLogger("botkit.plugins.privacy")

NAME = "privacy"
CONFIRM_WINDOW = timedelta(minutes=5)
CHUNK = 1900  # characters per message of /mydata, under every platform's limit


class PrivacySettings(BaseModel):
    """``[plugins.privacy]``."""

    model_config = ConfigDict(extra="forbid")

    retention_days: int | None = Field(None, ge=1, description="delete messages older than this; unset: keep")
    mydata_limit: int = Field(500, ge=1, description="most messages /mydata sends")


async def opt_out_command(ctx: CommandContext) -> str:
    message = ctx.message
    if not await opt_out(ctx.bot.db, message.platform, message.author.id, message.author.display_name):
        return "You are already opted out: your messages are never used for training. /optin undoes it."
    return (
        "Done: your messages stay in this conversation's memory but will never be exported to train a model. "
        "/optin undoes it."
    )


async def opt_in_command(ctx: CommandContext) -> str:
    if not await opt_in(ctx.bot.db, ctx.message.platform, ctx.message.author.id):
        return "You are not opted out."
    return "Done: your messages may be used for training again. /optout to stop it."


def confirm_key(message: Message) -> str:
    return f"forgetme:{message.user_key}"


async def forget_me(ctx: CommandContext) -> str:
    bot, message = ctx.bot, ctx.message
    key = confirm_key(message)
    now = utcnow()
    if ctx.args.strip().lower() != "confirm":
        async with bot.db.session() as session:
            await session.merge(
                PluginStateRecord(plugin=NAME, key=key, value={"until": (now + CONFIRM_WINDOW).isoformat()})
            )
        return (
            "This deletes everything I have stored about you: your messages, the replies to them, "
            "your feedback and settings. It cannot be undone. "
            f"Type `{bot.settings.bot.command_prefix}forgetme confirm` within 5 minutes to go ahead."
        )
    async with bot.db.session() as session:
        pending = await session.get(PluginStateRecord, (NAME, key))
        if pending is None or datetime.fromisoformat(pending.value["until"]) < now:
            return f"Nothing to confirm: type `{bot.settings.bot.command_prefix}forgetme` first."
    forgotten = await forget_user(bot, message.platform, message.author.id, plugin_state=[(NAME, key)])
    if forgotten is None:
        return "I couldn't delete your data just now (storage is unavailable). Nothing was deleted; please try again later."
    log.info("forgetme: deleted the data of %s (%d messages)", message.user_key, forgotten.messages)
    return "Done: everything I had stored about you is deleted."


async def my_data(ctx: CommandContext) -> str | None:
    bot, message = ctx.bot, ctx.message
    data = await user_data(
        bot.db, message.platform, message.author.id, bot.plugin_settings(NAME).mydata_limit
    )
    if data is None:
        return "I have nothing stored about you."
    lines = [
        f"What I store about you ({message.user_key}, known since {data.user.created_at:%Y-%m-%d}):",
        f"- {data.messages} messages, {data.feedback} feedback entries; "
        f"training exports: {'opted out' if data.opted_out else 'allowed'}",
    ]
    shown = len(data.newest)
    if data.messages > shown:
        lines.append(f"- your newest {shown} messages follow ({data.messages - shown} older ones not shown):")
    lines += [
        f"[{stored.created_at:%Y-%m-%d %H:%M}] #{stored.channel_id}: {stored.text}" for stored in data.newest
    ]
    for chunk in chunked("\n".join(lines)):
        await ctx.responder.send(chunk)
    return None


def chunked(text: str, size: int = CHUNK) -> list[str]:
    """Split at line ends into pieces of at most ``size`` characters (long lines are cut)."""
    pieces, current = [], ""
    for line in text.split("\n"):
        while len(line) > size:
            if current:
                pieces.append(current)
                current = ""
            pieces.append(line[:size])
            line = line[size:]
        if current and len(current) + 1 + len(line) > size:
            pieces.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    if current:
        pieces.append(current)
    return pieces


async def purge_expired(bot: BotAPI, days: int) -> int:
    """Delete messages (and their feedback) older than ``days``; returns how many."""
    cutoff = utcnow() - timedelta(days=days)
    async with bot.db.session() as session:
        old = select(MessageRecord.id).where(MessageRecord.created_at < cutoff)
        count = await session.scalar(select(func.count()).where(MessageRecord.created_at < cutoff)) or 0
        if count:
            await session.execute(delete(FeedbackRecord).where(FeedbackRecord.message_id.in_(old)))
            await session.execute(delete(MessageRecord).where(MessageRecord.created_at < cutoff))
            await compact_text_index(session)
    if count:
        log.info("retention: deleted %d messages older than %d days", count, days)
    return count


PURGER: StateKey[asyncio.Task[None]] = StateKey("privacy.purger")


async def purge_daily(bot: BotAPI, days: int) -> None:
    while True:
        try:
            await purge_expired(bot, days)
        except Exception:
            log.exception("retention: purge failed; trying again in an hour")
            await asyncio.sleep(3600)
            continue
        await asyncio.sleep(86400)


@hookimpl
def botkit_register_settings(register):
    register(NAME, PrivacySettings)


@hookimpl
def botkit_register_commands(register):
    register(Command("optout", "never use my messages to train a model", opt_out_command))
    register(Command("optin", "undo /optout", opt_in_command))
    register(
        Command(
            "forgetme", "delete everything stored about me (asks to confirm)", forget_me, usage="[confirm]"
        )
    )
    register(Command("mydata", "show what is stored about me", my_data))


@hookimpl
async def botkit_startup(bot):
    days = bot.plugin_settings(NAME).retention_days
    if days is not None:
        bot.state.set(PURGER, asyncio.create_task(purge_daily(bot, days), name="botkit-retention"))


@hookimpl
async def botkit_shutdown(bot):
    task = bot.state.pop(PURGER)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
