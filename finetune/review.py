"""The admin review queue: candidate pairs to approve, reject or correct, decisions kept as feedback rows.

A decision is a ``feedback`` row on the bot's reply: kind ``review`` with value
``approved`` or ``rejected`` (the newest decision counts), or kind
``correction`` with the corrected answer (which also approves the pair). The
export reads them: rejected pairs are removed, corrections replace answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from botkit import ExportError
from botkit.ops import pii_scrubber
from botkit.storage import (
    Database,
    FeedbackRecord,
    MessageRecord,
    ModerationEventRecord,
    PrivacyRecord,
    utcnow,
)

from .examples import APPROVED, CORRECTION, REJECTED, REVIEW, Feedback
from .select import feedback_for

State = Literal["pending", "approved", "rejected", "corrected", "all"]
Votes = Literal["any", "up", "down", "none"]
Presence = Literal["any", "with", "without"]
PAGE = 200
SHOWN_CHARS = 300


@dataclass(slots=True)
class Candidate:
    """A pair in the queue: the user's message and the bot's reply (both scrubbed of PII for display)."""

    reply_id: int
    created_at: datetime
    platform: str
    channel_id: str
    question: str
    answer: str
    state: str
    correction: str | None
    truncated: bool = False  # the answer was cut at max_tokens: the export drops it unless corrected
    up: int = 0  # votes (reactions, scores) for the answer
    down: int = 0
    moderation: tuple[str, ...] = ()  # the pair's moderation events: "in: flag injection", "out: redact email"


@dataclass(frozen=True, slots=True)
class CandidateFilter:
    """Which pairs to list besides their state (``botkit finetune review list``'s flags of the same names)."""

    votes: Votes = "any"  # "up": more votes up than down; "down": more down than up; "none": no votes
    moderation: Presence = "any"  # "with": a moderation event on the question or the answer
    truncated: Presence = "any"  # "with": the answer was cut at max_tokens

    def keeps(self, feedback: Feedback, moderation: tuple[str, ...], truncated: bool) -> bool:
        if self.votes == "up" and feedback.up <= feedback.down:
            return False
        if self.votes == "down" and feedback.down <= feedback.up:
            return False
        if self.votes == "none" and (feedback.up or feedback.down):
            return False
        return _present(self.moderation, bool(moderation)) and _present(self.truncated, truncated)


def _present(wanted: Presence, present: bool) -> bool:
    return wanted == "any" or (wanted == "with") == present


def state_of(feedback: Feedback) -> str:
    if feedback.review == REJECTED:
        return "rejected"
    if feedback.correction is not None:
        return "corrected"
    if feedback.review == APPROVED:
        return "approved"
    return "pending"


def _candidates_query():  # type: ignore[no-untyped-def]
    question = aliased(MessageRecord)
    opted_out = select(PrivacyRecord.user_id).where(PrivacyRecord.kind == "optout")
    return (
        select(
            MessageRecord.id,
            question.id,
            question.created_at,
            question.platform,
            question.channel_id,
            question.text,
            MessageRecord.text,
            MessageRecord.status,
        )
        .join(question, question.id == MessageRecord.reply_to_id)
        .where(
            MessageRecord.role == "assistant",
            # A cut answer is listed too: a correction is what makes it exportable.
            MessageRecord.status.in_(("completed", "truncated")),
            MessageRecord.deleted_at.is_(None),
            question.deleted_at.is_(None),
            question.user_id.is_not(None),
            question.user_id.not_in(opted_out),
        )
        .order_by(MessageRecord.id.desc())
    )


async def list_candidates(
    db: Database, state: State = "pending", limit: int = 20, only: CandidateFilter = CandidateFilter()
) -> list[Candidate]:
    """The newest exportable pairs in ``state`` that ``only`` keeps, at most ``limit``; texts scrubbed and shortened."""
    scrub = pii_scrubber()
    found: list[Candidate] = []
    before: int | None = None
    async with db.sessions() as session:
        while len(found) < limit:
            query = _candidates_query().limit(PAGE)
            if before is not None:
                query = query.where(MessageRecord.id < before)
            rows = (await session.execute(query)).all()
            if not rows:
                break
            before = rows[-1][0]
            feedback = await feedback_for(session, [row[0] for row in rows])
            events = await _moderation_of(session, [row[0] for row in rows] + [row[1] for row in rows])
            for reply_id, question_id, created_at, platform, channel_id, question, answer, status in rows:
                given = feedback.get(reply_id) or Feedback()
                current = state_of(given)
                if state != "all" and current != state:
                    continue
                moderation = tuple(events.get(question_id, []) + events.get(reply_id, []))
                if not only.keeps(given, moderation, status == "truncated"):
                    continue
                correction = given.correction
                found.append(
                    Candidate(
                        reply_id,
                        created_at,
                        platform,
                        channel_id,
                        _shown(scrub(question)[0]),
                        _shown(scrub(answer)[0]),
                        current,
                        _shown(scrub(correction)[0]) if correction else None,
                        status == "truncated",
                        given.up,
                        given.down,
                        moderation,
                    )
                )
                if len(found) == limit:
                    break
    return found


async def _moderation_of(session: AsyncSession, message_ids: list[int]) -> dict[int, list[str]]:
    """The moderation events of each message, oldest first, as "in: flag injection"."""
    found: dict[int, list[str]] = {}
    rows = await session.execute(
        select(
            ModerationEventRecord.message_id,
            ModerationEventRecord.direction,
            ModerationEventRecord.action,
            ModerationEventRecord.category,
        )
        .where(ModerationEventRecord.message_id.in_(message_ids))
        .order_by(ModerationEventRecord.id)
    )
    for message_id, direction, action, category in rows.all():
        found.setdefault(message_id, []).append(f"{direction}: {action} {category}")
    return found


def _shown(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


async def _check_reviewable(db: Database, reply_id: int) -> None:
    async with db.sessions() as session:
        reply = await session.get(MessageRecord, reply_id)
        if reply is None or reply.role != "assistant":
            raise ExportError(
                f"there is no bot reply with id {reply_id}: `botkit finetune review list` shows the ids"
            )
        question = await session.get(MessageRecord, reply.reply_to_id) if reply.reply_to_id else None
        if question is None or question.user_id is None:
            raise ExportError(f"reply {reply_id} has no stored user message: it is never exported")
        if reply.deleted_at is not None or question.deleted_at is not None:
            raise ExportError(f"reply {reply_id} belongs to a deleted message: it is never exported")
        opted_out = await session.scalar(
            select(PrivacyRecord.id).where(
                PrivacyRecord.user_id == question.user_id, PrivacyRecord.kind == "optout"
            )
        )
        if opted_out is not None:
            raise ExportError(f"reply {reply_id} answers a user who opted out: it is never exported")


async def decide(db: Database, reply_id: int, decision: Literal["approved", "rejected"]) -> None:
    """Approve or reject the pair of bot reply ``reply_id``."""
    await _check_reviewable(db, reply_id)
    async with db.session() as session:
        session.add(FeedbackRecord(message_id=reply_id, kind=REVIEW, value=decision, created_at=utcnow()))


async def correct(db: Database, reply_id: int, text: str) -> None:
    """Store ``text`` as the right answer to the pair of reply ``reply_id`` (and approve the pair)."""
    if not text.strip():
        raise ExportError("the correction is empty: give the answer the bot should have written")
    await _check_reviewable(db, reply_id)
    async with db.session() as session:
        now = utcnow()
        session.add(FeedbackRecord(message_id=reply_id, kind=CORRECTION, correction=text, created_at=now))
        session.add(FeedbackRecord(message_id=reply_id, kind=REVIEW, value=APPROVED, created_at=now))
