"""A user's stored data, their opt-out, and forgetting them, by platform and the platform's user id.

The one implementation of what the privacy plugin's ``/mydata``, ``/optout`` /
``/optin`` and ``/forgetme`` do in chat, ``botkit privacy show|forget`` does in a
shell and the web console's privacy page does for an operator: none of them needs
a chat message, only ``platform`` and the platform's id of the user.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Select, and_, delete, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from botkit.errors import UnknownUser
from botkit.storage.database import Database, user_id_for
from botkit.storage.models import (
    ConversationRecord,
    DeadLetterRecord,
    FeedbackRecord,
    MessageRecord,
    ModerationEventRecord,
    PluginStateRecord,
    PrivacyRecord,
    UserRecord,
)
from botkit.storage.text_index import compact_text_index
from botkit.types import Message

if TYPE_CHECKING:
    from botkit.api import BotAPI

log = logging.getLogger("botkit.storage.privacy")

OPTOUT = "optout"  # the PrivacyRecord kind of an opt-out of training exports
PUT_OFF = "a plugin cannot let go of the user now (its pending writes cannot reach the database)"


@dataclass(frozen=True, slots=True)
class StoredUser:
    """A ``users`` row: who the bot knows, on which platform."""

    id: int
    platform: str
    platform_user_id: str
    display_name: str
    created_at: datetime
    last_seen_at: datetime

    @property
    def key(self) -> str:
        """``platform:id``, as config and ``Message.user_key`` name a user."""
        return f"{self.platform}:{self.platform_user_id}"


@dataclass(frozen=True, slots=True)
class StoredMessage:
    created_at: datetime
    platform: str
    channel_id: str
    text: str


@dataclass(frozen=True, slots=True)
class Place:
    """A channel (or DM) where the user wrote: how many messages, the last when."""

    platform: str
    channel_id: str
    messages: int
    last_at: datetime


@dataclass(frozen=True, slots=True)
class UserData:
    """What is stored about one user, as ``/mydata`` tells them."""

    user: StoredUser
    messages: int  # their own messages (the bot's replies not counted)
    feedback: int  # feedback entries they gave
    moderation_events: int  # moderation events of theirs
    opted_out_at: datetime | None  # when they opted out of training exports; None: not opted out
    places: list[Place]  # where they wrote, most messages first
    newest: list[StoredMessage]  # their newest messages, oldest of them first (only when asked for)

    @property
    def opted_out(self) -> bool:
        return self.opted_out_at is not None


@dataclass(frozen=True, slots=True)
class UserRows:
    """How many rows of each kind name a user: what forgetting them deletes (or deleted)."""

    messages: int = 0  # theirs, the bot's replies to them, and every message of a conversation keyed to them
    conversations: int = 0  # their DMs and per-user conversations
    feedback: int = 0
    moderation_events: int = 0
    privacy_records: int = 0
    users: int = 0
    dead_letters: int = 0

    def describe(self) -> str:
        """``3 messages, 1 conversation, ...``: every kind, counts of 0 included."""
        names = {
            "messages": "message", "conversations": "conversation", "feedback": "feedback entry",
            "moderation_events": "moderation event", "privacy_records": "privacy record",
            "users": "user row", "dead_letters": "dead letter",
        }  # fmt: skip
        return ", ".join(plural(getattr(self, field.name), names[field.name]) for field in fields(self))


def plural(count: int, noun: str) -> str:
    if count == 1:
        return f"1 {noun}"
    return f"{count} {noun[:-1] + 'ies' if noun.endswith('entry') else noun + 's'}"


# -- finding a user -----------------------------------------------------------------


async def user_record(session: AsyncSession, platform: str, platform_user_id: str) -> UserRecord | None:
    """The ``users`` row of the platform's user id, if the bot stored one."""
    return await session.scalar(
        select(UserRecord).where(
            UserRecord.platform == platform, UserRecord.platform_user_id == platform_user_id
        )
    )


