"""The one database connection: an async SQLAlchemy engine for SQLite (default) or PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from sqlalchemy import event, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from botkit.errors import ConfigError, StorageError

DB_FILE = "botkit.db"
# What PostgreSQL lists (pg_stat_activity.application_name) for the connections of a running bot,
# and for those of every other botkit process (the db commands, export...): `botkit db upgrade`
# and `downgrade` look for the first.
BOT_APPLICATION_NAME = "botkit-bot"
TOOL_APPLICATION_NAME = "botkit"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "botkit"


class StorageSettings(BaseModel):
    """``[storage]``: where the bot keeps conversations, feedback and state."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Field(
        default_factory=default_data_dir, description="folder for the SQLite file and spool"
    )
    url: str | None = Field(
        None,
        description="SQLAlchemy URL, e.g. postgresql+asyncpg://bot@db/botkit; unset for SQLite in data_dir",
    )
    password: SecretStr | None = Field(None, description="database password (environment only)")
    auto_upgrade: bool = Field(True, description="apply pending migrations when the bot starts")
    connect_timeout: float = Field(10.0, gt=0, description="seconds to wait for the database")
    busy_timeout: float = Field(30.0, gt=0, description="SQLite: seconds a writer waits for the lock")
    pool_size: int = Field(5, ge=1, description="PostgreSQL connections kept open")
    sqlite_synchronous: Literal["normal", "full"] = Field(
        "normal",
        description="'full': each SQLite commit and each append to memory's journal is synced to disk "
        "(survives power loss); 'normal': survives a crash of the bot, not of the machine",
    )

    @property
    def spool_dir(self) -> Path:
        """The folder of the write-behind writers' journals (memory's ``memory.jsonl``)."""
        return self.data_dir.expanduser() / "spool"


def masked(url: URL) -> str:
    return url.render_as_string(hide_password=True)


