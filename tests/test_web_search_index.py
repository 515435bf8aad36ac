"""Conversation search through the text index (migration 0006): the same results as the LIKE scan, on SQLite
and PostgreSQL, and an index that follows every insert, edit, deletion, /forgetme, retention purge and backup."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from export_helpers import SEED_CONFIG, settle, talk
from sqlalchemy import event, text, update
from sqlalchemy.dialects import sqlite

from botkit.plugins.privacy import purge_expired
from botkit.storage import (
    ConversationRecord,
    Database,
    MessageRecord,
    Migrator,
    StorageSettings,
    UserRecord,
    fts_match,
    messages_fts,
    utcnow,
)
from botkit.storage.backup import backup_sqlite
from botkit.storage.text_index import TRIGRAM_INDEX
from botkit.web.conversations import MessageSearch, search_messages

CORPUS = [
    "50% off_sale",
    "500 off sale",
    "it's a 'quote' \"double\"",
    "C:\\temp\\new",
    "x'; DROP TABLE messages; --",
    'say "hi" OR NEAR(alpha beta) -minus *star',
    "NEAR(alpha beta, 2) and x OR y",
    "a*b^c {text}: column:filter",
    "École, ÉCOLE and école",
    "İstanbul in Turkish",
    "Straße STRASSE",
    "emoji 🙂🙂🙂 here",
    "tab\there and  two  spaces",
    "Mixed CASE Words",
    "ab",
    "abc",
    "",  # what a message its author deleted keeps
]
QUERIES = [
    "50% off_", "%", "_", "\\", "\\temp\\", "'quote' \"double\"", '"double"', '"', '""', "'; DROP TABLE",
    '"hi" OR NEAR(', "OR", " OR ", "x OR y", "NEAR", "near(alpha", "-minus", "*star", "*", "-", "a*b",
    "^c", "{text}:", "column:filter", "école", "ÉCOLE", "Éco", "İst", "istanbul", "straße", "STRASSE",
    "🙂🙂", "emoji 🙂", "\there", "  two  ", "mixed case", "MIXED", "ab", "abc", "b", "zzz", "off sale",
]  # fmt: skip


async def seed(db: Database, texts: list[str]) -> None:
    async with db.session() as session:
        user = UserRecord(platform="test", platform_user_id=uuid.uuid4().hex, display_name="Una")
        conversation = ConversationRecord(scope_key="test:channel:c", platform="test", channel_id="c")
        session.add_all([user, conversation])
        await session.flush()
        session.add_all(
            MessageRecord(
                conversation_id=conversation.id, user_id=user.id, role="user", text=body, platform="test",
                channel_id="c", deleted_at=None if body else utcnow(),
            )
            for body in texts
        )  # fmt: skip


@asynccontextmanager
async def migrated(storage: dict, revision: str = "heads"):
    db = Database(StorageSettings(**storage))
    await db.connect()
    try:
        await Migrator(db, []).upgrade(revision)
        yield db
    finally:
        await db.close()


def second_database(storage_config: dict, request, tmp_path: Path) -> dict:
    """Another empty database of the same kind as ``storage_config``'s."""
    if "url" in storage_config["storage"]:
        return {"url": request.getfixturevalue("postgres").create_database(f"t{uuid.uuid4().hex[:12]}")}
    return {"data_dir": str(tmp_path / "plain")}


async def found(db: Database, query: str) -> list[tuple[int, str]]:
    return [(m.id, m.text) for m in await search_messages(db, MessageSearch(text=query, limit=1000))]


