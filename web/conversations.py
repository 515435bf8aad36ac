"""Finding stored messages (by platform, channel, user, date and text) and reading one conversation as a thread.

Every value a user types becomes a bound parameter; the text is matched as a
literal substring (``%``, ``_`` and ``\\`` escaped), never as a pattern or SQL. The
text index (botkit.storage.text_index) finds the candidates: on PostgreSQL by itself,
on SQLite by joining its FTS5 table when the text has 3 characters or more; the same
``LIKE`` then decides, so the results are those of a scan.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, or_, select

from botkit.storage import (
    SHORTEST_INDEXED,
    ConversationRecord,
    Database,
    FeedbackRecord,
    MessageRecord,
    ModerationEventRecord,
    UserRecord,
    fts_match,
    has_fts_index,
    messages_fts,
)

LIKE_ESCAPE = "\\"


@dataclass(frozen=True, slots=True)
class MessageSearch:
    """What to look for; each field left empty matches everything."""

    platform: str = ""
    channel: str = ""
    user: str = ""  # the platform's user id or the display name
    since: datetime | None = None
    until: datetime | None = None
    text: str = ""
    limit: int = 50


@dataclass(frozen=True, slots=True)
class FoundMessage:
    id: int
    conversation_id: int
    created_at: datetime
    role: str
    platform: str
    channel_id: str
    user: str  # the display name, else the platform's id; "" for the bot
    text: str


@dataclass(slots=True)
class Turn:
    """One message of a thread, with what the bot recorded of a reply and what happened to it since."""

    message: MessageRecord
    user: str
    feedback: list[FeedbackRecord] = field(default_factory=list)
    moderation: list[ModerationEventRecord] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Thread:
    conversation: ConversationRecord
    turns: list[Turn]


def literal_pattern(text: str) -> str:
    """``text`` as a LIKE pattern that matches it anywhere, its own ``%``, ``_`` and ``\\`` taken literally."""
    escaped = text.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2).replace("%", LIKE_ESCAPE + "%").replace("_", LIKE_ESCAPE + "_")
    return f"%{escaped}%"


async def search_messages(db: Database, search: MessageSearch) -> list[FoundMessage]:
    """The newest messages that match ``search`` (deleted ones left out), at most ``search.limit``."""
    query = (
        select(
            MessageRecord.id,
            MessageRecord.conversation_id,
            MessageRecord.created_at,
            MessageRecord.role,
            MessageRecord.platform,
            MessageRecord.channel_id,
            func.coalesce(func.nullif(UserRecord.display_name, ""), UserRecord.platform_user_id, ""),
            MessageRecord.text,
        )
        .outerjoin(UserRecord, UserRecord.id == MessageRecord.user_id)
        .where(MessageRecord.deleted_at.is_(None))
        .limit(search.limit)
    )
    if search.text and "\x00" in search.text and not db.is_sqlite:
        return []  # PostgreSQL's text holds no NUL character (and refuses a query with one): nothing matches
    if search.platform:
        query = query.where(MessageRecord.platform == search.platform)
    if search.channel:
        query = query.where(MessageRecord.channel_id == search.channel)
    if search.since is not None:
        query = query.where(MessageRecord.created_at >= search.since)
    if search.until is not None:
        query = query.where(MessageRecord.created_at < search.until)
    async with db.sessions() as session:
        if search.user:
            # The user's ids first: ix_messages_user_id then finds their messages without reading the others.
            users = select(UserRecord.id).where(
                or_(UserRecord.platform_user_id == search.user, UserRecord.display_name == search.user)
            )
            user_ids = list(await session.scalars(users))
            if not user_ids:
                return []
            query = query.where(MessageRecord.user_id.in_(user_ids))
        newest_first = MessageRecord.id.desc()
        if search.text:
            lowered = search.text.lower()
            # lower() on both sides: SQLite's LIKE ignores case only for ASCII, PostgreSQL's never does.
            # PostgreSQL's trigram index is on lower(text): it serves this very condition.
            query = query.where(func.lower(MessageRecord.text).like(literal_pattern(lowered), escape=LIKE_ESCAPE))
            # FTS5 reads a query only up to a NUL character (an error), which LIKE takes as text.
            indexable = len(lowered) >= SHORTEST_INDEXED and "\x00" not in lowered
            if db.is_sqlite and indexable and await has_fts_index(session):
                # The index finds every row that holds the text (its case folding covers lower()'s) and
                # gives them newest first, so the LIMIT stops it early; the LIKE above keeps exactly those.
                query = query.join(messages_fts, messages_fts.c.rowid == MessageRecord.id).where(
                    fts_match(lowered)
                )
                newest_first = messages_fts.c.rowid.desc()
        rows = (await session.execute(query.order_by(newest_first))).all()
    return [FoundMessage(*row) for row in rows]


async def read_thread(db: Database, conversation_id: int) -> Thread | None:
    """Conversation ``conversation_id`` with every stored message in order, or None when there is none."""
    async with db.sessions() as session:
        conversation = await session.get(ConversationRecord, conversation_id)
        if conversation is None:
            return None
        rows = (
            await session.execute(
                select(MessageRecord, func.coalesce(func.nullif(UserRecord.display_name, ""), UserRecord.platform_user_id, ""))
                .outerjoin(UserRecord, UserRecord.id == MessageRecord.user_id)
                .where(MessageRecord.conversation_id == conversation_id)
                .order_by(MessageRecord.id)
            )
        ).all()
        turns = [Turn(message, user) for message, user in rows]
        ids = [turn.message.id for turn in turns]
        feedback: dict[int, list[FeedbackRecord]] = defaultdict(list)
        moderation: dict[int, list[ModerationEventRecord]] = defaultdict(list)
        if ids:
            for row in await session.scalars(
                select(FeedbackRecord).where(FeedbackRecord.message_id.in_(ids)).order_by(FeedbackRecord.id)
            ):
                feedback[row.message_id].append(row)
            for event in await session.scalars(
                select(ModerationEventRecord)
                .where(ModerationEventRecord.message_id.in_(ids))
                .order_by(ModerationEventRecord.id)
            ):
                assert event.message_id is not None
                moderation[event.message_id].append(event)
        for turn in turns:
            turn.feedback = feedback[turn.message.id]
            turn.moderation = moderation[turn.message.id]
    return Thread(conversation, turns)
