"""The database: engines, migrations (core and plugin branches), schema checks at start, backups."""

from __future__ import annotations

import asyncio
import sqlite3
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, inspect, text
from sqlalchemy.exc import DBAPIError

from botkit import hookimpl
from botkit.errors import ConfigError, StorageError
from botkit.plugins.memory import memory
from botkit.storage import Database, Migrator, StorageSettings, user_id_for
from botkit.storage.backup import backup_sqlite
from botkit.testing import WAIT_TIMEOUT


def database(config: dict) -> Database:
    return Database(StorageSettings(**config["storage"]))


async def tables(db: Database) -> set[str]:
    async with db.engine.connect() as connection:
        return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))


async def test_upgrade_creates_the_core_tables_and_models_agree(storage_config):
    db = database(storage_config)
    await db.connect()
    migrator = Migrator(db, [])
    try:
        assert await migrator.current() == set()
        await migrator.upgrade()
        assert await migrator.current() == {"0006"} == migrator.heads()
        assert await migrator.is_current()
        assert await tables(db) >= {
            "users",
            "conversations",
            "messages",
            "feedback",
            "moderation_events",
            "dead_letters",
            "plugin_state",
            "privacy",
            "web_accounts",
            "web_sessions",
            "audit_log",
            "canaries",
        }
        assert await migrator.differences() == []  # autogenerate finds nothing to change
        await migrator.downgrade("base")
        assert await tables(db) <= {"alembic_version"}
    finally:
        await db.close()


async def test_replicas_starting_together_migrate_a_new_database_once(storage_config):
    """Three processes' start-up upgrades at once (each its own engine): one migrates, the others wait."""
    dbs = [database(storage_config) for _ in range(3)]
    for db in dbs:
        await db.connect()
    try:
        await asyncio.gather(*(Migrator(db, []).ensure_current(auto_upgrade=True) for db in dbs))
        migrator = Migrator(dbs[0], [])
        assert await migrator.current() == migrator.heads()
        assert await migrator.differences() == []
    finally:
        for db in dbs:
            await db.close()


async def test_0002_gives_existing_rows_keys_and_goes_back(storage_config):
    db = database(storage_config)
    await db.connect()
    migrator = Migrator(db, [])
    row = "'p', 'c', '2026-11-28 10:00:00+00:00', 0, '{}'"
    try:
        await migrator.upgrade("0001")
        async with db.engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO conversations (scope_key, platform, channel_id, is_dm, started_at) "
                    "VALUES ('p:c', 'p', 'c', false, '2026-11-28 10:00:00+00:00')"
                )
            )
            columns = "conversation_id, role, text, platform, channel_id, created_at, token_count, flags"
            for values in [
                f"1, 'user', 'q1', {row}",
                f"1, 'assistant', 'a1', {row}",
                f"1, 'user', 'q2', {row}",
                f"1, 'assistant', 'a2', {row}",
                f"1, 'assistant', 'a2 again', {row}",
            ]:
                await connection.execute(text(f"INSERT INTO messages ({columns}) VALUES ({values})"))
            await connection.execute(text("UPDATE messages SET reply_to_id = 1 WHERE id = 2"))
            await connection.execute(text("UPDATE messages SET reply_to_id = 3 WHERE id IN (4, 5)"))
            await connection.execute(
                text(
                    "INSERT INTO feedback (message_id, kind, value, created_at) "
                    "VALUES (2, 'reaction', '+1', '2026-11-28 10:00:00+00:00')"
                )
            )
            await connection.execute(
                text(
                    "INSERT INTO moderation_events (direction, category, action, detail, created_at) "
                    "VALUES ('in', 'injection', 'flag', '{}', '2026-11-28 10:00:00+00:00')"
                )
            )
        await migrator.upgrade()
        async with db.engine.connect() as connection:
            keys = (await connection.execute(text("SELECT id, exchange_key FROM messages ORDER BY id"))).all()
            events = (await connection.execute(text("SELECT event_key FROM moderation_events"))).all()
        # A question and its only reply share a key; a question answered twice keeps its replies apart.
        assert keys == [
            (1, "legacy-1"),
            (2, "legacy-1"),
            (3, "legacy-3"),
            (4, "legacy-4"),
            (5, "legacy-5"),
        ]
        assert events == [("legacy-1",)]
        assert await migrator.differences() == []
        await migrator.downgrade("0001")
        # Nothing that points at a changed table is lost on the way (SQLite copies tables in batch mode).
        async with db.engine.connect() as connection:
            replies = await connection.execute(text("SELECT id, reply_to_id FROM messages WHERE id > 3"))
            assert replies.all() == [(4, 3), (5, 3)]
            assert (await connection.execute(text("SELECT message_id FROM feedback"))).all() == [(2,)]
        assert await tables(db) >= {"messages"} and "dead_letters" not in await tables(db)
    finally:
        await db.close()