def stored_user(row: UserRecord) -> StoredUser:
    return StoredUser(
        row.id, row.platform, row.platform_user_id, row.display_name, row.created_at, row.last_seen_at
    )


async def find_user(db: Database, platform: str, who: str) -> StoredUser:
    """The user ``who`` names on ``platform``: their platform id, else their display name (case ignored).

    Raises ``UnknownUser`` saying why: no user of that platform at all (naming the
    platforms the database has), nobody by that id or name, or a name several users share
    (naming their ids, to pick one).
    """
    platform, who = platform.strip(), who.strip()
    if not platform or not who:
        raise UnknownUser("give the platform (e.g. slack, discord) and the user's id or display name")
    async with db.sessions() as session:
        row = await user_record(session, platform, who)
        if row is not None:
            return stored_user(row)
        named = list(
            await session.scalars(
                select(UserRecord)
                .where(UserRecord.platform == platform, func.lower(UserRecord.display_name) == who.lower())
                .order_by(UserRecord.id)
            )
        )
        if len(named) == 1:
            return stored_user(named[0])
        if named:
            ids = ", ".join(row.platform_user_id for row in named)
            raise UnknownUser(f"{len(named)} users on {platform} are called {who!r} (ids {ids}): give the id")
    platforms = await user_platforms(db)
    if platform not in platforms:
        stored = ", ".join(platforms) if platforms else "none yet"
        raise UnknownUser(f"no user is stored on platform {platform!r} (platforms with users: {stored})")
    raise UnknownUser(f"no user {who!r} is stored on {platform}: give their platform id or display name")


async def user_platforms(db: Database) -> list[str]:
    """The platforms the database has users of, sorted."""
    async with db.sessions() as session:
        return list(
            await session.scalars(select(UserRecord.platform).distinct().order_by(UserRecord.platform))
        )


# -- what is stored -------------------------------------------------------------------


async def is_opted_out(session: AsyncSession, user_id: int) -> bool:
    """Whether the ``users`` row ``user_id`` opted out of training exports."""
    return await opted_out_at(session, user_id) is not None


async def opted_out_at(session: AsyncSession, user_id: int) -> datetime | None:
    return await session.scalar(
        select(func.min(PrivacyRecord.created_at)).where(
            PrivacyRecord.user_id == user_id, PrivacyRecord.kind == OPTOUT
        )
    )


async def user_data(db: Database, platform: str, platform_user_id: str, messages: int = 0) -> UserData | None:
    """What is stored about the user (None: nothing, they have no ``users`` row), with their newest
    ``messages`` messages' text (0: none, counts only)."""
    async with db.sessions() as session:
        row = await user_record(session, platform, platform_user_id)
        if row is None:
            return None

        async def count(model: Any) -> int:
            return (
                await session.scalar(select(func.count()).select_from(model).where(model.user_id == row.id))
                or 0
            )

        places = (
            await session.execute(
                select(
                    MessageRecord.platform,
                    MessageRecord.channel_id,
                    func.count(),
                    func.max(MessageRecord.created_at),
                )
                .where(MessageRecord.user_id == row.id)
                .group_by(MessageRecord.platform, MessageRecord.channel_id)
                .order_by(func.count().desc(), MessageRecord.channel_id)
            )
        ).all()
        newest = []
        if messages > 0:
            newest = (
                await session.execute(
                    select(
                        MessageRecord.created_at,
                        MessageRecord.platform,
                        MessageRecord.channel_id,
                        MessageRecord.text,
                    )
                    .where(MessageRecord.user_id == row.id)
                    .order_by(MessageRecord.id.desc())
                    .limit(messages)
                )
            ).all()
        return UserData(
            user=stored_user(row),
            messages=await count(MessageRecord),
            feedback=await count(FeedbackRecord),
            moderation_events=await count(ModerationEventRecord),
            opted_out_at=await opted_out_at(session, row.id),
            places=[Place(*place) for place in places],
            newest=[StoredMessage(*message) for message in reversed(newest)],
        )


