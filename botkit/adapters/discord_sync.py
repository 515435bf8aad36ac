"""Registering the bot's slash commands with Discord: only when they changed, never fatal; ``botkit discord sync``.

Discord limits how often an application may create commands (a few hundred a day),
so a bot that restarts often would be rate limited, and a failed sync used to stop
the bot. Now the adapter syncs in the background after login, and only when the
commands differ from the last successful sync, whose fingerprint (a hash of the
payloads, the application and the API) is kept in ``<data_dir>/discord-commands.json``.
A failure is a warning: the bot runs on with the commands Discord already has.
``botkit discord sync`` registers them now, changed or not.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from botkit.errors import BotkitError, ConfigError
from botkit.ops import Context, config_option, fail, load_bot

if TYPE_CHECKING:
    from botkit.adapters.discord import DiscordAdapter

log = logging.getLogger("botkit.adapters.discord")

STATE_FILE = "discord-commands.json"


class CommandSync:
    """The slash commands of one command tree, and whether Discord already has them."""

    def __init__(self, adapter: DiscordAdapter, tree: Any) -> None:
        import discord

        self.tree = tree
        self.api_url = adapter.settings.api_url
        self.guilds = [discord.Object(id=guild_id) for guild_id in adapter.settings.command_guilds]
        self.state_file = adapter.bot.settings.storage.data_dir.expanduser() / STATE_FILE

    def fingerprint(self) -> str:
        """A hash of what a sync would send, to whom: the payloads per scope, the application, the API."""
        scopes = {
            str(guild.id) if guild else "global": [
                command.to_dict(self.tree) for command in self.tree.get_commands(guild=guild)
            ]
            for guild in self.guilds or [None]
        }
        identity = {"api": self.api_url, "application": self.tree.client.application_id, "scopes": scopes}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def last_synced(self) -> str | None:
        try:
            return json.loads(self.state_file.read_text(encoding="utf-8")).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            return None

    def remember(self, fingerprint: str) -> None:
        record = {"fingerprint": fingerprint, "synced_at": datetime.now(UTC).isoformat(timespec="seconds")}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.state_file.with_name(self.state_file.name + ".partial")
        partial.write_text(json.dumps(record) + "\n", encoding="utf-8")
        partial.replace(self.state_file)

    async def sync(self) -> list[str]:
        """Register the commands in every scope and remember them; what was registered where.

        Raises discord.py's errors (``HTTPException``, ``RateLimited``) when Discord refuses.
        """
        fingerprint = self.fingerprint()
        done = []
        for guild in self.guilds or [None]:
            synced = await self.tree.sync(guild=guild)
            done.append(
                f"{len(synced)} slash commands registered {f'in guild {guild.id}' if guild else 'globally'}"
            )
        self.remember(fingerprint)
        return done

    async def sync_if_changed(self) -> None:
        """The adapter's sync at start: skipped when unchanged; a failure is logged and the bot runs on."""
        import discord

        if self.fingerprint() == self.last_synced():
            log.info(
                "discord: slash commands unchanged since the last sync; `botkit discord sync` forces one"
            )
            return
        try:
            for line in await self.sync():
                log.info("discord: %s", line)
        except (discord.DiscordException, OSError) as error:
            log.warning(
                "discord: could not register the slash commands (%s: %s); the bot runs on with the commands "
                "Discord had, and tries again at its next start (or run `botkit discord sync`)",
                type(error).__name__,
                error,
            )


@click.group("discord")
def discord_group() -> None:
    """The Discord adapter: register its slash commands."""


@discord_group.command("sync")
@config_option
@click.pass_obj
def sync_command(ctx: Context) -> None:
    """Register the slash commands with Discord now, even when they have not changed since the last sync."""
    try:
        adapter = load_bot(ctx.settings()).make_adapter("discord")
        if not adapter.settings.enabled:
            raise ConfigError(
                "[adapters.discord] is not enabled: set enabled = true (and the token in "
                "BOTKIT_ADAPTERS__DISCORD__TOKEN) to register its slash commands"
            )
        for line in asyncio.run(adapter.sync_commands()):
            click.echo(line)
    except BotkitError as error:
        fail(error)
