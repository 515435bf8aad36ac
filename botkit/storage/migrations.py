"""Alembic, driven from botkit: the core version folder plus one branch per plugin that registers one."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection

from botkit.errors import StorageError
from botkit.storage.database import Database
from botkit.storage.models import Base
from botkit.storage.text_index import is_text_index

CORE_BRANCH = "botkit"
# The PostgreSQL advisory lock that migrations hold: 64 bits of blake2b("botkit:schema").
SCHEMA_LOCK = int.from_bytes(hashlib.blake2b(b"botkit:schema", digest_size=8).digest(), "big", signed=True)


def migrations_dir() -> Path:
    """The installed ``botkit.migrations`` folder (``migrations/`` in the repository)."""
    spec = importlib.util.find_spec("botkit.migrations")
    assert spec is not None and spec.submodule_search_locations, "botkit.migrations is missing"
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True, slots=True)
class MigrationBranch:
    """A folder of Alembic revisions and the tables it creates, contributed by a plugin (or the core)."""

    plugin: str
    versions: Path
    metadata: MetaData


class Migrator:
    """Upgrade, downgrade and inspect the schema of one database."""

    def __init__(self, db: Database, branches: list[MigrationBranch]) -> None:
        self.db = db
        self.branches = [MigrationBranch("core", migrations_dir() / "versions", Base.metadata), *branches]

    def config(self, connection: Connection | None = None, stdout: io.StringIO | None = None) -> Config:
        config = Config(stdout=stdout or io.StringIO())
        config.set_main_option("script_location", str(migrations_dir()))
        config.set_main_option("path_separator", "os")
        config.set_main_option("version_locations", os.pathsep.join(str(b.versions) for b in self.branches))
        config.attributes["connection"] = connection
        config.attributes["target_metadata"] = [b.metadata for b in self.branches]
        return config

    def script(self) -> ScriptDirectory:
        return ScriptDirectory.from_config(self.config())

    def heads(self) -> set[str]:
        """The newest revision of each branch, as this code knows them."""
        return set(self.script().get_heads())

    async def _run(self, action: Callable[[Connection], Any]) -> Any:
        try:
            async with self.db.engine.begin() as connection:
                return await connection.run_sync(action)
        except CommandError as error:
            raise StorageError(f"migration failed: {error}") from None

    async def current(self) -> set[str]:
        """The revisions the database is at (empty for a new database)."""
        return await self._run(lambda c: set(MigrationContext.configure(c).get_current_heads()))

    async def is_current(self) -> bool:
        return self.up_to_date(await self.current())

    def up_to_date(self, current: set[str]) -> bool:
        """Whether every head is applied: in ``current`` or an ancestor (or dependency) of one.

        Alembic keeps only the newest revision per branch in alembic_version, and a
        branch that ``depends_on`` another stands for both.
        """
        script = self.script()
        applied: set[str] = set()
        stack = list(current)
        while stack:
            revision = script.get_revision(stack.pop())
            if revision is None or revision.revision in applied:
                continue
            applied.add(revision.revision)
            for parent in _as_tuple(revision.down_revision) + _as_tuple(revision.dependencies):
                stack.extend(r.revision for r in script.get_revisions(parent) if r is not None)
        return self.heads() <= applied

    async def upgrade(self, target: str = "heads") -> str:
        out = io.StringIO()
        await self._migrate(lambda c: command.upgrade(self.config(c, out), target))
        return out.getvalue()

    async def downgrade(self, target: str) -> str:
        out = io.StringIO()
        await self._migrate(lambda c: command.downgrade(self.config(c, out), target))
        return out.getvalue()

    async def _migrate(self, action: Callable[[Connection], Any]) -> Any:
        """Run ``action`` holding the schema's lock, so that replicas starting together migrate once.

        PostgreSQL: a transaction-level advisory lock, taken before Alembic reads
        alembic_version (so the second replica waits, then finds the schema current);
        DDL is transactional there, and the lock goes with the commit or a crash.
        SQLite: ``BEGIN IMMEDIATE`` takes the file's write lock first (a second process
        waits up to ``busy_timeout``).
        """
        try:
            async with self.db.engine.begin() as connection:
                if self.db.is_sqlite:
                    await connection.exec_driver_sql("BEGIN IMMEDIATE")
                else:
                    await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
                return await connection.run_sync(action)
        except CommandError as error:
            raise StorageError(f"migration failed: {error}") from None

    def history(self) -> str:
        out = io.StringIO()
        command.history(self.config(stdout=out), verbose=False)
        return out.getvalue()

    async def differences(self) -> list[Any]:
        """What autogenerate would change to make the database match the models (empty: they agree)."""
        metadata = [b.metadata for b in self.branches]

        def compare(connection: Connection) -> list[Any]:
            # The text index is made by migration 0006 in each database's own terms, not by the models.
            opts = {"compare_type": True, "include_name": lambda name, kind, _: not is_text_index(name, kind)}
            context = MigrationContext.configure(connection, opts=opts)
            return compare_metadata(context, metadata)  # type: ignore[arg-type]  # a list is accepted

        return await self._run(compare)

    async def ensure_current(self, auto_upgrade: bool) -> None:
        """Upgrade, or refuse with the command to run, when the schema is behind this code."""
        current, heads = await self.current(), self.heads()
        unknown = {rev for rev in current if self._known(rev) is False}
        if unknown:
            raise StorageError(
                f"the database at {self.db.display_url} is at revision(s) {', '.join(sorted(unknown))}, "
                "which this botkit does not know: it was migrated by a newer version (or a plugin "
                "that is not loaded); upgrade botkit or enable that plugin"
            )
        if self.up_to_date(current):
            return
        if not auto_upgrade:
            raise StorageError(
                f"the database schema at {self.db.display_url} is out of date "
                f"(at {', '.join(sorted(current)) or 'nothing'}; this code needs {', '.join(sorted(heads))}): "
                "run `botkit db upgrade`, or set [storage] auto_upgrade = true"
            )
        await self.upgrade()

    def _known(self, revision: str) -> bool:
        try:
            return self.script().get_revision(revision) is not None
        except CommandError:
            return False


def _as_tuple(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)
