"""write keys and dead letters: messages.exchange_key, moderation_events.event_key, dead_letters

Every exchange (a user's message and its reply) and every moderation event
carries a key made when it happened, unique in its table, so that a write
retried after a crash or a lost acknowledgement stores it once.
``dead_letters`` keeps the queued records the database refused.

Rows that exist already get keys: a user's message ``legacy-<id>``, its (only)
reply the same key, any other row ``legacy-<id>``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# The only reply to a question takes the question's key; every other row keys itself.
FILL_MESSAGE_KEYS = [
    "UPDATE messages SET exchange_key = 'legacy-' || CAST(id AS VARCHAR(20))",
    """
    UPDATE messages SET exchange_key = (
        SELECT question.exchange_key FROM messages AS question WHERE question.id = messages.reply_to_id
    )
    WHERE role = 'assistant' AND reply_to_id IS NOT NULL
      AND (SELECT COUNT(*) FROM messages AS other
           WHERE other.reply_to_id = messages.reply_to_id AND other.role = 'assistant') = 1
      AND (SELECT question.role FROM messages AS question WHERE question.id = messages.reply_to_id) = 'user'
    """,
]
FILL_EVENT_KEYS = "UPDATE moderation_events SET event_key = 'legacy-' || CAST(id AS VARCHAR(20))"


# No batch mode here: on SQLite it copies the table and drops the old one, and with foreign keys
# on, that drop deletes (ON DELETE CASCADE) the rows that point at it. Adding and dropping a
# column and a unique index need no copy on SQLite (3.35 or newer) or PostgreSQL.


def upgrade() -> None:
    op.add_column("messages", sa.Column("exchange_key", sa.String(length=64), nullable=True))
    for statement in FILL_MESSAGE_KEYS:
        op.execute(statement)
    op.create_index("uq_messages_exchange_key_role", "messages", ["exchange_key", "role"], unique=True)

    op.add_column("moderation_events", sa.Column("event_key", sa.String(length=64), nullable=True))
    op.execute(FILL_EVENT_KEYS)
    op.create_index("uq_moderation_events_event_key", "moderation_events", ["event_key"], unique=True)

    op.create_table(
        "dead_letters",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("record_key", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=400), nullable=False),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )


def downgrade() -> None:
    op.drop_table("dead_letters")
    op.drop_index("uq_moderation_events_event_key", table_name="moderation_events")
    op.drop_column("moderation_events", "event_key")
    op.drop_index("uq_messages_exchange_key_role", table_name="messages")
    op.drop_column("messages", "exchange_key")