async def test_the_index_finds_exactly_what_the_like_scan_finds(storage_config, request, tmp_path):
    """One database searched through the index (half its rows there before the migration, half after),
    one at 0005 searched by LIKE alone: the same rows for every query, metacharacters and FTS syntax included."""
    indexed_storage, plain_storage = storage_config["storage"], second_database(storage_config, request, tmp_path)
    async with migrated(indexed_storage, "0005") as indexed, migrated(plain_storage, "0005") as plain:
        await seed(indexed, CORPUS)
        await Migrator(indexed, []).upgrade()  # fills the index from the stored rows
        await seed(indexed, CORPUS)  # the triggers index these
        await seed(plain, CORPUS + CORPUS)
        if indexed.is_sqlite:
            indexed_uses_index = True
        else:
            # Few rows: PostgreSQL would rather read the table. Make it use the trigram index when it can.
            @event.listens_for(indexed.engine.sync_engine, "connect")
            def no_table_scans(connection, _):
                cursor = connection.cursor()
                cursor.execute("SET enable_seqscan = off")
                cursor.execute("SET enable_indexscan = off")
                cursor.close()

            await indexed.engine.dispose()
            async with indexed.engine.connect() as connection:
                plan = await connection.execute(
                    text("EXPLAIN SELECT id FROM messages WHERE lower(text) LIKE :p"), {"p": "%école%"}
                )
                indexed_uses_index = TRIGRAM_INDEX in "\n".join(row[0] for row in plan)
        assert indexed_uses_index
        for query in QUERIES:
            assert await found(indexed, query) == await found(plain, query), query
        # Not two empty answers: what each kind of input finds.
        expected = {
            "50% off_": ["50% off_sale"],
            '"hi" OR NEAR(': ['say "hi" OR NEAR(alpha beta) -minus *star'],
            "x OR y": ["NEAR(alpha beta, 2) and x OR y"],
            "{text}:": ["a*b^c {text}: column:filter"],
            "ÉCOLE": ["École, ÉCOLE and école"],
            "🙂🙂": ["emoji 🙂🙂🙂 here"],
            "abc": ["abc"],
            "zzz": [],
        }
        for query, texts in expected.items():
            assert [body for _, body in await found(indexed, query)] == texts * 2, query
        if not indexed.is_sqlite:  # PostgreSQL's text cannot hold a NUL: a search for one finds nothing
            assert await found(indexed, "ab\x00cd") == [] == await found(plain, "ab\x00cd")
        else:  # SQLite's LIKE takes a NUL as text; FTS5 would not, so such a search reads the table
            assert await found(indexed, "ab\x00cd") == await found(plain, "ab\x00cd")
            # the FTS table itself holds both halves
            async with indexed.sessions() as session:
                hits = await session.scalars(
                    text("SELECT rowid FROM messages_fts WHERE messages_fts MATCH :q"), {"q": '"mixed case"'}
                )
                assert len(list(hits)) == 2


async def test_an_edited_or_deleted_message_is_found_by_its_new_text_only(storage_config):
    async with migrated(storage_config["storage"]) as db:
        await seed(db, ["the walrus said hello", "the walrus said goodbye"])
        async with db.session() as session:
            await session.execute(
                update(MessageRecord).where(MessageRecord.text == "the walrus said hello").values(text="the seal said hi")
            )
            await session.execute(
                update(MessageRecord)
                .where(MessageRecord.text == "the walrus said goodbye")
                .values(text="", deleted_at=utcnow())
            )
        assert await found(db, "walrus") == []
        assert [body for _, body in await found(db, "seal said")] == ["the seal said hi"]


def index_blocks(path: Path, table: str) -> tuple[int, int]:
    """How many blocks, and bytes, the FTS5 table's index takes (its segments, not its two header records)."""
    with sqlite3.connect(path) as connection:
        return connection.execute(f"SELECT count(*), sum(length(block)) FROM {table}_data WHERE id > 10").fetchone()


def fresh_index_blocks(path: Path) -> tuple[int, int]:
    """The size of an index built afresh from the messages the database holds now."""
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE VIRTUAL TABLE fresh_fts USING fts5(text, content='messages', content_rowid='id', tokenize='trigram')"
        )
        connection.execute("INSERT INTO fresh_fts (fresh_fts) VALUES ('rebuild')")
        connection.execute("INSERT INTO fresh_fts (fresh_fts) VALUES ('optimize')")
    try:
        return index_blocks(path, "fresh_fts")
    finally:
        with sqlite3.connect(path) as connection:
            connection.execute("DROP TABLE fresh_fts")


