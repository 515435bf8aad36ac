"""Which running bots use a database, so that ``botkit db upgrade|downgrade`` does not change its schema under them.

Two ways, each seeing what it can (docs/storage.md, "Migrating beside a running bot"):

- control sockets, on this machine: the socket of the config in hand (``[bot] control_socket``,
  as ``botkit finetune deploy`` finds its bot) and every ``auto`` socket of this user; each bot
  there is asked its ``status`` and counts when it names the same database (``Database.key``);
- PostgreSQL, from any machine: ``pg_stat_activity`` lists the connections to the same database
  that a running bot opened (``application_name`` ``botkit-bot``).

A look, not a lock: a bot that starts right after it is not stopped.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from botkit.control import (
    CLAIM_TIMEOUT,
    auto_folder,
    control_socket_path,
    request,
    unix_sockets_available,
)
from botkit.errors import ConfigError, ControlError, NoRunningBot, StorageError
from botkit.settings import Settings
from botkit.storage.database import BOT_APPLICATION_NAME, Database, describe


async def bots_using(db: Database, settings: Settings) -> list[str]:
    """One line for each running bot found on ``db`` (``settings``: the config in hand); empty: none found."""
    own = own_socket(settings)
    answers = await asyncio.gather(*(ask_bot(path, db, own) for path in sockets(own)))
    found = [line for line in answers if line is not None]
    if not db.is_sqlite:
        found += await postgres_bot_connections(db)
    return found


def own_socket(settings: Settings) -> Path | None:
    try:
        return control_socket_path(settings)
    except ConfigError:
        return None  # a path too long to listen on: no bot listens there either


def sockets(own: Path | None) -> list[Path]:
    """The config's own control socket first, then the other sockets in this user's ``auto`` folder."""
    paths = [own] if own is not None else []
    if unix_sockets_available():
        try:
            paths += sorted(path for path in auto_folder().glob("*.sock") if path != own)
        except OSError:
            pass  # a folder we may not read holds no bot of ours
    return paths


async def ask_bot(path: Path, db: Database, own: Path | None) -> str | None:
    """A line about the bot at ``path`` if it uses ``db``; ``None`` if it does not, or nobody is there.

    ``own``: the socket of the config in hand, whose bot counts even when it cannot say its database.
    """
    try:
        answer = await request(path, {"command": "status"}, timeout=CLAIM_TIMEOUT)
    except NoRunningBot:
        return None
    except ControlError as error:
        # Something listens on this config's socket without a usable answer: a bot of this
        # config, busy or stuck, is the likely one. Elsewhere it may be anything.
        return f"something answers on this config's control socket {path} ({error})" if path == own else None
    database = answer.get("database")
    key = database.get("key") if isinstance(database, dict) else None
    if (key is None and path != own) or (key is not None and key != db.key):
        return None  # another database, or an older botkit that does not say which (not this config's)
    pid, config = answer.get("pid"), answer.get("config")
    details = [f"pid {pid}"] if isinstance(pid, int) else []
    if isinstance(config, str):
        details.append(f"config {config}")
    who = f"a bot ({', '.join(details)})" if details else "a bot"
    return f"{who} answers on the control socket {path}"


async def postgres_bot_connections(db: Database) -> list[str]:
    """One line per client address with connections named ``botkit-bot`` to ``db``'s database."""
    query = text(
        "SELECT host(client_addr) AS address, count(*) AS connections FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = :name AND pid <> pg_backend_pid() "
        "GROUP BY 1 ORDER BY 1"
    )
    try:
        async with db.engine.connect() as connection:
            rows = (await connection.execute(query, {"name": BOT_APPLICATION_NAME})).all()
    except SQLAlchemyError as error:
        raise StorageError(
            f"cannot tell whether a bot uses {db.display_url}: reading pg_stat_activity failed: {describe(error)}"
        ) from None
    lines = []
    for address, connections in rows:
        # No address: a Unix-socket connection, or one of another role (its address is hidden
        # without pg_read_all_stats; its application_name is not).
        origin = f"from {address}" if address else "from a local socket or a host not shown to this role"
        plural = "s" if connections != 1 else ""
        lines.append(f"{connections} PostgreSQL connection{plural} named {BOT_APPLICATION_NAME!r} {origin}")
    return lines
