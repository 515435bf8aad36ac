"""The index of message text (migration 0006): SQLite's FTS5 trigram table, PostgreSQL's pg_trgm GIN index.

Both serve a case-insensitive substring search. PostgreSQL's index serves
``lower(text) LIKE '%...%'`` by itself; SQLite's is a table of its own, which a
query joins (``messages_fts.rowid`` is ``messages.id``) and matches with
:func:`fts_phrase`. Three triggers keep it in step with ``messages``.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, column, literal_column, table, text
from sqlalchemy.ext.asyncio import AsyncSession

FTS_TABLE = "messages_fts"
TRIGRAM_INDEX = "ix_messages_text_trgm"
# The trigram tokenizer finds nothing for fewer characters: shorter text is searched without it.
SHORTEST_INDEXED = 3

messages_fts = table(FTS_TABLE, column("rowid"))


def is_text_index(name: str | None, kind: str) -> bool:
    """Whether a database object is part of the text index, which the ORM models do not describe:
    the FTS5 table and its shadow tables (``messages_fts_data``...), or the trigram index."""
    if name is None:
        return False
    if kind == "table":
        return name == FTS_TABLE or name.startswith(FTS_TABLE + "_")
    return kind == "index" and name == TRIGRAM_INDEX


def fts_phrase(words: str) -> str:
    """``words`` as one FTS5 phrase: matched as a substring, its quotes, ``*``, ``-``, ``OR``, ``NEAR``... as text."""
    return '"' + words.replace('"', '""') + '"'


def fts_match(words: str) -> ColumnElement[bool]:
    """``messages_fts MATCH`` the phrase ``words``: a condition for a query that joins :data:`messages_fts`."""
    return literal_column(FTS_TABLE).match(fts_phrase(words))


async def has_fts_index(session: AsyncSession) -> bool:
    """SQLite: whether the FTS5 table exists (an SQLite older than 3.34 was migrated without it)."""
    found = await session.execute(
        text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name"), {"name": FTS_TABLE}
    )
    return found.first() is not None


async def compact_text_index(session: AsyncSession) -> None:
    """Rewrite SQLite's text index, so that no copy of deleted messages' text stays in it.

    FTS5 records a deletion as a tombstone beside the old entries, which stay in the
    file until their segment is merged; ``optimize`` merges every segment at once (and
    ``secure_delete`` zeroes the pages freed). It rewrites the whole index: about 6 s at
    1M messages. Nothing to do on PostgreSQL, whose index entries go with the rows.
    """
    if session.get_bind().dialect.name != "sqlite" or not await has_fts_index(session):
        return
    await session.execute(text(f"INSERT INTO {FTS_TABLE} ({FTS_TABLE}) VALUES ('optimize')"))
