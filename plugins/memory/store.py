"""Writes conversations to the database in order, survives outages with a spool, and reads history back."""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from botkit import Metrics, ReplyStatus
from botkit.storage import (
    ConversationRecord,
    Database,
    MessageRecord,
    WriteBehind,
    insert_new,
    is_rejection,
    rejection_reason,
    user_id_for,
    utcnow,
    write_dead_letter,
    write_moderation_events,
)

from .changes import (
    DELIVERY_UPDATE,
    MessageKey,
    RememberedChanges,
    change_statement,
    delivered_columns,
    delivery_parameters,
    exchange_key,
    latest_changes,
    patch_exchange,
    patch_pending,
)
from .spool import Spool

log = logging.getLogger("botkit.plugins.memory")

CACHED_CONVERSATIONS = 10_000
# Reads of a conversation with a pending deleted message that a write overlapped (then the best effort).
CONSISTENT_READ_TRIES = 3
WRITE_WAIT = 5.0  # seconds such a read waits for the write under way before reading again


@dataclass(slots=True)
class CachedHistory:
    turns: deque[StoredTurn]
    loaded_at: float


@dataclass(frozen=True, slots=True)
class StoredTurn:
    role: str
    text: str
    speaker: str | None
    token_count: int


def deleted_user(record: dict[str, Any]) -> bool:
    """Whether ``record`` is an exchange whose user message was deleted while it waited."""
    return record["kind"] == "exchange" and bool(record["user"].get("deleted_at"))


def turns_of(record: dict[str, Any]) -> list[StoredTurn]:
    """The history turns a pending exchange contributes (not a deleted message, nor a reply that is not history)."""
    if record["kind"] != "exchange":
        return []
    user = record["user"]
    turns: list[StoredTurn] = []
    if not user.get("deleted_at"):
        turns.append(StoredTurn("user", user["text"], user["speaker"], user["tokens"]))
    reply = record.get("reply")
    if reply is not None and ReplyStatus(reply["status"]).in_history:
        turns.append(StoredTurn("assistant", reply["text"], None, reply["tokens"]))
    return turns