# -- opting out -------------------------------------------------------------------------


async def opt_out(
    db: Database, platform: str, platform_user_id: str, display_name: str = "", via: str = ""
) -> bool:
    """Mark the user's messages never to be exported for training (their ``users`` row made if missing).

    ``via``: where it was asked for (a platform, ``console``), kept with the record.
    False when they had already opted out (nothing changes).
    """
    async with db.session() as session:
        user_id = await user_id_for(session, platform, platform_user_id, display_name)
        if await is_opted_out(session, user_id):
            return False
        session.add(PrivacyRecord(user_id=user_id, kind=OPTOUT, detail={"via": via or platform}))
    return True


async def opt_in(db: Database, platform: str, platform_user_id: str) -> bool:
    """Undo ``opt_out``. False when the user had not opted out (nothing changes)."""
    async with db.session() as session:
        row = await user_record(session, platform, platform_user_id)
        if row is None or not await is_opted_out(session, row.id):
            return False
        await session.execute(
            delete(PrivacyRecord).where(PrivacyRecord.user_id == row.id, PrivacyRecord.kind == OPTOUT)
        )
    return True


# -- forgetting -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Theirs:
    """The rows that name one user, as queries: the same for counting them and for deleting them."""

    keyed: Select[Any]  # ids of the conversations whose key names them
    messages: ColumnElement[bool]  # their messages, and every message of those conversations
    own: Select[Any]  # ids of those messages
    replies: Select[Any]  # ids of the replies to them
    user_id: int | None

    def by_user(self, column: Any) -> ColumnElement[bool]:
        # Never ``column == None``: that is IS NULL, which matches every bot reply.
        return column == self.user_id if self.user_id is not None else false()

    def gone(self) -> ColumnElement[bool]:
        return or_(MessageRecord.id.in_(self.own), MessageRecord.id.in_(self.replies))

    def about(self, record: Any) -> ColumnElement[bool]:
        """Feedback or moderation events: theirs, or on a message that goes."""
        return or_(
            self.by_user(record.user_id), record.message_id.in_(self.own), record.message_id.in_(self.replies)
        )


def _theirs(platform: str, author: str, user_id: int | None) -> _Theirs:
    dm_key, user_suffix = Message.user_conversation_keys(platform, author)
    keyed = select(ConversationRecord.id).where(
        or_(
            ConversationRecord.scope_key == dm_key,
            and_(
                ConversationRecord.scope_key.startswith(f"{platform}:", autoescape=True),
                ConversationRecord.scope_key.endswith(user_suffix, autoescape=True),
            ),
        )
    )
    by_user = MessageRecord.user_id == user_id if user_id is not None else false()
    messages = or_(
        by_user,
        and_(MessageRecord.platform == platform, MessageRecord.author_id == author),
        MessageRecord.conversation_id.in_(keyed),
    )
    own = select(MessageRecord.id).where(messages)
    replies = select(MessageRecord.id).where(MessageRecord.reply_to_id.in_(own))
    return _Theirs(keyed, messages, own, replies, user_id)


async def _named_dead_letters(session: AsyncSession, platform: str, author: str) -> list[int]:
    """The dead letters (records the database refused, kept whole for repair) that name the user."""
    keys = Message.user_conversation_keys(platform, author)
    letters = await session.execute(select(DeadLetterRecord.id, DeadLetterRecord.record))
    return [row.id for row in letters if names_user(row.record, platform, author, keys)]


