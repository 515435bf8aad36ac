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
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_, delete, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from botkit import BotAPI, Command, CommandContext, Message, StateKey, hookimpl
from botkit.storage import (
    ConversationRecord,
    DeadLetterRecord,
    FeedbackRecord,
    MessageRecord,
    ModerationEventRecord,
    PluginStateRecord,
    PrivacyRecord,
    UserRecord,
    compact_text_index,
    user_id_for,
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


async def user_row(session: AsyncSession, message: Message) -> UserRecord | None:
    return await session.scalar(
        select(UserRecord).where(
            UserRecord.platform == message.platform, UserRecord.platform_user_id == message.author.id
        )
    )


async def is_opted_out(session: AsyncSession, user_id: int) -> bool:
    found = await session.scalar(
        select(PrivacyRecord.id).where(PrivacyRecord.user_id == user_id, PrivacyRecord.kind == "optout")
    )
    return found is not None


async def opt_out(ctx: CommandContext) -> str:
    message = ctx.message
    async with ctx.bot.db.session() as session:
        user_id = await user_id_for(session, message.platform, message.author.id, message.author.display_name)
        if await is_opted_out(session, user_id):
            return "You are already opted out: your messages are never used for training. /optin undoes it."
        session.add(PrivacyRecord(user_id=user_id, kind="optout", detail={"via": message.platform}))
    return (
        "Done: your messages stay in this conversation's memory but will never be exported to train a model. "
        "/optin undoes it."
    )


async def opt_in(ctx: CommandContext) -> str:
    async with ctx.bot.db.session() as session:
        user = await user_row(session, ctx.message)
        if user is None or not await is_opted_out(session, user.id):
            return "You are not opted out."
        await session.execute(
            delete(PrivacyRecord).where(PrivacyRecord.user_id == user.id, PrivacyRecord.kind == "optout")
        )
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
    if not await bot.forget_user(message.platform, message.author.id):
        return "I couldn't delete your data just now (storage is unavailable). Nothing was deleted; please try again later."
    deleted = await delete_user(bot, message)
    log.info("forgetme: deleted the data of %s (%d messages)", message.user_key, deleted)
    return "Done: everything I had stored about you is deleted."


async def delete_user(bot: BotAPI, message: Message) -> int:
    """Delete every row that names the message's author; returns how many messages went.

    Their messages (by ``users`` row or by platform id), the bot's replies to
    them, every message of a conversation whose key names them (their DMs,
    per-user conversations), those conversations, feedback given by them or on
    any of those messages, their moderation events, privacy records and user
    row. SQLite's text index is rewritten without their text, then the WAL is
    checkpointed, so the file keeps no copy.
    """
    platform, author = message.platform, message.author.id
    dm_key, user_suffix = Message.user_conversation_keys(platform, author)
    async with bot.db.session() as session:
        await session.execute(
            delete(PluginStateRecord).where(
                PluginStateRecord.plugin == NAME, PluginStateRecord.key == confirm_key(message)
            )
        )
        user = await user_row(session, message)

        def by_user(column: Any) -> Any:
            # Never ``column == None``: that is IS NULL, which matches every bot reply.
            return column == user.id if user is not None else false()

        keyed = select(ConversationRecord.id).where(
            or_(
                ConversationRecord.scope_key == dm_key,
                and_(
                    ConversationRecord.scope_key.startswith(f"{platform}:", autoescape=True),
                    ConversationRecord.scope_key.endswith(user_suffix, autoescape=True),
                ),
            )
        )
        theirs = or_(
            by_user(MessageRecord.user_id),
            and_(MessageRecord.platform == platform, MessageRecord.author_id == author),
            MessageRecord.conversation_id.in_(keyed),
        )
        own = select(MessageRecord.id).where(theirs)
        replies = select(MessageRecord.id).where(MessageRecord.reply_to_id.in_(own))
        gone = await session.scalar(
            select(func.count()).where(or_(MessageRecord.id.in_(own), MessageRecord.id.in_(replies)))
        )
        for record in (FeedbackRecord, ModerationEventRecord):  # theirs, or on a message that goes
            await session.execute(
                delete(record).where(
                    or_(
                        by_user(record.user_id),
                        record.message_id.in_(own),
                        record.message_id.in_(replies),
                    )
                )
            )
        # Replies first: deleting a question sets its replies' reply_to_id to NULL.
        await session.execute(delete(MessageRecord).where(MessageRecord.id.in_(replies.scalar_subquery())))
        await session.execute(delete(MessageRecord).where(theirs))
        await session.execute(
            delete(ConversationRecord).where(ConversationRecord.id.in_(keyed.scalar_subquery()))
        )
        if user is not None:
            await session.execute(delete(PrivacyRecord).where(PrivacyRecord.user_id == user.id))
            await session.delete(user)
        # Records the database refused are kept whole for repair: theirs go too.
        letters = await session.execute(select(DeadLetterRecord.id, DeadLetterRecord.record))
        named = [row.id for row in letters if names_user(row.record, platform, author, (dm_key, user_suffix))]
        if named:
            await session.execute(delete(DeadLetterRecord).where(DeadLetterRecord.id.in_(named)))
        if gone:
            await compact_text_index(session)
    if not await bot.db.checkpoint():
        log.info("forgetme: the WAL is in use; SQLite's next checkpoint removes the old copies")
    return gone or 0


def names_user(record: Any, platform: str, author: str, keys: tuple[str, str]) -> bool:
    """Whether a stored JSON record names the user: their platform id beside the platform, or a key of theirs."""
    dm_key, user_suffix = keys
    strings: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            strings.append(value)

    walk(record)
    if any(text == dm_key or (text.startswith(f"{platform}:") and text.endswith(user_suffix)) for text in strings):
        return True
    return author in strings and platform in strings


async def my_data(ctx: CommandContext) -> str | None:
    bot, message = ctx.bot, ctx.message
    limit = bot.plugin_settings(NAME).mydata_limit
    async with bot.db.sessions() as session:
        user = await user_row(session, message)
        if user is None:
            return "I have nothing stored about you."
        total = await session.scalar(select(func.count()).where(MessageRecord.user_id == user.id)) or 0
        feedback = await session.scalar(select(func.count()).where(FeedbackRecord.user_id == user.id)) or 0
        opted_out = await is_opted_out(session, user.id)
        rows = (
            await session.execute(
                select(
                    MessageRecord.created_at,
                    MessageRecord.platform,
                    MessageRecord.channel_id,
                    MessageRecord.text,
                )
                .where(MessageRecord.user_id == user.id)
                .order_by(MessageRecord.id.desc())
                .limit(limit)
            )
        ).all()
    lines = [
        f"What I store about you ({message.user_key}, known since {user.created_at:%Y-%m-%d}):",
        f"- {total} messages, {feedback} feedback entries; training exports: {'opted out' if opted_out else 'allowed'}",
    ]
    if total > len(rows):
        lines.append(f"- your newest {len(rows)} messages follow ({total - len(rows)} older ones not shown):")
    lines += [f"[{at:%Y-%m-%d %H:%M}] #{channel}: {text}" for at, platform, channel, text in reversed(rows)]
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
    register(Command("optout", "never use my messages to train a model", opt_out))
    register(Command("optin", "undo /optout", opt_in))
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