async def test_forgetme_and_retention_leave_nothing_of_the_text_in_the_index(make_bot, storage_config):
    async with make_bot({**storage_config, **SEED_CONFIG}) as bot:
        for turn in range(20):
            await talk(bot, f"ann's walrus secret number {turn}", "noted", user="ann")
            await talk(bot, f"bob talks about the weather {turn}", "sunny", user="bob")
        await settle(bot)
        assert len(await found(bot.db, "walrus secret")) == 20
        await bot.chat.say("/forgetme", user="ann")
        done = await bot.chat.say("/forgetme confirm", user="ann")
        assert done.texts == ["Done: everything I had stored about you is deleted."]
        assert await found(bot.db, "walrus") == [] and await found(bot.db, "ann") == []
        assert len(await found(bot.db, "weather")) == 20
        if bot.db.is_sqlite:
            path = bot.db.sqlite_path
            async with bot.db.sessions() as session:
                assert list(await session.scalars(text("SELECT rowid FROM messages_fts WHERE messages_fts MATCH '\"walrus\"'"))) == []
            # No segment keeps ann's deleted entries: the index is what one built from bob's messages alone is.
            assert index_blocks(path, "messages_fts") == fresh_index_blocks(path)

        async with bot.db.session() as session:
            await session.execute(
                update(MessageRecord).where(MessageRecord.text.contains("weather 1")).values(
                    created_at=utcnow() - timedelta(days=40)
                )
            )
        assert await purge_expired(bot, 30) > 0
        left = [body for _, body in await found(bot.db, "weather")]
        assert left and not any("weather 1" in body for body in left)
        if bot.db.is_sqlite:
            assert index_blocks(path, "messages_fts") == fresh_index_blocks(path)


async def test_a_backup_searches_and_indexes_as_the_original_does(make_bot, tmp_path):
    async with make_bot({"storage": {"data_dir": str(tmp_path / "data")}, **SEED_CONFIG}) as bot:
        await talk(bot, "where is the lighthouse?", "on the cape")
        await settle(bot)
        size = backup_sqlite(bot.db, tmp_path / "copy" / "botkit.db")
        assert size > 0
    async with migrated({"data_dir": str(tmp_path / "copy")}) as copy:
        assert [body for _, body in await found(copy, "lighthouse")] == ["where is the lighthouse?"]
        await seed(copy, ["a new lighthouse keeper"])
        assert [body for _, body in await found(copy, "lighthouse")] == [
            "a new lighthouse keeper", "where is the lighthouse?",
        ]  # fmt: skip
        async with copy.session() as session:  # FTS5's own check of the index against the messages
            await session.execute(text("INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)"))


async def test_postgresql_without_pg_trgm_still_migrates_and_searches(postgres, caplog):
    """A database where the role may not create extensions: one log line, no index, the same search."""
    name, role = f"t{uuid.uuid4().hex[:12]}", f"r{uuid.uuid4().hex[:12]}"
    postgres.psql(f"CREATE ROLE {role} LOGIN")
    postgres.psql(f'CREATE DATABASE "{name}"')
    postgres.psql(f"GRANT CONNECT ON DATABASE {name} TO {role}; GRANT ALL ON SCHEMA public TO {role}", name)
    url = f"postgresql+asyncpg://{role}@127.0.0.1:{postgres.port}/{name}"
    with caplog.at_level(logging.WARNING, logger="botkit.storage"):
        async with migrated({"url": url}) as db:
            assert await Migrator(db, []).current() == {"0006"}
            await seed(db, CORPUS)
            assert [body for _, body in await found(db, "ÉCOLE")] == ["École, ÉCOLE and école"]
            async with db.sessions() as session:
                index = await session.scalar(text("SELECT to_regclass(:name)"), {"name": TRIGRAM_INDEX})
            assert index is None
            assert await Migrator(db, []).differences() == []
    lines = [record.getMessage() for record in caplog.records if record.name == "botkit.storage"]
    assert len(lines) == 1 and "PostgreSQL refused CREATE EXTENSION pg_trgm (permission denied" in lines[0]
    assert "CREATE EXTENSION pg_trgm in this database, then `botkit db downgrade 0005`" in lines[0]


async def test_downgrade_removes_the_index_and_search_scans_again(storage_config):
    async with migrated(storage_config["storage"]) as db:
        await seed(db, ["a rare albatross"])
        await Migrator(db, []).downgrade("0005")
        async with db.engine.connect() as connection:
            if db.is_sqlite:
                left = await connection.execute(text("SELECT name FROM sqlite_master WHERE name LIKE 'messages_fts%'"))
            else:
                left = await connection.execute(
                    text("SELECT indexname FROM pg_indexes WHERE indexname = :name"), {"name": TRIGRAM_INDEX}
                )
            assert left.all() == []
        assert [body for _, body in await found(db, "albatross")] == ["a rare albatross"]
        await Migrator(db, []).upgrade()
        assert [body for _, body in await found(db, "albatross")] == ["a rare albatross"]


def test_fts_match_quotes_the_text_as_one_phrase():
    statement = messages_fts.select().where(fts_match('say "hi" OR x'))
    compiled = statement.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True})
    assert "messages_fts MATCH '\"say \"\"hi\"\" OR x\"'" in str(compiled)

