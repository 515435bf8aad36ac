"""Switching plugins on and off while the bot runs, persisted so that the choice survives a restart.

An override in the database (``plugin_state``, plugin ``botkit``, key
``enabled:NAME``) beats ``[plugins.NAME] enabled`` in config until it is
cleared. The admin plugin's commands and ``botkit plugins enable|disable|clear``
use this module.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError

from botkit.errors import PluginLoadError
from botkit.hookcall import call_plugin
from botkit.storage import Database, PluginStateRecord

if TYPE_CHECKING:
    from botkit.bot import Bot

log = logging.getLogger("botkit.plugins")

OWNER = "botkit"
PREFIX = "enabled:"


async def read_overrides(db: Database) -> dict[str, bool]:
    """Plugin name -> enabled, as stored; empty when the table does not exist yet."""
    try:
        async with db.sessions() as session:
            rows = await session.execute(
                select(PluginStateRecord.key, PluginStateRecord.value).where(
                    PluginStateRecord.plugin == OWNER
                )
            )
            return {key.removeprefix(PREFIX): bool(value) for key, value in rows if key.startswith(PREFIX)}
    except SQLAlchemyError:
        return {}


async def write_override(db: Database, name: str, enabled: bool | None) -> None:
    """Store (or with ``None`` clear) the override for plugin ``name``."""
    async with db.session() as session:
        await session.execute(
            delete(PluginStateRecord).where(
                PluginStateRecord.plugin == OWNER, PluginStateRecord.key == PREFIX + name
            )
        )
        if enabled is not None:
            session.add(PluginStateRecord(plugin=OWNER, key=PREFIX + name, value=enabled))


def apply_overrides(bot: Bot, overrides: dict[str, bool]) -> None:
    """At start, before any plugin has started: make the loaded plugins match the overrides."""
    host = bot.host
    for name, enabled in sorted(overrides.items()):
        if name not in host.infos:
            log.warning("plugin %r has a stored override but is not installed; ignored", name)
            continue
        loaded = host.pm.get_plugin(name) is not None
        if enabled == loaded:
            continue
        reason = host.switchable(name)
        if reason is not None:
            log.warning("stored override for plugin %r not applied: %s", name, reason)
            continue
        if enabled:
            error = resume_checked(bot, name)
            if error:
                log.error("plugin %r stays off despite its stored override: %s", name, error)
        else:
            host.suspend(name)
        log.info("plugin %r is %s by a stored override", name, "on" if enabled else "off")


def resume_checked(bot: Bot, name: str) -> str | None:
    """Load ``name``; undo it if it turns out to need a restart. Returns the problem, if any."""
    try:
        bot.host.resume(name)
    except PluginLoadError as error:
        return error.cause
    reason = bot.host.switchable(name)
    if reason is not None:
        bot.host.suspend(name)
        return reason
    return None


async def set_enabled(bot: Bot, name: str, enabled: bool) -> str:
    """Switch plugin ``name`` now and remember it. Returns what happened, for the admin."""
    host = bot.host
    reason = host.switchable(name)
    if reason is not None:
        return f"Cannot switch {name}: {reason}."
    loaded = host.pm.get_plugin(name) is not None
    if enabled and not loaded:
        error = resume_checked(bot, name)
        if error:
            return f"Cannot enable {name}: {error}"
        await call_plugin(bot.hook.botkit_startup, name, bot=bot)
    elif not enabled and loaded:
        await call_plugin(bot.hook.botkit_shutdown, name, bot=bot)
        host.suspend(name)
    await write_override(bot.db, name, enabled)
    state = "enabled" if enabled else "disabled"
    return f"Plugin {name} is {state} (stored: it stays {state} after a restart until cleared)."


async def clear(bot: Bot, name: str) -> str:
    """Forget the override of ``name``; config decides again from the next start."""
    if name not in bot.host.infos:
        return f"There is no plugin {name!r}."
    await write_override(bot.db, name, None)
    return f"Override of {name} cleared: config.toml decides from the next start."
