"""The core schema: users, conversations, messages, feedback, moderation, privacy, dead letters, deliveries,
web console accounts, sessions and audit log.

Alembic (``migrations/``) owns every change to these tables; a test checks that
the migrations and these models agree.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Named constraints, so that Alembic (and SQLite batch mode) can refer to them.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY; BIGINT elsewhere.
Id = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_key() -> str:
    """A fresh unique key for a row written by something that gives it none (a migration, a test)."""
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored in UTC and always returned timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: botkit stores timezone-aware UTC timestamps")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UserRecord(Base):
    """Someone the bot has seen, per platform."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("platform", "platform_user_id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(String(32))
    platform_user_id: Mapped[str] = mapped_column(String(128))
    display_name: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConversationRecord(Base):
    """One conversation. ``/reset`` ends it (``ended_at``) and the next message starts a new one."""

    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_scope_key_ended_at", "scope_key", "ended_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    scope_key: Mapped[str] = mapped_column(String(600))
    platform: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(128))
    thread_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    is_dm: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class MessageRecord(Base):
    """A stored chat message: a user's message or the bot's reply, with its metadata."""

    __tablename__ = "messages"
    __table_args__ = (
        # Context loading reads the newest rows of one conversation: independent of history size.
        Index("ix_messages_conversation_id_id", "conversation_id", "id"),
        Index("ix_messages_platform_platform_message_id", "platform", "platform_message_id"),
        Index("ix_messages_created_at_role", "created_at", "role"),  # ranges of time; counts by role (overview)
        Index("ix_messages_user_id", "user_id"),
        Index("ix_messages_canary_id", "canary_id"),  # a canary's results, read every check_interval
        # An exchange (a user's message and its reply) is written once, however often it is retried.
        Index("uq_messages_exchange_key_role", "exchange_key", "role", unique=True),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    reply_to_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), nullable=True
    )
    role: Mapped[str] = mapped_column(String(16))  # "user" or "assistant"
    # Made when the message is answered; the user's message and its reply share it. Every row
    # has one (NULL only because SQLite cannot make an added column NOT NULL in place).
    exchange_key: Mapped[str | None] = mapped_column(String(64), nullable=True, default=new_key)
    text: Mapped[str] = mapped_column(Text)
    speaker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    platform: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(128))
    thread_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    author_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    platform_message_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    token_count: Mapped[int] = mapped_column(Integer, default=0)
    backend: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model: Mapped[str | None] = mapped_column(String(255), nullable=True)
    adapter: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # The canary rollout running on its backend when the reply was generated, and its arm there
    # ("control" or "canary"; botkit/canary.py); NULL when none ran. No foreign key: a reply outlives it.
    canary_id: Mapped[int | None] = mapped_column(Id, nullable=True)
    arm: Mapped[str | None] = mapped_column(String(16), nullable=True)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latency_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    flags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    edited_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class FeedbackRecord(Base):
    """A reaction, score or correction someone gave a bot reply."""

    __tablename__ = "feedback"
    __table_args__ = (
        Index("ix_feedback_message_id", "message_id"),
        Index("ix_feedback_created_at", "created_at"),  # counts by time (the overview's charts)
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    kind: Mapped[str] = mapped_column(String(16))  # "reaction", "score", "correction"
    value: Mapped[str | None] = mapped_column(String(64), nullable=True)
    score: Mapped[int | None] = mapped_column(Integer, nullable=True)
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ModerationEventRecord(Base):
    """One moderation decision, on input or output."""

    __tablename__ = "moderation_events"
    __table_args__ = (
        Index("ix_moderation_events_message_id", "message_id"),
        Index("uq_moderation_events_event_key", "event_key", unique=True),
        Index("ix_moderation_events_created_at", "created_at"),  # counts by time (the overview's charts)
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    # Made when the decision is taken: the event is stored once, however many writers carry it.
    event_key: Mapped[str | None] = mapped_column(String(64), nullable=True, default=new_key)
    message_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), nullable=True
    )
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    direction: Mapped[str] = mapped_column(String(8))  # "in" or "out"
    category: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))  # "block", "redact", "flag"
    rule: Mapped[str | None] = mapped_column(String(255), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DeadLetterRecord(Base):
    """A queued record the database refused (a constraint or a value it cannot hold), kept for repair."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(64))  # the writer: "memory", "moderation"
    record_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str] = mapped_column(String(400))
    record: Mapped[Any] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PluginStateRecord(Base):
    """Small key/value state a plugin keeps (e.g. an admin's run-time switch)."""

    __tablename__ = "plugin_state"

    plugin: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class PrivacyRecord(Base):
    """A user's privacy choice or request: opt-out of training exports, deletion."""

    __tablename__ = "privacy"
    __table_args__ = (Index("ix_privacy_user_id", "user_id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # "optout", "deletion"
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SeenDeliveryRecord(Base):
    """A platform event delivery the bot claimed: a redelivery of it, to any replica, is not answered again.

    Rows live ``botkit.deliveries.RETENTION`` (a day), then the bot deletes them.
    """

    __tablename__ = "seen_deliveries"
    __table_args__ = (Index("ix_seen_deliveries_first_seen_at", "first_seen_at"),)

    platform: Mapped[str] = mapped_column(String(32), primary_key=True)
    # Slack's event_id, a Discord message id or "interaction:<id>".
    delivery_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebAccountRecord(Base):
    """Someone who may log in to the web console (``botkit web user add``): a name, a role, an argon2 hash."""

    __tablename__ = "web_accounts"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # "admin" or "reviewer"
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebSessionRecord(Base):
    """A web console login: only the SHA-256 of the cookie's token is kept, so a copy of the database
    logs nobody in; logging out deletes the row."""

    __tablename__ = "web_sessions"
    __table_args__ = (Index("ix_web_sessions_expires_at", "expires_at"),)

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("web_accounts.id", ondelete="CASCADE"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AuditRecord(Base):
    """One action taken in the web console: who (the account's name), what, on what, when."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))  # "login", "review.approve", "plugin.disable"...
    target: Mapped[str] = mapped_column(String(255), default="")


class CanaryRecord(Base):
    """One canary rollout of a LoRA adapter on one backend (``botkit/canary.py``).

    The running canary of a backend is its row without ``ended_at``; ``outcome`` then
    says how it ended: "promoted" or "rolled_back".
    """

    __tablename__ = "canaries"
    __table_args__ = (Index("ix_canaries_backend_ended_at", "backend", "ended_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    backend: Mapped[str] = mapped_column(String(64))
    control_lora: Mapped[str | None] = mapped_column(String(255), nullable=True)  # None: the base model
    canary_lora: Mapped[str] = mapped_column(String(255))
    share: Mapped[float] = mapped_column(Float)  # percent of conversations on the canary arm
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
