"""Online backup of the SQLite database (PostgreSQL: use pg_dump)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from botkit.errors import StorageError
from botkit.storage.database import Database


def backup_sqlite(db: Database, target: Path, overwrite: bool = False) -> int:
    """Copy the live SQLite database to ``target`` page by page; returns the backup's size in bytes.

    SQLite's backup API reads a consistent snapshot while other processes keep
    writing, so the bot need not stop.
    """
    source = db.sqlite_path
    if source is None:
        raise StorageError(
            f"`botkit db backup` copies SQLite files; {db.display_url} is PostgreSQL: "
            "use pg_dump, e.g. pg_dump --format=custom --file=botkit.dump DBNAME"
        )
    if not source.is_file():
        raise StorageError(f"there is no database at {source} yet (the bot creates it on first start)")
    if target.exists() and not overwrite:
        raise StorageError(f"{target} exists; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as origin, sqlite3.connect(partial) as copy:
            origin.execute(f"PRAGMA busy_timeout={int(db.settings.busy_timeout * 1000)}")
            origin.backup(copy)
        partial.replace(target)
    except (sqlite3.Error, OSError) as error:
        partial.unlink(missing_ok=True)
        raise StorageError(f"backup of {source} to {target} failed: {error}") from None
    return target.stat().st_size


def timestamped_path(db: Database, label: str, now: datetime | None = None) -> Path:
    """A free name next to the SQLite file for a backup: ``botkit-<label>-20261128T093000Z.db``
    (``...Z-2.db`` and on when taken). ``now``: the time to name (default: now, UTC)."""
    source = db.sqlite_path
    assert source is not None, "only a SQLite database has a file to back up"
    source = source.absolute()  # the path is told to the user, wherever they run botkit from
    base = f"{source.stem}-{label}-{(now or datetime.now(UTC)).strftime('%Y%m%dT%H%M%SZ')}"
    path, taken = source.with_name(base + source.suffix), 1
    while path.exists():
        taken += 1
        path = source.with_name(f"{base}-{taken}{source.suffix}")
    return path


def pg_dump_command(db: Database) -> str:
    """The pg_dump command line that backs up ``db``'s PostgreSQL database (no password in it)."""
    url = db.url
    parts = ["pg_dump", "--format=custom", f"--file={url.database or 'botkit'}.dump"]
    if url.host:
        parts.append(f"--host={url.host}")
    if url.port:
        parts.append(f"--port={url.port}")
    if url.username:
        parts.append(f"--username={url.username}")
    parts.append(url.database or "DBNAME")
    return " ".join(parts)