async def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path):
    db = Database(StorageSettings(data_dir=tmp_path / "nested" / "data", busy_timeout=7))
    await db.connect()
    async with db.engine.connect() as connection:
        assert (await connection.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
        assert (await connection.execute(text("PRAGMA foreign_keys"))).scalar() == 1
        assert (await connection.execute(text("PRAGMA busy_timeout"))).scalar() == 7000
        assert (await connection.execute(text("PRAGMA synchronous"))).scalar() == 1  # NORMAL by default
    await db.close()
    assert (tmp_path / "nested" / "data" / "botkit.db").is_file()


async def test_a_snapshot_sees_one_state_and_writes_go_on_beside_it(storage_config):
    db = database(storage_config)
    await db.connect()
    migrator = Migrator(db, [])
    count = text("SELECT count(*) FROM users")
    try:
        await migrator.upgrade()
        async with db.snapshot() as snapshot:
            before = await snapshot.scalar(count)
            async with db.session() as writer:  # not blocked by the open snapshot
                await user_id_for(writer, "test", "ann")
            during = await snapshot.scalar(count)
            if not db.is_sqlite:
                with pytest.raises(DBAPIError, match="read-only transaction"):
                    await snapshot.execute(text("DELETE FROM users"))
        async with db.snapshot() as snapshot:  # the pooled connection was given back clean
            after = await snapshot.scalar(count)
        async with db.session() as writer:
            await user_id_for(writer, "test", "bob")
    finally:
        await db.close()
    assert (before, during, after) == (0, 0, 1)


async def test_sqlite_synchronous_full_syncs_commits_and_memorys_journal(make_bot, tmp_path):
    async with make_bot({"storage": {"data_dir": str(tmp_path), "sqlite_synchronous": "full"}}) as bot:
        async with bot.db.engine.connect() as connection:
            assert (await connection.execute(text("PRAGMA synchronous"))).scalar() == 2  # FULL
        assert memory(bot).spool.fsync
    async with make_bot({"storage": {"data_dir": str(tmp_path)}}) as bot:
        assert not memory(bot).spool.fsync


def test_password_in_the_url_is_refused_without_echoing_it():
    with pytest.raises(ConfigError) as error:
        Database(StorageSettings(url="postgresql+asyncpg://bot:s3cret@db.example/botkit"))
    assert "BOTKIT_STORAGE__PASSWORD" in str(error.value) and "s3cret" not in str(error.value)


def test_unsupported_or_malformed_urls_are_explained():
    with pytest.raises(ConfigError, match=r"mysql\+pymysql is not supported"):
        Database(StorageSettings(url="mysql+pymysql://bot@db/botkit"))
    with pytest.raises(ConfigError, match="not a database URL"):
        Database(StorageSettings(url="::not a url::"))


async def test_unreachable_database_names_the_url_with_the_password_masked():
    from pydantic import SecretStr
    from servers import free_port

    settings = StorageSettings(
        url=f"postgresql+asyncpg://bot@127.0.0.1:{free_port()}/botkit",
        password=SecretStr("hunter2"),
        connect_timeout=3,
    )
    db = Database(settings)
    with pytest.raises(StorageError) as error:
        await db.connect()
    message = str(error.value)
    assert "cannot reach the database at postgresql+asyncpg://bot:***@127.0.0.1:" in message
    assert "hunter2" not in message and "[storage] url" in message
    await db.close()


async def test_outdated_schema_refuses_to_start_unless_auto_upgrade(make_bot, storage_config):
    config = {**storage_config, "storage": {**storage_config["storage"], "auto_upgrade": False}}
    with pytest.raises(StorageError, match=r"schema .* is out of date .*run `botkit db upgrade`"):
        async with make_bot(config):
            pass
    async with make_bot(storage_config) as bot:  # auto_upgrade (the default) migrates
        assert await bot.migrator.is_current()
    async with make_bot(config) as bot:  # now current: starts without upgrading
        assert await bot.migrator.current() == {"0006"}


async def test_a_database_from_a_newer_botkit_is_refused(make_bot, storage_config):
    async with make_bot(storage_config) as bot:
        async with bot.db.engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StorageError, match="revision.s. 9999, which this botkit does not know"):
        async with make_bot(storage_config):
            pass


