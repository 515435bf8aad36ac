"""search indexes: message text, and feedback and moderation events by time

The conversation search finds text anywhere in a message (botkit.web.conversations).
SQLite (3.34 or newer): ``messages_fts``, an FTS5 table with the ``trigram``
tokenizer over ``messages.text`` (external content: it keeps the index, not a second
copy of the text), kept in step by three triggers and filled from the rows already
stored. PostgreSQL: a ``pg_trgm`` GIN index on ``lower(text)``, which serves the
search's ``lower(text) LIKE '%...%'`` as it is; when the extension cannot be created
(no right to), the migration still succeeds, says so in one log line, and the search
reads the table as before. ``ix_feedback_created_at`` and
``ix_moderation_events_created_at`` serve counts by time, and ``ix_messages_created_at_role``
replaces ``ix_messages_created_at``: a count of messages by time and role reads the index alone.

No batch mode on ``messages`` (as in 0002 and 0005): on SQLite it copies the table, which
would also drop these triggers.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import logging

from alembic import op
from sqlalchemy.exc import DBAPIError

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

log = logging.getLogger("botkit.storage")

TRIGRAM_SQLITE = (3, 34, 0)  # the first SQLite with FTS5's trigram tokenizer

SQLITE_INDEX = [
    "CREATE VIRTUAL TABLE messages_fts USING fts5(text, content='messages', content_rowid='id', tokenize='trigram')",
    # An external-content index is told the old text to take out: exactly what the row held.
    "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN "
    "INSERT INTO messages_fts (rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN "
    "INSERT INTO messages_fts (messages_fts, rowid, text) VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER messages_fts_update AFTER UPDATE OF text ON messages BEGIN "
    "INSERT INTO messages_fts (messages_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "INSERT INTO messages_fts (rowid, text) VALUES (new.id, new.text); END",
    "INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')",
]


def upgrade() -> None:
    # if_not_exists: a database that got them by hand keeps them.
    op.create_index("ix_feedback_created_at", "feedback", ["created_at"], if_not_exists=True)
    op.create_index("ix_moderation_events_created_at", "moderation_events", ["created_at"], if_not_exists=True)
    # Serves every range on created_at that the old index served, and counts by role besides.
    op.create_index("ix_messages_created_at_role", "messages", ["created_at", "role"])
    op.drop_index("ix_messages_created_at", table_name="messages")
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        version = bind.exec_driver_sql("SELECT sqlite_version()").scalar_one()
        if tuple(int(part) for part in version.split(".")) < TRIGRAM_SQLITE:
            log.warning(
                "SQLite %s has no trigram tokenizer (3.34 or newer has): conversation search reads the "
                "messages table instead of a text index",
                version,
            )
            return
        for statement in SQLITE_INDEX:
            op.execute(statement)
    elif bind.dialect.name == "postgresql":
        try:
            with bind.begin_nested():  # a refusal must not abort the migration's transaction
                bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        except DBAPIError as error:
            log.warning(
                "PostgreSQL refused CREATE EXTENSION pg_trgm (%s): conversation search reads the messages "
                "table instead of a trigram index; to add it, have a superuser run CREATE EXTENSION pg_trgm "
                "in this database, then `botkit db downgrade 0005` and `botkit db upgrade`",
                str(error.orig).splitlines()[0] if error.orig else type(error).__name__,
            )
            return
        op.execute("CREATE INDEX ix_messages_text_trgm ON messages USING gin (lower(text) gin_trgm_ops)")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for trigger in ("messages_fts_update", "messages_fts_delete", "messages_fts_insert"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS messages_fts")
    elif bind.dialect.name == "postgresql":
        # The extension stays: other objects of the database may use it, and dropping it takes a superuser.
        op.execute("DROP INDEX IF EXISTS ix_messages_text_trgm")
    op.create_index("ix_messages_created_at", "messages", ["created_at"])
    op.drop_index("ix_messages_created_at_role", table_name="messages")
    op.drop_index("ix_moderation_events_created_at", table_name="moderation_events")
    op.drop_index("ix_feedback_created_at", table_name="feedback")
