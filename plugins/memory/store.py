"""Writes conversations to the database in order, survives outages with a spool, and reads history back."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from botkit.storage import ConversationRecord, Database, MessageRecord, UserRecord, utcnow

from .spool import Spool

log = logging.getLogger("botkit.plugins.memory")

BATCH = 200


@dataclass(frozen=True, slots=True)
class StoredTurn:
    role: str
    text: str
    speaker: str | None
    token_count: int


def turns_of(record: dict[str, Any]) -> list[StoredTurn]:
    """The history turns a pending exchange contributes (a failed or blocked reply is not history)."""
    if record["kind"] != "exchange":
        return []
    turns = [StoredTurn("user", record["user"]["text"], record["user"]["speaker"], record["user"]["tokens"])]
    reply = record.get("reply")
    if reply is not None and reply["status"] == "completed":
        turns.append(StoredTurn("assistant", reply["text"], None, reply["tokens"]))
    return turns


class MemoryStore:
    """The ordered write queue (exchanges and resets) in front of the database.

    Records are written in arrival order by one writer task. While the database
    is unreachable they wait here and in the on-disk spool, and reads merge them
    in, so a conversation goes on and nothing is lost.
    """

    def __init__(
        self, db: Database, spool: Spool, retry_interval: float, max_pending: int = 100_000
    ) -> None:
        self.db = db
        self.spool = spool
        self.retry_interval = retry_interval
        self.max_pending = max_pending
        self.pending: deque[dict[str, Any]] = deque()
        self._spooled: set[str] = set()  # ids of pending records that are also on disk
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer: asyncio.Task[None] | None = None
        self._users: dict[tuple[str, str], int] = {}
        self.outage = False
        self.lost = 0

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        for record in self.spool.read():
            self.pending.append(record)
            self._spooled.add(record["id"])
        if self.pending:
            log.warning("memory: %d records from the spool will be written to the database", len(self.pending))
            self._idle.clear()
            self._wake.set()
        self._writer = asyncio.create_task(self._write_forever(), name="botkit-memory-writer")

    async def flush(self, timeout: float) -> bool:
        """Wait until everything pending is in the database; spool what is not after ``timeout``."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            self._spool_pending()
            return False

    async def close(self, timeout: float) -> None:
        await self.flush(timeout)
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        self._spool_pending()

    # -- writing ---------------------------------------------------------------

    def add(self, record: dict[str, Any]) -> None:
        record.setdefault("id", uuid.uuid4().hex)
        if len(self.pending) >= self.max_pending:
            dropped = self.pending.popleft()
            self._spooled.discard(dropped["id"])
            self.lost += 1
            log.error("memory: %d records waiting for the database; the oldest was dropped", self.max_pending)
        self.pending.append(record)
        self._idle.clear()
        self._wake.set()

    async def _write_forever(self) -> None:
        delay = 0.05
        while True:
            if not self.pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self.pending[i] for i in range(min(BATCH, len(self.pending)))]
            try:
                await self._write(batch)
            except (SQLAlchemyError, OSError) as error:
                if not self.outage:
                    log.error("memory: cannot write to the database (%s); keeping messages in the spool", type(error).__name__)
                self.outage = True
                self._spool_pending()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_interval)
                continue
            for _ in batch:
                self.pending.popleft()
            if self._spooled:
                self._spooled -= {record["id"] for record in batch}
                self.spool.rewrite([r for r in self.pending if r["id"] in self._spooled])
            if self.outage:
                log.warning("memory: the database is back; spooled messages written")
                self.outage = False
            delay = 0.05

    def _spool_pending(self) -> None:
        fresh = [r for r in self.pending if r["id"] not in self._spooled]
        if not fresh:
            return
        try:
            kept = self.spool.append(fresh)
        except OSError as error:
            log.error("memory: cannot write the spool %s: %s", self.spool.path, error.strerror)
            return
        self._spooled.update(r["id"] for r in fresh[:kept])
        if kept < len(fresh):
            log.error(
                "memory: the spool %s is full (%d bytes); %d records are kept in memory only",
                self.spool.path,
                self.spool.max_bytes,
                len(fresh) - kept,
            )

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        users: dict[tuple[str, str], int] = {}
        async with self.db.session() as session:
            for record in batch:
                if record["kind"] == "reset":
                    await session.execute(
                        update(ConversationRecord)
                        .where(ConversationRecord.scope_key == record["scope_key"], ConversationRecord.ended_at.is_(None))
                        .values(ended_at=_time(record["at"]))
                    )
                    continue
                user_id = await self._user_id(session, record, users)
                conversation_id = await self._conversation_id(session, record)
                await self._insert_exchange(session, record, conversation_id, user_id)
        self._users.update(users)  # only ids that were committed

    async def _user_id(self, session: AsyncSession, record: dict[str, Any], fresh: dict[tuple[str, str], int]) -> int:
        key = (record["platform"], record["user"]["author_id"])
        known = fresh.get(key) or self._users.get(key)
        if known is not None:
            return known
        user = await session.scalar(
            select(UserRecord).where(UserRecord.platform == key[0], UserRecord.platform_user_id == key[1])
        )
        if user is None:
            user = UserRecord(platform=key[0], platform_user_id=key[1], display_name=record["user"]["name"])
            session.add(user)
            await session.flush()
        fresh[key] = user.id
        return user.id

    async def _conversation_id(self, session: AsyncSession, record: dict[str, Any]) -> int:
        conversation_id = await session.scalar(
            select(ConversationRecord.id)
            .where(ConversationRecord.scope_key == record["scope_key"], ConversationRecord.ended_at.is_(None))
            .order_by(ConversationRecord.id.desc())
            .limit(1)
        )
        if conversation_id is not None:
            return conversation_id
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

    async def _insert_exchange(
        self, session: AsyncSession, record: dict[str, Any], conversation_id: int, user_id: int
    ) -> None:
        user = record["user"]
        where = {"platform": record["platform"], "channel_id": record["channel_id"], "thread_id": record["thread_id"]}
        question = MessageRecord(
            conversation_id=conversation_id,
            user_id=user_id,
            role="user",
            text=user["text"],
            speaker=user["speaker"],
            author_id=user["author_id"],
            platform_message_id=user["message_id"],
            created_at=_time(user["at"]),
            token_count=user["tokens"],
            adapter=record.get("adapter"),
            **where,
        )
        session.add(question)
        reply = record.get("reply")
        if reply is None:
            return
        await session.flush()
        session.add(
            MessageRecord(
                conversation_id=conversation_id,
                reply_to_id=question.id,
                role="assistant",
                text=reply["text"],
                created_at=_time(reply["at"]),
                token_count=reply["tokens"],
                backend=reply["backend"],
                model=reply["model"],
                prompt_tokens=reply["prompt_tokens"],
                completion_tokens=reply["completion_tokens"],
                latency_ms=reply["latency_ms"],
                status=reply["status"],
                adapter=record.get("adapter"),
                **where,
            )
        )

    # -- reading ---------------------------------------------------------------

    async def history(self, scope_key: str, max_turns: int) -> list[StoredTurn]:
        """The conversation's turns, oldest first: the database's newest ``max_turns`` plus pending ones.

        Pending records are taken before the database is read; one that the
        writer committed in between is recognised by its message id and counted once.
        """
        if max_turns <= 0:
            return []
        captured: list[dict[str, Any]] = []
        reset_pending = False
        for record in self.pending:
            if record["scope_key"] != scope_key:
                continue
            if record["kind"] == "reset":
                captured, reset_pending = [], True
            else:
                captured.append(record)
        stored: list[tuple[str | None, StoredTurn]] = []
        if not reset_pending:
            try:
                stored = await self._load(scope_key, max_turns)
            except (SQLAlchemyError, OSError) as error:
                log.warning("memory: cannot read history (%s); answering with what is pending", type(error).__name__)
        seen = {message_id for message_id, _ in stored if message_id is not None}
        turns = [turn for _, turn in stored]
        for record in captured:
            if record["user"]["message_id"] not in seen:
                turns.extend(turns_of(record))
        return turns[-max_turns:]

    async def _load(self, scope_key: str, limit: int) -> list[tuple[str | None, StoredTurn]]:
        """``(platform message id of user turns, turn)`` pairs, oldest first."""
        active = (
            select(ConversationRecord.id)
            .where(ConversationRecord.scope_key == scope_key, ConversationRecord.ended_at.is_(None))
            .order_by(ConversationRecord.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        columns = (
            MessageRecord.role,
            MessageRecord.text,
            MessageRecord.speaker,
            MessageRecord.token_count,
            MessageRecord.status,
            MessageRecord.platform_message_id,
        )
        query = (
            select(*columns)
            .where(MessageRecord.conversation_id == active, MessageRecord.deleted_at.is_(None))
            .order_by(MessageRecord.id.desc())
            .limit(limit)
        )
        async with self.db.sessions() as session:
            rows = (await session.execute(query)).all()
        return [
            (row.platform_message_id if row.role == "user" else None, StoredTurn(row.role, row.text, row.speaker, row.token_count))
            for row in reversed(rows)
            if row.role == "user" or row.status == "completed"
        ]


def _time(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


__all__ = ["MemoryStore", "StoredTurn", "utcnow"]