PLUGIN_REVISION = '''
"""notes table of the notes plugin"""
import sqlalchemy as sa
from alembic import op

revision = "notes0001"
down_revision = None
branch_labels = ("notes",)
depends_on = "0001"


def upgrade():
    op.create_table(
        "notes_notes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("body", sa.String(200), nullable=False),
    )


def downgrade():
    op.drop_table("notes_notes")
'''


def notes_plugin(folder: Path):
    versions = folder / "notes_versions"
    versions.mkdir()
    (versions / "notes0001_notes.py").write_text(textwrap.dedent(PLUGIN_REVISION), encoding="utf-8")
    metadata = MetaData()
    Table(
        "notes_notes",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("body", String(200), nullable=False),
    )

    class Notes:
        @hookimpl
        def botkit_register_migrations(self, register):
            register(versions, metadata)

    return Notes()


async def test_plugins_contribute_their_own_migration_branch(make_bot, storage_config, tmp_path):
    plugin = notes_plugin(tmp_path)
    async with make_bot(storage_config, plugins={"notes": plugin}) as bot:
        # The plugin's branch depends on the core's 0001; the core's head is stored beside it.
        assert await bot.migrator.current() == {"0006", "notes0001"}
        assert await bot.migrator.is_current()
        assert "notes_notes" in await tables(bot.db)
        assert await bot.migrator.differences() == []
        assert "notes0001 (notes) (head)" in bot.migrator.history()
        await bot.migrator.downgrade("notes@base")
        assert await bot.migrator.current() == {"0006"}
        assert "notes_notes" not in await tables(bot.db)


async def test_backup_copies_a_live_sqlite_database(make_bot, tmp_path):
    async with make_bot({"storage": {"data_dir": str(tmp_path / "data")}}) as bot:
        await bot.chat.say("remember this")
        assert await memory(bot).flush(WAIT_TIMEOUT)
        size = backup_sqlite(bot.db, tmp_path / "copy.db")
        with pytest.raises(StorageError, match="exists; pass --overwrite"):
            backup_sqlite(bot.db, tmp_path / "copy.db")
    assert size > 0
    with sqlite3.connect(tmp_path / "copy.db") as copy:
        texts = [row[0] for row in copy.execute("SELECT text FROM messages ORDER BY id")]
    assert texts == ["remember this", "Hello from the scripted backend."]


async def test_backup_of_postgresql_points_to_pg_dump(postgres):
    db = Database(StorageSettings(url=postgres.create_database("backup_refused")))
    with pytest.raises(StorageError, match="use pg_dump"):
        backup_sqlite(db, Path("/tmp/never-written.db"))
    await db.close()
