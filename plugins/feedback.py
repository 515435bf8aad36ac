"""Feedback: 👍 and 👎 reactions on the bot's replies stored as scores, and ``/feedback`` for admins.

A reaction to one of the bot's replies whose emoji is in ``[plugins.feedback]
positive`` or ``negative`` becomes a ``feedback`` row (kind "reaction", the
emoji, score +1 or -1, the reacting user); removing the reaction deletes it. The
same user's same emoji on the same reply is stored once. Reactions to other
messages, and other emoji, are ignored. The replies are the ``messages`` rows
the memory plugin writes, found by the platform ids their adapter returned: the
plugin declares that it needs ``memory`` and is off while memory is.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from datetime import timedelta
from functools import partial
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from sqlalchemy import Text, cast, delete, distinct, func, select
from sqlalchemy.exc import SQLAlchemyError

from botkit import BotAPI, Command, CommandContext, Message, Reaction, Reply, StateKey, hookimpl
from botkit.storage import FeedbackRecord, MessageRecord, UserRecord, user_id_for, utcnow

log = logging.getLogger("botkit.plugins.feedback")

NAME = "feedback"
# A reaction to a reply this process just delivered waits this long for the reply's row.
REPLY_WAIT = 120.0
# How long a reaction event waits for its own write before the adapter's call returns.
HOOK_WAIT = 1.0
# Seconds shutdown gives reactions still waiting for their reply's row.
SHUTDOWN_WAIT = 5.0
# Replies remembered by their platform ids: the newest this many, and at start-up those
# split over several messages in the last SPLIT_REPLY_DAYS.
RECENT_REPLIES = 10_000
SPLIT_REPLY_DAYS = 3
DEFAULT_REPLIES = 100
MAX_REPLIES = 10_000
COLUMN_LIMIT = 64  # feedback.value

# Slack's skin tones ("+1::skin-tone-3"), Unicode skin-tone modifiers and the emoji
# variation selector: a 👍 is a 👍 whatever its skin tone.
_SKIN_TONE = re.compile(r"::skin-tone-\d$|[\U0001F3FB-\U0001F3FF\uFE0F]")

MessageKey = tuple[str, str, str]  # (platform, channel id, platform message id)


def normalized(emoji: str) -> str:
    """The emoji as settings compare it: no surrounding colons, no skin tone."""
    return _SKIN_TONE.sub("", emoji.strip().strip(":")).strip(":")


class FeedbackSettings(BaseModel):
    """``[plugins.feedback]``."""

    model_config = ConfigDict(extra="forbid")

    positive: list[str] = Field(
        default_factory=lambda: ["👍", "+1", "thumbsup"],
        description="reactions that count as a good reply (+1): Unicode emoji or Slack names",
    )
    negative: list[str] = Field(
        default_factory=lambda: ["👎", "-1", "thumbsdown"],
        description="reactions that count as a bad reply (-1)",
    )

    @field_validator("positive", "negative")
    @classmethod
    def _emoji(cls, value: list[str]) -> list[str]:
        if any(not normalized(emoji) for emoji in value):
            raise ValueError("an entry is empty; list emoji such as '👍' or Slack names such as '+1'")
        return value

    @field_validator("negative")
    @classmethod
    def _not_positive(cls, value: list[str], info: ValidationInfo) -> list[str]:
        both = {normalized(e) for e in value} & {normalized(e) for e in info.data.get("positive", ())}
        if both:
            raise ValueError(f"{', '.join(sorted(both))} is in positive too: keep each emoji in one list")
        return value


class FeedbackRecorder:
    """Turns reaction events into ``feedback`` rows, one message's reactions at a time, in order."""

    def __init__(self, db: Any, settings: FeedbackSettings) -> None:
        self.db = db
        self.scores = {normalized(e): 1 for e in settings.positive} | {
            normalized(e): -1 for e in settings.negative
        }
        # Platform id of each message of a recent reply -> the id its row is stored under (the first).
        self.recent: OrderedDict[MessageKey, str] = OrderedDict()
        self._chains: dict[MessageKey, asyncio.Task[None]] = {}

    def score(self, emoji: str) -> int | None:
        return self.scores.get(normalized(emoji))

    def delivered(self, platform: str, channel_id: str, message_ids: tuple[str, ...] | list[str]) -> None:
        """Remember a reply's platform messages, so a reaction to any of them finds its row."""
        for message_id in message_ids:
            key = (platform, channel_id, message_id)
            self.recent[key] = message_ids[0]
            self.recent.move_to_end(key)
        while len(self.recent) > RECENT_REPLIES:
            self.recent.popitem(last=False)

    async def remember_split_replies(self) -> None:
        """After a restart: the replies of the last days that were split over several messages."""
        since = utcnow() - timedelta(days=SPLIT_REPLY_DAYS)
        async with self.db.sessions() as session:
            rows = (
                await session.execute(
                    select(MessageRecord.platform, MessageRecord.channel_id, MessageRecord.flags)
                    .where(
                        MessageRecord.role == "assistant",
                        MessageRecord.created_at >= since,
                        cast(MessageRecord.flags, Text).like('%"platform_message_ids"%'),
                    )
                    .order_by(MessageRecord.id.desc())
                    .limit(RECENT_REPLIES)
                )
            ).all()
        for platform, channel_id, flags in reversed(rows):
            ids = (flags or {}).get("platform_message_ids") or []
            if ids:
                self.delivered(platform, channel_id, [str(i) for i in ids])

    async def record(self, reaction: Reaction) -> None:
        """Store or remove the reaction; returns once written or after ``HOOK_WAIT`` (it goes on)."""
        score = self.score(reaction.emoji)
        if score is None:
            return
        key = (reaction.platform, reaction.channel_id, reaction.message_id)
        task = asyncio.create_task(self._after(self._chains.get(key), reaction, score))
        self._chains[key] = task
        task.add_done_callback(partial(self._finished, key))
        await asyncio.wait({task}, timeout=HOOK_WAIT)

    def _finished(self, key: MessageKey, task: asyncio.Task[None]) -> None:
        if self._chains.get(key) is task:
            del self._chains[key]

    async def settle(self, timeout: float) -> bool:
        """Wait until every reaction is written or given up; False if some still wait after ``timeout``."""
        pending = set(self._chains.values())
        if not pending:
            return True
        _, waiting = await asyncio.wait(pending, timeout=timeout)
        return not waiting

    async def close(self, timeout: float) -> None:
        if not await self.settle(timeout):
            log.error(
                "feedback: %d reactions were still waiting for their reply to be stored; dropped",
                len(self._chains),
            )
        tasks = list(self._chains.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _after(self, previous: asyncio.Task[None] | None, reaction: Reaction, score: int) -> None:
        """Apply the reaction once the earlier ones on the same message are done.

        The reply's row may not be in the database yet: the memory plugin writes in
        batches, and keeps rows in its spool while the database is down. A reaction to
        a reply this process delivered therefore waits for the row (retrying, up to
        REPLY_WAIT) instead of being dropped. The wait happens here, per message,
        rather than in a queue of its own, so one slow reply never holds up reactions
        to others, and add/remove of the same reaction keep their order.
        """
        if previous is not None:
            await asyncio.wait({previous})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REPLY_WAIT
        key = (reaction.platform, reaction.channel_id, reaction.message_id)
        delay = 0.05
        unreachable: str | None = None
        while True:
            try:
                if await self._apply(reaction, score):
                    return
                unreachable = None
                if key not in self.recent:
                    return  # not a reply of the bot (or one too old to remember): ignored
            except (SQLAlchemyError, OSError) as error:
                if unreachable is None:
                    log.warning("feedback: cannot reach the database (%s); retrying", type(error).__name__)
                unreachable = type(error).__name__
            if loop.time() + delay > deadline:
                reason = (
                    f"the database was unreachable ({unreachable})"
                    if unreachable
                    else "the reply was not stored"
                )
                log.error(
                    "feedback: a reaction to message %s was dropped: %s for %g s",
                    reaction.message_id,
                    reason,
                    REPLY_WAIT,
                )
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _apply(self, reaction: Reaction, score: int) -> bool:
        """Write the reaction; False when its message is not a stored reply of the bot."""
        key = (reaction.platform, reaction.channel_id, reaction.message_id)
        stored_as = self.recent.get(key, reaction.message_id)
        value = reaction.emoji[:COLUMN_LIMIT]
        async with self.db.session() as session:
            reply_id = await session.scalar(
                select(MessageRecord.id)
                .where(
                    MessageRecord.platform == reaction.platform,
                    MessageRecord.platform_message_id == stored_as,
                    MessageRecord.channel_id == reaction.channel_id,
                    MessageRecord.role == "assistant",
                )
                .limit(1)
            )
            if reply_id is None:
                return False
            same = (
                FeedbackRecord.message_id == reply_id,
                FeedbackRecord.kind == "reaction",
                FeedbackRecord.value == value,
            )
            if reaction.added:
                user_id = await user_id_for(
                    session, reaction.platform, reaction.user.id, reaction.user.display_name
                )
                found = await session.scalar(
                    select(FeedbackRecord.id).where(*same, FeedbackRecord.user_id == user_id).limit(1)
                )
                if found is None:
                    session.add(
                        FeedbackRecord(
                            message_id=reply_id, user_id=user_id, kind="reaction", value=value, score=score
                        )
                    )
            else:
                user_id = await session.scalar(
                    select(UserRecord.id).where(
                        UserRecord.platform == reaction.platform,
                        UserRecord.platform_user_id == reaction.user.id,
                    )
                )
                if user_id is not None:
                    await session.execute(
                        delete(FeedbackRecord).where(*same, FeedbackRecord.user_id == user_id)
                    )
        return True


RECORDER: StateKey[FeedbackRecorder] = StateKey("feedback.recorder")


def recorder(bot: BotAPI) -> FeedbackRecorder:
    """The running bot's recorder (created at start-up)."""
    return bot.state.require(RECORDER)


@hookimpl
def botkit_register_plugin(register):
    # The reply rows that reactions refer to are the ones the memory plugin writes.
    register(needs=["memory"])


@hookimpl
def botkit_register_settings(register):
    register(NAME, FeedbackSettings)


@hookimpl
def botkit_register_commands(register):
    register(
        Command(
            "feedback",
            "reactions on the newest replies: how many good and bad, by model",
            show_feedback,
            usage="[N]",
            admin_only=True,
        )
    )


@hookimpl
async def botkit_startup(bot):
    feedback = bot.state.set(RECORDER, FeedbackRecorder(bot.db, bot.plugin_settings(NAME)))
    try:
        await feedback.remember_split_replies()
    except (SQLAlchemyError, OSError) as error:
        log.warning(
            "feedback: cannot read recent replies (%s); reactions to their later parts may be missed",
            type(error).__name__,
        )


# Last: the memory plugin's shutdown writes the replies that reactions may still wait for.
@hookimpl(trylast=True)
async def botkit_shutdown(bot):
    feedback = bot.state.pop(RECORDER)
    if feedback is not None:
        await feedback.close(SHUTDOWN_WAIT)


@hookimpl
def botkit_after_reply(message: Message, reply: Reply, bot):
    feedback = bot.state.get(RECORDER)
    if feedback is not None and reply.platform_message_ids:
        feedback.delivered(message.platform, message.channel_id, reply.platform_message_ids)


@hookimpl
async def botkit_reaction(reaction: Reaction, bot):
    feedback = bot.state.get(RECORDER)
    if feedback is not None:
        await feedback.record(reaction)


async def show_feedback(ctx: CommandContext) -> str:
    arg = ctx.args.strip()
    if arg and not (arg.isdigit() and 1 <= int(arg) <= MAX_REPLIES):
        return f"Usage: {ctx.bot.settings.bot.command_prefix}feedback [N]: N replies, 1 to {MAX_REPLIES}"
    count = int(arg) if arg else DEFAULT_REPLIES
    newest = (
        select(MessageRecord.id, MessageRecord.model)
        .where(MessageRecord.role == "assistant")
        .order_by(MessageRecord.id.desc())
        .limit(count)
        .subquery()
    )
    async with ctx.bot.db.sessions() as session:
        replies = await session.scalar(select(func.count()).select_from(newest)) or 0
        rows = (
            await session.execute(
                select(
                    newest.c.model,
                    func.sum(FeedbackRecord.score).filter(FeedbackRecord.score > 0),
                    -func.sum(FeedbackRecord.score).filter(FeedbackRecord.score < 0),
                    func.count(distinct(newest.c.id)),
                )
                .join(FeedbackRecord, FeedbackRecord.message_id == newest.c.id)
                .where(FeedbackRecord.kind == "reaction")
                .group_by(newest.c.model)
                .order_by(newest.c.model)
            )
        ).all()
    if not replies:
        return "No replies stored yet."
    good = sum(row[1] or 0 for row in rows)
    bad = sum(row[2] or 0 for row in rows)
    rated = sum(row[3] for row in rows)
    lines = [
        f"Feedback on the newest {replies} replies: {good} positive, {bad} negative "
        f"({rated} replies rated, {replies - rated} not)."
    ]
    if len(rows) > 1:
        lines += [f"- {model}: {pos or 0} positive, {neg or 0} negative" for model, pos, neg, _ in rows]
    return "\n".join(lines)
