"""A database with known timestamps for the overview's tests: what is stored when, and what each bucket must hold.

``NOW`` is 2026-11-20 15:30 UTC. The last 24 hours are the buckets from 2026-11-19
16:00 to 2026-11-20 15:00; the week's days are 2026-11-14 to 2026-11-20.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from botkit.storage import (
    ConversationRecord,
    FeedbackRecord,
    MessageRecord,
    ModerationEventRecord,
    UserRecord,
)

NOW = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)


def at(day: int, hour: int, minute: int = 0, second: int = 0, microsecond: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, second, microsecond, tzinfo=UTC)


# (when, role): users' messages and the bot's replies.
MESSAGES = [
    *[(at(20, 15, 5), "user")] * 3,  # this hour: the last bucket of 24
    *[(at(20, 15, 6), "assistant")] * 2,
    (at(20, 14, 59, 59, 999999), "user"),  # the hour before, to its last microsecond
    *[(at(19, 16), "user")] * 2,  # the first of the 24 hours, at its first instant
    (at(19, 15, 59, 59), "user"),  # just before the 24 hours: in 2026-11-19's day only
    (at(14, 0), "assistant"),  # the week's first day, at its first instant
    (at(13, 23, 59, 59), "user"),  # before the week: nowhere
    (at(20, 16, 0), "user"),  # after this hour (a clock ahead): nowhere
]
# (when, kind, score): 👍 is a reaction scored above 0, 👎 one at or below; others are no votes.
FEEDBACK = [
    (at(20, 15, 10), "reaction", 1),
    (at(20, 15, 11), "reaction", 1),
    (at(20, 15, 20), "reaction", -1),
    (at(20, 15, 21), "correction", None),
    (at(20, 15, 22), "reaction", None),
    (at(18, 9), "reaction", -1),
]
# (when, action, category)
MODERATION = [
    (at(20, 1), "block", "email"),
    (at(20, 2), "block", "email"),
    (at(20, 3), "flag", "injection"),
    (at(18, 23, 59, 59), "redact", "phone"),
    (at(13, 12), "block", "email"),  # before the week
]


async def seed_overview(db: Any) -> None:
    """Store the rows above (one conversation, one user) directly, with their timestamps."""
    await seed_rows(db, MESSAGES, FEEDBACK, MODERATION)


async def seed_rows(
    db: Any,
    messages: list[tuple[datetime, str]],
    feedback: list[tuple[datetime, str, int | None]],
    moderation: list[tuple[datetime, str, str]],
) -> None:
    """Store ``messages`` (when, role), ``feedback`` (when, kind, score, on the first reply) and ``moderation``
    events (when, action, category) in one conversation of one user."""
    async with db.session() as session:
        user = UserRecord(platform="console", platform_user_id="dana", display_name="Dana")
        conversation = ConversationRecord(
            scope_key="console:support", platform="console", channel_id="support"
        )
        session.add_all([user, conversation])
        await session.flush()
        rows = [
            MessageRecord(
                conversation_id=conversation.id, user_id=user.id if role == "user" else None, role=role,
                text=f"message {number}", platform="console", channel_id="support", created_at=when,
            )
            for number, (when, role) in enumerate(messages)
        ]  # fmt: skip
        session.add_all(rows)
        await session.flush()
        reply = next(row for row in rows if row.role == "assistant")
        session.add_all(
            FeedbackRecord(
                message_id=reply.id, user_id=user.id, kind=kind, value="👍", score=score, created_at=when
            )
            for when, kind, score in feedback
        )
        session.add_all(
            ModerationEventRecord(
                user_id=user.id, direction="in", category=category, action=action, created_at=when
            )
            for when, action, category in moderation
        )