class Database:
    """An async engine and its session factory. ``await connect()`` before use."""

    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        self.url = self._url(settings)
        self.display_url = masked(self.url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self.application_name = TOOL_APPLICATION_NAME
        self.engine: AsyncEngine = self._engine()
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @staticmethod
    def _url(settings: StorageSettings) -> URL:
        if settings.url is None:
            return URL.create("sqlite+aiosqlite", database=str(settings.data_dir.expanduser() / DB_FILE))
        try:
            url = make_url(settings.url)
        except ArgumentError:
            raise ConfigError(
                "[storage] url: not a database URL (e.g. postgresql+asyncpg://bot@localhost/botkit)"
            ) from None
        if url.password is not None:
            raise ConfigError(
                "[storage] url: the password is a secret and is read only from the environment: "
                "remove it from the URL and set BOTKIT_STORAGE__PASSWORD"
            )
        if settings.password is not None:
            url = url.set(password=settings.password.get_secret_value())
        backend, driver = url.get_backend_name(), url.get_driver_name()
        if (backend, driver) not in {("sqlite", "aiosqlite"), ("postgresql", "asyncpg")}:
            raise ConfigError(
                f"[storage] url: {backend}+{driver} is not supported; use sqlite+aiosqlite:///PATH "
                "or postgresql+asyncpg://USER@HOST/DB"
            )
        return url

    def _engine(self) -> AsyncEngine:
        options: dict[str, Any] = {}
        if self.is_sqlite:
            options["connect_args"] = {"timeout": self.settings.busy_timeout}
        else:
            options["connect_args"] = {"timeout": self.settings.connect_timeout}
            options["pool_size"] = self.settings.pool_size
            options["pool_pre_ping"] = True
        # SQL parameters are users' messages: never in sqlalchemy's log lines or its errors' text.
        engine = create_async_engine(self.url, hide_parameters=True, **options)
        if not self.is_sqlite:

            @event.listens_for(engine.sync_engine, "do_connect")
            def _name_connection(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
                # Read at each new connection: connect() may rename the pool's connections to come.
                params["server_settings"] = {
                    **(params.get("server_settings") or {}),
                    "application_name": self.application_name,
                }

        if self.is_sqlite:
            busy_ms = int(self.settings.busy_timeout * 1000)
            synchronous = self.settings.sqlite_synchronous.upper()

            @event.listens_for(engine.sync_engine, "connect")
            def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
                cursor = dbapi_connection.cursor()
                # WAL lets readers work beside one writer; busy_timeout makes a second
                # process wait for the lock instead of failing with "database is locked".
                # synchronous: NORMAL (in WAL) loses no commit when the bot crashes, but may
                # lose the last ones when the machine does; FULL syncs every commit.
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.execute(f"PRAGMA synchronous={synchronous}")
                # Deleted rows are overwritten with zeros, not left in free pages of the
                # file: /forgetme and retention promise the text is gone.
                cursor.execute("PRAGMA secure_delete=ON")
                cursor.close()

        return engine

    @property
    def sqlite_path(self) -> Path | None:
        return Path(self.url.database) if self.is_sqlite and self.url.database else None

    @property
    def key(self) -> str | None:
        """What names this database in every process: the SQLite file's real path, or PostgreSQL's
        host, port and database; ``None`` for an in-memory SQLite database, which nothing shares."""
        if self.is_sqlite:
            path = self.sqlite_path
            return None if path is None or str(path) == ":memory:" else f"sqlite:{os.path.realpath(path)}"
        host = (self.url.host or "localhost").lower()
        return f"postgresql://{host}:{self.url.port or 5432}/{self.url.database or ''}"

    async def connect(self, application_name: str | None = None) -> None:
        """Check that the database answers; a clear ``StorageError`` (password masked) if not.

        ``application_name``: how PostgreSQL names the connections opened from now on
        (``BOT_APPLICATION_NAME`` for a running bot; default ``TOOL_APPLICATION_NAME``).
        """
        if application_name is not None:
            self.application_name = application_name
        path = self.sqlite_path
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StorageError(f"cannot create the data folder {path.parent}: {error.strerror}") from None
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                async with self.engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
        except (SQLAlchemyError, OSError, TimeoutError) as error:
            raise StorageError(
                f"cannot reach the database at {self.display_url}: {describe(error)}; "
                "check [storage] url (and BOTKIT_STORAGE__PASSWORD) and that the server is running"
            ) from None

    async def problem(self, timeout: float) -> str | None:
        """Why the bot cannot write to the database now (``/readyz``), or None when it can.

        SQLite: a write lock taken and given back on a connection of its own (a file that
        another process holds locked is as good as down, as it is to the bot's writers);
        PostgreSQL: ``SELECT 1`` through the pool. Waits at most ``timeout`` seconds.
        """
        path = self.sqlite_path
        if path is not None:
            return await asyncio.to_thread(sqlite_problem, path, timeout)
        try:
            async with asyncio.timeout(timeout):
                async with self.engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
        except (SQLAlchemyError, OSError, TimeoutError) as error:
            return describe(error)
        return None

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction, committed on success and rolled back on error."""
        async with self.sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AsyncSession]:
        """A read-only session on one connection that sees the database as of its first query, throughout.

        Every query in it, however long it runs, reads the same committed
        state: what other connections commit meanwhile is invisible. Use it
        when several reads must agree (an export's filters and the rows they
        filter). It holds one connection for its whole life and is rolled back
        at the end.
        """
        async with self.sessions() as session:
            if self.is_sqlite:
                # pysqlite opens a transaction only before a write, so each SELECT would
                # see the newest commit; an explicit BEGIN makes the first read pin one
                # WAL snapshot until the rollback (BEGIN DEFERRED: no lock against writers).
                await session.execute(text("BEGIN"))
            else:
                await session.connection(
                    execution_options={"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
                )
            try:
                yield session
            finally:
                await session.rollback()

    async def checkpoint(self) -> bool:
        """SQLite: copy the WAL into the database file and truncate it to nothing. True when it completed.

        After a deletion this leaves no copy of the deleted rows in the WAL
        file (``secure_delete`` already zeroes them in the pages written). It
        cannot complete while another connection reads an older snapshot (an
        export, a backup); SQLite's own checkpoints finish the work later.
        PostgreSQL: nothing to do here (True); see docs/storage.md.
        """
        if not self.is_sqlite:
            return True
        async with self.engine.connect() as connection:
            busy, _, _ = (await connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")).one()
        return busy == 0

    async def close(self) -> None:
        await self.engine.dispose()


def sqlite_problem(path: Path, timeout: float) -> str | None:
    """Why a writer cannot take the lock of the SQLite file at ``path`` within ``timeout`` s, or None."""
    if not path.exists():
        return f"{path} is missing"
    try:
        connection = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    except sqlite3.Error as error:
        return describe(error)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
    except sqlite3.Error as error:
        return describe(error)
    finally:
        connection.close()
    return None


def describe(error: BaseException) -> str:
    """A one-line reason for a database error, without SQL or parameters (they may hold user text)."""
    if isinstance(error, TimeoutError):
        return "timed out"
    original = getattr(error, "orig", None) or error
    reason = str(original).splitlines()[0] if str(original) else type(original).__name__
    return reason[:300]


def is_rejection(error: BaseException) -> bool:
    """Whether the database refused what was written (a constraint, a value it cannot hold).

    Such an error does not go away by waiting, unlike a lost connection
    (``OperationalError``, ``InterfaceError``, any error that invalidated the connection).
    """
    return isinstance(error, (IntegrityError, DataError)) and not error.connection_invalidated


def rejection_reason(error: BaseException) -> str:
    """Why the database refused a write, naming the constraint or column but never a value.

    SQLite's messages name only the constraint; PostgreSQL's may quote the row,
    so for it only the error's class, code and the names it carries are used.
    """
    original = getattr(error, "orig", None) or error
    code = getattr(original, "sqlstate", None)
    if code is None:
        return describe(error)
    driver = original.__cause__ or original  # the asyncpg error SQLAlchemy's adapter wraps
    names = [
        f"{what} {value}"
        for what in ("table", "column", "constraint")
        if (value := getattr(driver, f"{what}_name", None))
    ]
    return f"{type(driver).__name__} (SQLSTATE {code}{': ' if names else ''}{', '.join(names)})"


def insert_new(session: AsyncSession, table: Any, *unique: str) -> Any:
    """``INSERT ... ON CONFLICT (unique) DO NOTHING`` into ``table`` (a model or a Table), for this database.

    Rows whose ``unique`` columns are stored already are skipped: the insert of a
    retried write stores nothing twice. ``RETURNING`` gives only the rows inserted.
    """
    return dialect_insert(session, table).on_conflict_do_nothing(index_elements=list(unique))


def dialect_insert(session: AsyncSession, table: Any) -> Any:
    """This database's own ``INSERT`` (SQLite's or PostgreSQL's), which knows ``ON CONFLICT``."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


async def write_dead_letter(db: Database, source: str, key: str | None, record: Any, reason: str) -> None:
    """Keep a record the database refused in ``dead_letters``, in a transaction of its own."""
    from botkit.storage.models import DeadLetterRecord

    async with db.session() as session:
        session.add(DeadLetterRecord(source=source, record_key=key, reason=reason[:400], record=record))


async def user_id_for(
    session: AsyncSession, platform: str, platform_user_id: str, display_name: str = ""
) -> int:
    """The ``users`` row id of a platform user, created if missing; safe against concurrent writers."""
    from botkit.storage.models import UserRecord

    values = {"platform": platform, "platform_user_id": platform_user_id, "display_name": display_name}
    await session.execute(insert_new(session, UserRecord, "platform", "platform_user_id").values(**values))
    found = await session.scalar(
        select(UserRecord.id).where(
            UserRecord.platform == platform, UserRecord.platform_user_id == platform_user_id
        )
    )
    assert found is not None
    return found
