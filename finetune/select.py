"""Selecting what to export: the streamed query over stored messages, the lookups beside it, and pairing.

Messages are read in ``(conversation_id, id)`` order through a server-side
cursor (``stream`` with ``yield_per``), so memory stays flat however many
there are. The pairing keeps only a few unanswered questions per conversation.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from botkit import NO_LORA, REDTEAM_PLATFORM
from botkit.storage import (
    ConversationRecord,
    FeedbackRecord,
    MessageRecord,
    ModerationEventRecord,
    PrivacyRecord,
)

from .examples import Feedback, FeedbackSelection, StoredMessage

BATCH = 2000  # rows per round trip of the cursor
PENDING_QUESTIONS = 256  # unanswered questions remembered per conversation

_COLUMNS = (
    MessageRecord.id,
    MessageRecord.conversation_id,
    MessageRecord.user_id,
    MessageRecord.reply_to_id,
    MessageRecord.role,
    MessageRecord.text,
    MessageRecord.speaker,
    MessageRecord.platform,
    MessageRecord.channel_id,
    MessageRecord.thread_id,
    ConversationRecord.is_dm,
    MessageRecord.platform_message_id,
    MessageRecord.created_at,
    MessageRecord.backend,
    MessageRecord.model,
    MessageRecord.adapter,
    MessageRecord.status,
    MessageRecord.edited_at,
    MessageRecord.deleted_at,
)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which stored exchanges are considered at all.

    Dates (``since`` inclusive, ``until`` exclusive), platforms and channels
    bound every message read, so history comes from the same selection (a reply
    whose question lies before ``since`` counts as a reply without its user
    message). Backends, models and adapters are those of the bot's reply
    (``adapter`` ``"none"`` also matches replies stored without one).
    """

    since: datetime | None = None
    until: datetime | None = None
    platforms: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    backends: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    adapters: tuple[str, ...] = ()
    feedback: FeedbackSelection = "any"

    def conditions(self) -> list[Any]:
        # Red-team probes (`botkit redteam --live`) are attacks, never training data.
        where: list[Any] = [MessageRecord.platform != REDTEAM_PLATFORM]
        if self.since is not None:
            where.append(MessageRecord.created_at >= self.since)
        if self.until is not None:
            where.append(MessageRecord.created_at < self.until)
        if self.platforms:
            where.append(MessageRecord.platform.in_(self.platforms))
        if self.channels:
            where.append(MessageRecord.channel_id.in_(self.channels))
        return where

    def wants_reply(self, reply: StoredMessage) -> bool:
        """Whether the reply's backend, model and adapter are among those selected."""
        if self.backends and reply.backend not in self.backends:
            return False
        if self.models and reply.model not in self.models:
            return False
        if self.adapters:
            adapter = reply.adapter if reply.adapter not in (None, "") else NO_LORA
            return adapter in self.adapters
        return True

    def wants_feedback(self, feedback: Feedback) -> bool:
        if self.feedback == "rated":
            return feedback.rows > 0
        if self.feedback == "unrated":
            return feedback.rows == 0
        return True

    def describe(self) -> list[str]:
        """The selection in words, for the dataset card."""
        parts = []
        if self.since or self.until:
            since = self.since.isoformat() if self.since else "the beginning"
            until = self.until.isoformat() if self.until else "now"
            parts.append(f"messages from {since} until {until}")
        for label, values in (
            ("platforms", self.platforms),
            ("channels", self.channels),
            ("backends", self.backends),
            ("models", self.models),
            ("adapters", self.adapters),
        ):
            if values:
                parts.append(f"{label}: {', '.join(values)}")
        if self.feedback != "any":
            parts.append(f"feedback: {self.feedback} replies only")
        return parts or ["every stored conversation"]


def messages_query(selection: Selection) -> Select[Any]:
    return (
        select(*_COLUMNS)
        .join(ConversationRecord, ConversationRecord.id == MessageRecord.conversation_id)
        .where(*selection.conditions())
        .order_by(MessageRecord.conversation_id, MessageRecord.id)
    )


async def count_messages(session: AsyncSession, selection: Selection) -> int:
    query = select(func.count()).select_from(MessageRecord).where(*selection.conditions())
    return int(await session.scalar(query) or 0)