class MemoryStore:
    """The ordered write queue (exchanges, resets, edits and deletions) in front of the database.

    Records are written in arrival order by a ``WriteBehind`` writer. Each is
    appended to the on-disk spool (the journal) when it is added and leaves it
    once written, so neither an outage nor a killed process loses one; while the
    database is unreachable reads merge the pending records in, so a
    conversation goes on.
    """

    def __init__(
        self,
        db: Database,
        spool: Spool,
        retry_interval: float,
        cache_seconds: float = 0.0,
        max_pending: int = 100_000,
        write_delay: float = 0.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.db = db
        self.cache_seconds = cache_seconds
        # Recent turns per conversation as this process knows them (database + what it added
        # since), so that most messages need no database read. See history().
        self._cache: OrderedDict[str, CachedHistory] = OrderedDict()
        self.spool = spool
        self.writer: WriteBehind[dict[str, Any]] = WriteBehind(
            self._write,
            name="memory",
            what="records",
            down=(SQLAlchemyError, OSError),
            retry_interval=retry_interval,
            log=log,
            max_pending=max_pending,
            linger=write_delay,
            spool=spool,
            write_ahead=True,
            # A refused write is not an outage: ids cached from rows deleted behind our back
            # (tables re-created, a user removed) are dropped and the batch tried once more;
            # a record still refused is kept in dead_letters and the rest is written.
            rejected=is_rejection,
            reason=rejection_reason,
            recover=self.forget_cached,
            dead_letter=self._dead_letter,
            metrics=metrics,
        )
        self._users: dict[tuple[str, str], int] = {}
        self._remembered = RememberedChanges()
        # Counts changes added: a history read that overlapped one does not go into the cache.
        self._changes_added = 0

    @property
    def pending(self) -> Sequence[dict[str, Any]]:
        """The records not in the database yet, oldest first."""
        return self.writer.pending

    @property
    def outage(self) -> bool:
        """Whether the database was down at the last attempt to write."""
        return self.writer.outage

    @property
    def lost(self) -> int:
        """Records dropped since start (the queue was full for too long)."""
        return self.writer.counts.dropped

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        self.writer.start()

    async def flush(self, timeout: float) -> bool:
        """Wait until everything pending is in the database; spool what is not after ``timeout``."""
        return await self.writer.flush(timeout)

    async def written_up_to_now(self, timeout: float) -> bool:
        """Wait until every record added so far is in the database; False after ``timeout``."""
        return await self.writer.written_up_to_now(timeout)

    async def close(self, timeout: float) -> None:
        await self.writer.close(timeout)
        self.spool.release()

    # -- writing ---------------------------------------------------------------

    def add(self, record: dict[str, Any]) -> None:
        record.setdefault("id", uuid.uuid4().hex)
        if record["kind"] == "change":
            self._changes_added += 1
            self._remembered.remember(record)
            self._patch_pending(record)
        elif record["kind"] != "delivered":
            if record["kind"] == "exchange":
                early = self._remembered.take(exchange_key(record))
                if early is not None:
                    patch_exchange(record, early)
            cached = self._cache.get(record["scope_key"])
            if cached is not None:
                if record["kind"] == "reset":
                    cached.turns.clear()
                else:
                    cached.turns.extend(turns_of(record))
        self.writer.add(record)

    def _patch_pending(self, change: dict[str, Any]) -> None:
        """Apply an edit or deletion to its message's exchange if that is still pending."""
        patched = patch_pending(self.writer.pending, change)
        for record in patched:
            self._cache.pop(record["scope_key"], None)
        # The spool must not keep the text the author changed or deleted.
        self.writer.pending_changed(patched)

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        """Write ``batch`` in one transaction, in order; the writer retries it while the database is down.

        Writing a batch again stores nothing twice: an exchange already stored
        (under its key) is skipped, and so is a reset that a later stored exchange
        shows was written; edits set what they set. So a batch that was committed
        but not taken out of the spool (a crash, a lost acknowledgement) is safe
        to write again. (The messages' INSERT skips stored rows in any case.)
        """
        users: dict[tuple[str, str], int] = {}
        async with self.db.session() as session:
            # Only a batch written before (a retry, a replayed spool) can hold what is stored already.
            stored = await _stored_exchanges(session, batch) if self.writer.maybe_written else set()
            skipped = stored | _resets_written(batch, stored)
            conversations = await self._active_conversations(session, batch, skipped)
            rows: list[dict[str, Any]] = []
            exchanges: list[dict[str, Any]] = []  # the records ``rows`` come from
            replies: dict[str, dict[str, Any]] = {}  # reply rows among ``rows``, by exchange key
            deliveries: list[dict[str, Any]] = []  # for replies written before: one UPDATE at the end
            for record in batch:
                if record["id"] in skipped:
                    continue
                if record["kind"] == "delivered":
                    # Only the reply's row changes: into its INSERT when that is still to come.
                    reply_row = replies.get(record["exchange"])
                    if reply_row is not None:
                        reply_row.update(delivered_columns(record))
                    else:
                        deliveries.append(delivery_parameters(record))
                    continue
                if record["kind"] == "change":
                    # The message's own row may be in this batch: write what comes before first.
                    await self._insert_messages(session, rows, exchanges, users)
                    rows, exchanges, replies = [], [], {}
                    await session.execute(change_statement(record))
                    continue
                if record["kind"] == "reset":
                    await session.execute(
                        update(ConversationRecord)
                        .where(
                            ConversationRecord.scope_key == record["scope_key"],
                            ConversationRecord.ended_at.is_(None),
                        )
                        .values(ended_at=_time(record["at"]))
                    )
                    conversations.pop(record["scope_key"], None)
                    continue
                user_id = await self._user_id(session, record, users)
                conversation_id = conversations.get(record["scope_key"])
                if conversation_id is None:
                    conversation_id = conversations[record["scope_key"]] = await self._new_conversation(
                        session, record
                    )
                exchange_rows = _exchange_rows(record, conversation_id, user_id)
                rows.extend(exchange_rows)
                exchanges.append(record)
                if len(exchange_rows) > 1:
                    replies[record["id"]] = exchange_rows[1]
            await self._insert_messages(session, rows, exchanges, users)
            if deliveries:
                await session.execute(DELIVERY_UPDATE, deliveries)
        self._users.update(users)  # only ids that were committed

    async def _dead_letter(self, record: dict[str, Any], reason: str) -> None:
        await write_dead_letter(self.db, "memory", record.get("id"), record, reason)

    async def _user_id(
        self, session: AsyncSession, record: dict[str, Any], fresh: dict[tuple[str, str], int]
    ) -> int:
        key = (record["platform"], record["user"]["author_id"])
        known = fresh.get(key) or self._users.get(key)
        if known is None:
            known = fresh[key] = await user_id_for(session, key[0], key[1], record["user"]["name"])
        return known

    @staticmethod
    async def _active_conversations(
        session: AsyncSession, batch: list[dict[str, Any]], skipped: set[str]
    ) -> dict[str, int]:
        """The newest open conversation of each scope the batch writes to, in one query."""
        keys = {r["scope_key"] for r in batch if r["kind"] == "exchange" and r["id"] not in skipped}
        if not keys:
            return {}
        result = await session.execute(
            select(ConversationRecord.scope_key, func.max(ConversationRecord.id))
            .where(ConversationRecord.scope_key.in_(keys), ConversationRecord.ended_at.is_(None))
            .group_by(ConversationRecord.scope_key)
        )
        return {scope_key: conversation_id for scope_key, conversation_id in result}

    @staticmethod
    async def _new_conversation(session: AsyncSession, record: dict[str, Any]) -> int:
        conversation = ConversationRecord(
            scope_key=record["scope_key"],
            platform=record["platform"],
            channel_id=record["channel_id"],
            thread_id=record["thread_id"],
            is_dm=record["is_dm"],
            started_at=_time(record["at"]),
        )
        session.add(conversation)
        await session.flush()
        return conversation.id

    @staticmethod
    async def _insert_messages(
        session: AsyncSession,
        rows: list[dict[str, Any]],
        exchanges: list[dict[str, Any]],
        users: dict[tuple[str, str], int],
    ) -> None:
        """One INSERT for the batch's messages, in order; then each reply points at its question,
        and each exchange's moderation events are stored, pointing at its rows.

        A statement per message made the database round trips, not the rows, the
        cost of writing (and of every message the pipeline answers meanwhile). A row
        whose exchange is stored already is skipped by the database itself.
        """
        if not rows:
            return
        statement = insert_new(session, MessageRecord.__table__, "exchange_key", "role").returning(
            MessageRecord.id, MessageRecord.exchange_key, MessageRecord.role
        )
        result = await session.execute(statement, rows)
        ids = {(key, role): row_id for row_id, key, role in result}
        links = [
            {"id": ids[(record["id"], "assistant")], "reply_to_id": ids[(record["id"], "user")]}
            for record in exchanges
            if (record["id"], "assistant") in ids and (record["id"], "user") in ids
        ]
        if links:
            await session.execute(update(MessageRecord), links)
        for record in exchanges:
            events = record.get("moderation_events")
            if events and (record["id"], "user") in ids:
                directions = {"in": ids[(record["id"], "user")], "out": ids.get((record["id"], "assistant"))}
                await write_moderation_events(session, events, users, directions)

    # -- reading ---------------------------------------------------------------

    def forget_cached(self) -> None:
        """Drop every cached history and user id (rows were deleted behind the caches' back)."""
        self._cache.clear()
        self._users.clear()

    def forget_conversation(self, scope_key: str | None) -> None:
        """Drop one conversation's cached history; ``None`` (unknown): drop every one."""
        if scope_key is None:
            self._cache.clear()
        else:
            self._cache.pop(scope_key, None)

    async def conversation_of(self, key: MessageKey) -> str | None:
        """The scope key of the conversation holding a stored user message (None if not stored)."""
        platform, channel_id, message_id = key
        async with self.db.sessions() as session:
            return await session.scalar(
                select(ConversationRecord.scope_key)
                .join(MessageRecord, MessageRecord.conversation_id == ConversationRecord.id)
                .where(
                    MessageRecord.platform == platform,
                    MessageRecord.platform_message_id == message_id,
                    MessageRecord.channel_id == channel_id,
                    MessageRecord.role == "user",
                )
                .limit(1)
            )

    async def history(self, scope_key: str, max_turns: int) -> list[StoredTurn]:
        """The conversation's turns, oldest first: the database's newest ``max_turns`` plus pending ones.

        A conversation read within ``cache_seconds`` is answered from the cache,
        which every record this process adds keeps current. (Another process
        writing the same conversation is not seen until the entry expires: the
        plugin turns the cache off when the bot runs as several replicas.)
        """
        if max_turns <= 0:
            return []
        now = time.monotonic()
        changes_before = self._changes_added
        cached = self._cache.get(scope_key)
        if (
            cached is not None
            and now - cached.loaded_at < self.cache_seconds
            and cached.turns.maxlen == max_turns
        ):
            self._cache.move_to_end(scope_key)
            return list(cached.turns)
        turns, complete = await self._read(scope_key, max_turns)
        if complete and self.cache_seconds > 0 and changes_before == self._changes_added:
            self._cache[scope_key] = CachedHistory(deque(turns, maxlen=max_turns), now)
            self._cache.move_to_end(scope_key)
            while len(self._cache) > CACHED_CONVERSATIONS:
                self._cache.popitem(last=False)
        return turns

    async def _read(self, scope_key: str, max_turns: int) -> tuple[list[StoredTurn], bool]:
        """History from the database merged with pending records; ``False`` if the database failed.

        Pending records are taken before the database is read; one that the
        writer committed in between is recognised by its message id and counted once.
        """
        for _ in range(CONSISTENT_READ_TRIES):
            writes_before, writing = self.writer.writes_started, self.writer.writing
            changes = latest_changes(list(self.pending))
            captured, reset_pending = self._captured(scope_key)
            stored: list[tuple[MessageKey | None, StoredTurn]] = []
            complete = True
            if not reset_pending:
                try:
                    stored = await self._load(scope_key, max_turns)
                except (SQLAlchemyError, OSError) as error:
                    log.warning(
                        "memory: cannot read history (%s); answering with what is pending", type(error).__name__
                    )
                    complete = False
            # An exchange whose message was deleted is read without its user row, so its id cannot
            # tell whether the writer committed it meanwhile: read again unless no write overlapped.
            overlapped = writing or self.writer.writes_started != writes_before
            if not (overlapped and any(deleted_user(record) for record in captured)):
                break
            await self.writer.write_finished(WRITE_WAIT)
        seen = {key for key, _ in stored if key is not None}
        turns: list[StoredTurn] = []
        for key, turn in stored:
            change = changes.get(key) if key is not None else None  # edits waiting for the writer
            if change is None:
                turns.append(turn)
            elif change["text"] is not None:
                turns.append(StoredTurn(turn.role, change["text"], turn.speaker, change["tokens"]))
        for record in captured:
            if exchange_key(record) not in seen:
                turns.extend(turns_of(record))
        return turns[-max_turns:], complete

    def _captured(self, scope_key: str) -> tuple[list[dict[str, Any]], bool]:
        """This conversation's pending records since its last pending reset, and whether there is one."""
        captured: list[dict[str, Any]] = []
        reset_pending = False
        for record in self.pending:
            if record.get("scope_key") != scope_key:
                continue
            if record["kind"] == "reset":
                captured, reset_pending = [], True
            else:
                captured.append(record)
        return captured, reset_pending

    async def _load(self, scope_key: str, limit: int) -> list[tuple[MessageKey | None, StoredTurn]]:
        """``(key of user turns' messages, turn)`` pairs, oldest first."""
        async with self.db.sessions() as session:
            result = await session.execute(HISTORY_QUERY, {"scope_key": scope_key, "limit": limit})
            rows = result.all()
        return [
            (
                (platform, channel_id, message_id) if role == "user" else None,
                StoredTurn(role, text, speaker, token_count),
            )
            for role, text, speaker, token_count, status, platform, channel_id, message_id in reversed(rows)
            if role == "user" or (status is not None and ReplyStatus(status).in_history)
        ]


# Built once: constructing the statement cost more than running it (a read is on every message's path).
_ACTIVE_CONVERSATION = (
    select(ConversationRecord.id)
    .where(ConversationRecord.scope_key == bindparam("scope_key"), ConversationRecord.ended_at.is_(None))
    .order_by(ConversationRecord.id.desc())
    .limit(1)
    .scalar_subquery()
)
HISTORY_QUERY = (
    select(
        MessageRecord.role,
        MessageRecord.text,
        MessageRecord.speaker,
        MessageRecord.token_count,
        MessageRecord.status,
        MessageRecord.platform,
        MessageRecord.channel_id,
        MessageRecord.platform_message_id,
    )
    .where(MessageRecord.conversation_id == _ACTIVE_CONVERSATION, MessageRecord.deleted_at.is_(None))
    .order_by(MessageRecord.id.desc())
    .limit(bindparam("limit"))
)


async def _stored_exchanges(session: AsyncSession, batch: list[dict[str, Any]]) -> set[str]:
    """The keys of the batch's exchanges that the database holds already."""
    keys = [record["id"] for record in batch if record["kind"] == "exchange"]
    if not keys:
        return set()
    found = await session.scalars(
        select(MessageRecord.exchange_key).where(
            MessageRecord.exchange_key.in_(keys), MessageRecord.role == "user"
        )
    )
    return {key for key in found if key is not None}


def _resets_written(batch: list[dict[str, Any]], stored: set[str]) -> set[str]:
    """The keys of the batch's resets that were written already.

    Records are written in order, so a stored exchange shows that every reset of
    its conversation before it was written too; doing that reset again would end
    the conversation the exchange opened.
    """
    written: set[str] = set()
    scopes_with_stored: set[str] = set()
    for record in reversed(batch):
        if record["kind"] == "exchange" and record["id"] in stored:
            scopes_with_stored.add(record["scope_key"])
        elif record["kind"] == "reset" and record["scope_key"] in scopes_with_stored:
            written.add(record["id"])
    return written


def _time(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _maybe_time(value: str | None) -> datetime | None:
    return None if value is None else _time(value)


def _exchange_rows(record: dict[str, Any], conversation_id: int, user_id: int) -> list[dict[str, Any]]:
    """The messages rows of an exchange: the user's message and, if there is one, the reply.

    Both rows name every column, so that the batch's INSERT is one statement.
    """
    user = record["user"]
    common = {
        "exchange_key": record["id"],
        "conversation_id": conversation_id,
        "platform": record["platform"],
        "channel_id": record["channel_id"],
        "thread_id": record["thread_id"],
        "reply_to_id": None,
    }
    question = {
        **common,
        "user_id": user_id,
        "role": "user",
        "text": user["text"],
        "speaker": user["speaker"],
        "author_id": user["author_id"],
        "platform_message_id": user["message_id"],
        "created_at": _time(user["at"]),
        "token_count": user["tokens"],
        "backend": None,
        "model": None,
        "adapter": None,
        "canary_id": None,
        "arm": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "latency_ms": None,
        "status": None,
        "flags": {},
        "edited_at": _maybe_time(user.get("edited_at")),
        "deleted_at": _maybe_time(user.get("deleted_at")),
    }
    reply = record.get("reply")
    if reply is None:
        return [question]
    # Empty until a delivery record follows (a record from an older spool may carry them itself).
    delivered = delivered_columns(reply) if reply.get("message_ids") else {"platform_message_id": None, "flags": {}}
    answer = {
        **common,
        "user_id": None,
        "role": "assistant",
        "text": reply["text"],
        "speaker": None,
        "author_id": None,
        "platform_message_id": delivered["platform_message_id"],
        "created_at": _time(reply["at"]),
        "token_count": reply["tokens"],
        "backend": reply["backend"],
        "model": reply["model"],
        "adapter": reply.get("adapter"),
        "canary_id": reply.get("canary_id"),
        "arm": reply.get("arm"),
        "prompt_tokens": reply["prompt_tokens"],
        "completion_tokens": reply["completion_tokens"],
        "latency_ms": reply["latency_ms"],
        "status": reply["status"],
        "flags": delivered["flags"],
        "edited_at": None,
        "deleted_at": None,
    }
    return [question, answer]


__all__ = ["MemoryStore", "StoredTurn", "utcnow"]