async def count_user_rows(db: Database, platform: str, platform_user_id: str) -> UserRows:
    """What ``delete_user_rows`` would delete now, counted (nothing is deleted)."""
    async with db.snapshot() as session:
        row = await user_record(session, platform, platform_user_id)
        theirs = _theirs(platform, platform_user_id, row.id if row is not None else None)

        async def count(model: Any, where: ColumnElement[bool]) -> int:
            return await session.scalar(select(func.count()).select_from(model).where(where)) or 0

        return UserRows(
            messages=await count(MessageRecord, theirs.gone()),
            conversations=await count(ConversationRecord, ConversationRecord.id.in_(theirs.keyed)),
            feedback=await count(FeedbackRecord, theirs.about(FeedbackRecord)),
            moderation_events=await count(ModerationEventRecord, theirs.about(ModerationEventRecord)),
            privacy_records=await count(PrivacyRecord, theirs.by_user(PrivacyRecord.user_id)),
            users=int(row is not None),
            dead_letters=len(await _named_dead_letters(session, platform, platform_user_id)),
        )


async def delete_user_rows(
    db: Database, platform: str, platform_user_id: str, plugin_state: Sequence[tuple[str, str]] = ()
) -> UserRows:
    """Delete every row that names the user, in one transaction; returns how many of each went.

    Their messages (by ``users`` row or by platform and author id), the bot's
    replies to them, every message of a conversation whose key names them (their
    DMs, per-user conversations), those conversations, feedback given by them or
    on any of those messages, their moderation events, privacy records, user row
    and the dead letters that name them; ``plugin_state``: the ``(plugin, key)``
    rows of ``plugin_state`` a plugin keeps about them (the pending ``/forgetme``).
    SQLite's text index is rewritten without their text, then the WAL is
    checkpointed, so the file keeps no copy. Call
    ``forget_user`` instead, unless no plugin can hold anything of the user.
    """
    author = platform_user_id
    async with db.session() as session:
        for plugin, key in plugin_state:
            await session.execute(
                delete(PluginStateRecord).where(
                    PluginStateRecord.plugin == plugin, PluginStateRecord.key == key
                )
            )
        row = await user_record(session, platform, author)
        theirs = _theirs(platform, author, row.id if row is not None else None)

        async def deleted(statement: Any) -> int:
            return (await session.execute(statement)).rowcount or 0

        feedback = await deleted(delete(FeedbackRecord).where(theirs.about(FeedbackRecord)))
        events = await deleted(delete(ModerationEventRecord).where(theirs.about(ModerationEventRecord)))
        # Replies first: deleting a question sets its replies' reply_to_id to NULL.
        messages = await deleted(
            delete(MessageRecord).where(MessageRecord.id.in_(theirs.replies.scalar_subquery()))
        )
        messages += await deleted(delete(MessageRecord).where(theirs.messages))
        conversations = await deleted(
            delete(ConversationRecord).where(ConversationRecord.id.in_(theirs.keyed.scalar_subquery()))
        )
        privacy = 0
        if row is not None:
            privacy = await deleted(delete(PrivacyRecord).where(PrivacyRecord.user_id == row.id))
            await session.delete(row)
        named = await _named_dead_letters(session, platform, author)
        if named:
            await session.execute(delete(DeadLetterRecord).where(DeadLetterRecord.id.in_(named)))
        if messages:
            await compact_text_index(session)
    if not await db.checkpoint():
        log.info("forgetting a user: the WAL is in use; SQLite's next checkpoint removes the old copies")
    return UserRows(messages, conversations, feedback, events, privacy, int(row is not None), len(named))


async def forget_user(
    bot: BotAPI, platform: str, platform_user_id: str, plugin_state: Sequence[tuple[str, str]] = ()
) -> UserRows | None:
    """Forget a user as ``/forgetme confirm`` does: every plugin lets go of them (``bot.forget_user``:
    pending writes stored, caches dropped), then ``delete_user_rows``.

    None when a plugin cannot do its part now (e.g. its pending writes cannot reach the
    database): nothing is deleted; try again later.
    """
    if not await bot.forget_user(platform, platform_user_id):
        return None
    return await delete_user_rows(bot.db, platform, platform_user_id, plugin_state)


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
    if any(
        text == dm_key or (text.startswith(f"{platform}:") and text.endswith(user_suffix)) for text in strings
    ):
        return True
    return author in strings and platform in strings