async def stream_messages(
    session: AsyncSession, selection: Selection, batch: int = BATCH
) -> AsyncIterator[list[StoredMessage]]:
    """The selected messages in batches, oldest conversation first, never all in memory."""
    result = await session.stream(messages_query(selection).execution_options(yield_per=batch))
    async for partition in result.partitions():
        yield [StoredMessage(*row) for row in partition]


async def opted_out_users(session: AsyncSession) -> set[int]:
    """``users`` ids of everyone who said ``/optout``."""
    result = await session.scalars(select(PrivacyRecord.user_id).where(PrivacyRecord.kind == "optout"))
    return set(result.all())


async def moderated_messages(session: AsyncSession) -> set[tuple[int, str]]:
    """``(user id, platform message id)`` of every message a moderation event was recorded for.

    Events name the user's message (``detail.message_id``), both for what the
    user wrote and for the reply to it. Read in batches: only the keys stay.
    """
    keys: set[tuple[int, str]] = set()
    query = select(ModerationEventRecord.user_id, ModerationEventRecord.detail).execution_options(
        yield_per=BATCH
    )
    result = await session.stream(query)
    async for user_id, detail in result:
        message_id = detail.get("message_id") if isinstance(detail, dict) else None
        if user_id is not None and message_id:
            keys.add((user_id, str(message_id)))
    return keys


async def feedback_for(session: AsyncSession, reply_ids: Iterable[int]) -> dict[int, Feedback]:
    """The feedback of each reply that has any, rows read oldest first."""
    ids = list(reply_ids)
    found: dict[int, Feedback] = {}
    for start in range(0, len(ids), 1000):
        rows = await session.execute(
            select(
                FeedbackRecord.message_id,
                FeedbackRecord.kind,
                FeedbackRecord.value,
                FeedbackRecord.score,
                FeedbackRecord.correction,
            )
            .where(FeedbackRecord.message_id.in_(ids[start : start + 1000]))
            .order_by(FeedbackRecord.id)
        )
        for message_id, kind, value, score, correction in rows:
            found.setdefault(message_id, Feedback()).add(kind, value, score, correction)
    return found


@dataclass(slots=True)
class Exchange:
    """A user's message and one reply of the bot to it."""

    question: StoredMessage
    reply: StoredMessage


SKIP_UNKNOWN_ROLE = "unknown role"
SKIP_ORPHAN_REPLY = "reply without its user message"
SKIP_NO_MODEL = "reply without a model"
SKIP_NO_USER = "user message without a user"
SKIP_UNANSWERED = "user message without a reply"


class Pairing:
    """Turns rows, in ``(conversation, id)`` order, into exchanges; counts rows it cannot use, by reason."""

    def __init__(self) -> None:
        self.skipped: Counter[str] = Counter()
        self._conversation: int | None = None
        self._questions: OrderedDict[int, tuple[StoredMessage, bool]] = OrderedDict()  # id -> (row, answered)

    def feed(self, rows: Iterable[StoredMessage]) -> Iterable[Exchange]:
        for row in rows:
            if row.conversation_id != self._conversation:
                self.close()
                self._conversation = row.conversation_id
            if row.role == "user":
                self._questions[row.id] = (row, False)
                if len(self._questions) > PENDING_QUESTIONS:
                    self._forget(*self._questions.popitem(last=False))
            elif row.role == "assistant":
                exchange = self._pair(row)
                if exchange is not None:
                    yield exchange
            else:
                self.skipped[f"{SKIP_UNKNOWN_ROLE} {row.role!r}"] += 1

    def _pair(self, reply: StoredMessage) -> Exchange | None:
        entry = self._questions.get(reply.reply_to_id) if reply.reply_to_id is not None else None
        if entry is None:
            self.skipped[SKIP_ORPHAN_REPLY] += 1
            return None
        question, _ = entry
        self._questions[question.id] = (question, True)
        if question.user_id is None:
            self.skipped[SKIP_NO_USER] += 1
            return None
        if not reply.model:
            self.skipped[SKIP_NO_MODEL] += 1
            return None
        return Exchange(question, reply)

    def _forget(self, _: int, entry: tuple[StoredMessage, bool]) -> None:
        if not entry[1]:
            self.skipped[SKIP_UNANSWERED] += 1

    def close(self) -> None:
        """The conversation ended: count its unanswered questions."""
        while self._questions:
            self._forget(*self._questions.popitem(last=False))
