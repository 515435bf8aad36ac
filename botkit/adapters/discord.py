"""The Discord adapter: discord.py's gateway client and app commands; it only translates.

It answers when mentioned, in DMs, and to replies to its own messages; in a
thread it has answered in (or opened) it keeps answering without a new
mention (``follow_threads``); optionally it opens a thread per conversation
(``open_threads``). Every bot command is also a slash command, and ``/ask``
asks the model; the interaction is deferred at once and answered afterwards.
Reactions go to ``bot.react``; edits and deletions to ``bot.message_changed``.
A message delivered twice (a gateway replay) is answered once, by its id.
Reconnects and RESUME are discord.py's. The token comes only from the environment.
With ``shard_count`` it runs discord.py's sharded client, connecting only this
replica's ``shard_ids``: Discord sends each shard the events of its guilds, so
replicas never see each other's messages.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from botkit import hookimpl
from botkit.adapter import Adapter
from botkit.adapters.api_retries import discord_http_trace, platform_retries
from botkit.adapters.discord_commands import build_command_tree
from botkit.adapters.discord_replies import (
    PLATFORM,
    ChannelResponder,
    InteractionResponder,
    author_of,
    edit_from,
    incoming_text,
    place_of,
    reaction_from,
)
from botkit.adapters.discord_settings import TOKEN_VARIABLE, DiscordSettings
from botkit.errors import PlatformError
from botkit.types import Message, MessageChange

if TYPE_CHECKING:
    from botkit.api import BotAPI

log = logging.getLogger("botkit.adapters.discord")

# Longest wait at shutdown for replies being delivered before the connection closes.
SHUTDOWN_TIMEOUT = 30.0
# The discord.py events the adapter listens to (each handled by its on_<event> method).
GATEWAY_EVENTS = (
    "connect",
    "shard_connect",
    "ready",
    "resumed",
    "shard_resumed",
    "message",
    "raw_reaction_add",
    "raw_reaction_remove",
    "raw_message_edit",
    "raw_message_delete",
    "raw_bulk_message_delete",
)
# How many threads the bot remembers answering in (to keep following them without a mention).
FOLLOWED_THREADS = 10_000


class DiscordAdapter(Adapter):
    """Connects one Discord bot user (every guild it is in, and its DMs) to the bot."""

    name = PLATFORM
    settings: DiscordSettings

    def __init__(self, bot: BotAPI, settings: DiscordSettings) -> None:
        super().__init__(bot, settings)
        self.client: Any = None
        self.connected = asyncio.Event()
        self._closing = False
        self._inflight: dict[asyncio.Task[Any], Message] = {}
        self._threads: OrderedDict[int, None] = OrderedDict()
        self._shards_up: set[int] = set()

    def _make_client(self) -> Any:
        import discord
        import yarl

        # discord.py keeps its endpoints as class attributes; these are the only knobs it offers.
        discord.http.Route.BASE = self.settings.api_url.rstrip("/")
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.settings.gateway_url)
        intents = discord.Intents(
            guilds=True,
            guild_messages=True,
            dm_messages=True,
            guild_reactions=True,
            dm_reactions=True,
            message_content=self.settings.message_content,
        )
        self.allowed_mentions = discord.AllowedMentions.none()
        # The bot never joins voice: discord.py's warnings about missing voice libraries are noise.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        trace = discord_http_trace(platform_retries(self.bot.metrics), self.settings.api_url)
        shards = self.settings.own_shards
        if shards is None:
            client = discord.Client(intents=intents, allowed_mentions=self.allowed_mentions, http_trace=trace)
        else:
            client = discord.AutoShardedClient(
                intents=intents,
                allowed_mentions=self.allowed_mentions,
                http_trace=trace,
                shard_count=self.settings.shard_count,
                shard_ids=shards,
            )
        self.client = client
        for event in GATEWAY_EVENTS:
            setattr(client, f"on_{event}", getattr(self, f"on_{event}"))
        return client

    async def run(self) -> None:
        import discord

        from botkit.adapters.discord_sync import CommandSync

        client = self._make_client()
        tree = build_command_tree(self, client)
        sync = None
        if self.settings.own_shards is not None:
            log.info("discord: this replica runs %s", self._shards_text())
        try:
            await self._login(client)
            if self._syncs_commands():
                # In the background: a slow, failed or rate-limited sync never holds up or stops the bot.
                sync = asyncio.create_task(CommandSync(self, tree).sync_if_changed())
            if not self._closing:
                await client.connect(reconnect=True)
        except discord.PrivilegedIntentsRequired:
            raise PlatformError(
                "Discord refused the Message Content intent: turn it on in the Developer Portal "
                "(Bot > Privileged Gateway Intents), or set [adapters.discord] "
                "message_content = false"
            ) from None
        except discord.ConnectionClosed as error:
            raise PlatformError(f"the Discord gateway closed the connection (code {error.code})") from None
        except (discord.HTTPException, OSError) as error:
            raise PlatformError(
                f"could not reach Discord at {self.settings.api_url}: {type(error).__name__}: {error}"
            ) from None
        finally:
            if sync is not None:
                sync.cancel()
            if not client.is_closed():
                await client.close()

    def _shards_text(self) -> str:
        shards = self.settings.own_shards or []
        return f"shard{'s' if len(shards) > 1 else ''} {', '.join(map(str, shards))} of {self.settings.shard_count}"

    def _syncs_commands(self) -> bool:
        # One registration is enough: of several replicas, the one that runs shard 0 does it.
        shards = self.settings.own_shards
        return self.settings.sync_commands and (shards is None or 0 in shards)

    async def _login(self, client: Any) -> None:
        import discord

        assert self.settings.token is not None  # the settings refuse an enabled adapter without one
        try:
            await client.login(self.settings.token.get_secret_value())
        except discord.LoginFailure:
            raise PlatformError(
                f"Discord refused the bot token in {TOKEN_VARIABLE}: reset it in the "
                "Developer Portal (Bot > Reset Token) and set the variable again"
            ) from None

    async def sync_commands(self) -> list[str]:
        """Register the slash commands now, changed or not (``botkit discord sync``); what was registered."""
        import discord

        from botkit.adapters.discord_sync import CommandSync

        client = self._make_client()
        try:
            await self._login(client)
            return await CommandSync(self, build_command_tree(self, client)).sync()
        except (discord.DiscordException, OSError) as error:  # refused, rate limited, unreachable
            raise PlatformError(
                f"Discord at {self.settings.api_url} did not take the slash commands: {type(error).__name__}: {error}"
            ) from None
        finally:
            await client.close()

    def is_connected(self) -> bool:
        client = self.client
        if client is None or not client.is_ready() or client.is_closed():
            return False
        shards = self.settings.own_shards
        if shards is None:
            return True
        # Every shard of this replica has its gateway connection open (a dropped one is resuming).
        running = client.shards
        return all(shard_id in running and not running[shard_id].is_closed() for shard_id in shards)

    async def close(self) -> None:
        """Stop taking messages; replies in flight end (stopped) and get their last edit; then disconnect."""
        self._closing = True
        deadline = asyncio.get_running_loop().time() + SHUTDOWN_TIMEOUT
        while self._inflight and asyncio.get_running_loop().time() < deadline:
            # Again each round: a message that waited behind another in its conversation starts late.
            for message in list(self._inflight.values()):
                self.bot.stop_generations(message)
            await asyncio.wait(list(self._inflight), timeout=0.1)
        if self.client is not None and not self.client.is_closed():
            await self.client.close()

    async def handle(self, message: Message, responder: Any) -> None:
        """Hand ``message`` to the bot, tracked so that shutdown lets its reply finish."""
        task = asyncio.current_task()
        assert task is not None
        self._inflight[task] = message
        try:
            await self.bot.handle(message, responder)
        finally:
            del self._inflight[task]

    async def on_slash(self, interaction: Any, text: str, *, ephemeral: bool) -> None:
        """A slash command: acknowledged at once ("thinking..."), then answered like the same text typed."""
        if self._closing or not await self.bot.first_delivery(PLATFORM, f"interaction:{interaction.id}"):
            return
        await interaction.response.defer(thinking=True, ephemeral=ephemeral)
        channel_id, thread_id, _ = place_of(interaction.channel)
        responder = InteractionResponder(
            interaction,
            ephemeral=ephemeral,
            allowed_mentions=self.allowed_mentions,
            interval=self.settings.edit_interval,
        )
        message = Message(
            text=text,
            author=author_of(interaction.user),
            platform=PLATFORM,
            channel_id=channel_id,
            thread_id=thread_id,
            is_dm=interaction.guild_id is None,
            message_id=str(interaction.id),
            created_at=interaction.created_at,
        )
        try:
            await self.handle(message, responder)
        finally:
            await responder.close()

    # --- gateway events ------------------------------------------------------------------------

    async def on_connect(self) -> None:
        # READY: the session is up and events flow (discord.py's on_ready waits seconds more for guilds).
        if self.settings.own_shards is None:
            self.connected.set()

    async def on_shard_connect(self, shard_id: int) -> None:
        # A shard's READY; connected once every shard of this replica has had one.
        log.info("discord: shard %d of %d connected", shard_id, self.settings.shard_count)
        self._shards_up.add(shard_id)
        if self._shards_up.issuperset(self.settings.own_shards or ()):
            self.connected.set()

    async def on_ready(self) -> None:
        log.info(
            "discord: connected as %s (%s) in %d guilds%s",
            self.client.user,
            self.client.user.id,
            len(self.client.guilds),
            "" if self.settings.own_shards is None else f" ({self._shards_text()})",
        )

    async def on_resumed(self) -> None:
        if self.settings.own_shards is None:
            log.info("discord: gateway session resumed")

    async def on_shard_resumed(self, shard_id: int) -> None:
        log.info("discord: gateway session of shard %d resumed", shard_id)

    def _follows(self, channel: Any) -> bool:
        import discord

        if not (self.settings.follow_threads and isinstance(channel, discord.Thread)):
            return False
        return channel.owner_id == self.client.user.id or channel.id in self._threads

    def _remember_thread(self, thread_id: int) -> None:
        self._threads[thread_id] = None
        self._threads.move_to_end(thread_id)
        while len(self._threads) > FOLLOWED_THREADS:
            self._threads.popitem(last=False)

    def _is_for_me(self, message: Any) -> bool:
        me = self.client.user
        if message.guild is None:
            return True
        if any(user.id == me.id for user in message.mentions):
            return True
        reference = message.reference
        resolved = reference.resolved if reference is not None else None
        if getattr(getattr(resolved, "author", None), "id", None) == me.id:
            return True
        return self._follows(message.channel)

    async def on_message(self, message: Any) -> None:
        import discord

        if self._closing or message.author.bot or message.webhook_id is not None:
            return  # its own messages, other bots', webhooks'
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return  # joins, pins, thread starters...
        if not self._is_for_me(message) or not await self.bot.first_delivery(PLATFORM, str(message.id)):
            return
        text = incoming_text(message, self.client.user.id)
        channel = message.channel
        channel_id, thread_id, is_dm = place_of(channel)
        reply_to = message
        if self.settings.open_threads and not is_dm and thread_id is None and text:
            try:
                channel = await message.create_thread(
                    name=(text.splitlines()[0][:90] or "conversation"),
                    auto_archive_duration=self.settings.thread_archive_minutes,
                )
                thread_id, reply_to = str(channel.id), None
            except discord.HTTPException as error:
                log.warning(
                    "discord: could not open a thread in %s (%s); answering in the channel", channel_id, error
                )
        if thread_id is not None:
            self._remember_thread(int(thread_id))
        responder = ChannelResponder(
            channel, reply_to, allowed_mentions=self.allowed_mentions, interval=self.settings.edit_interval
        )
        responder.start_typing()
        try:
            await self.handle(
                Message(
                    text=text,
                    author=author_of(message.author),
                    platform=PLATFORM,
                    channel_id=channel_id,
                    thread_id=thread_id,
                    is_dm=is_dm,
                    message_id=str(message.id),
                    created_at=message.created_at,
                ),
                responder,
            )
        finally:
            await responder.stop_typing()

    async def on_raw_reaction_add(self, payload: Any) -> None:
        await self._reaction(payload, added=True)

    async def on_raw_reaction_remove(self, payload: Any) -> None:
        await self._reaction(payload, added=False)

    async def _reaction(self, payload: Any, *, added: bool) -> None:
        channel_id = self._channel_id(payload.channel_id)
        reaction = reaction_from(payload, self.client.user.id, channel_id, added=added)
        if reaction is not None:
            await self.bot.react(reaction)

    def _channel_id(self, channel_id: int) -> str:
        """botkit's channel id for a Discord channel id: a thread's parent channel, as in ``Message``."""
        channel = self.client.get_channel(channel_id)
        return place_of(channel)[0] if channel is not None else str(channel_id)

    async def on_raw_message_edit(self, payload: Any) -> None:
        change = edit_from(payload, self.client.user.id, self._channel_id(payload.channel_id))
        if change is not None:
            await self.bot.message_changed(change)

    async def on_raw_message_delete(self, payload: Any) -> None:
        cached = payload.cached_message
        if cached is not None and cached.author.bot:
            return
        channel_id = self._channel_id(payload.channel_id)
        await self.bot.message_changed(MessageChange(PLATFORM, channel_id, str(payload.message_id), None))

    async def on_raw_bulk_message_delete(self, payload: Any) -> None:
        channel_id = self._channel_id(payload.channel_id)
        for message_id in sorted(payload.message_ids):
            await self.bot.message_changed(MessageChange(PLATFORM, channel_id, str(message_id), None))


@hookimpl
def botkit_register_adapters(register):
    register(PLATFORM, DiscordAdapter, DiscordSettings)


@hookimpl
def botkit_register_cli(cli):
    from botkit.adapters.discord_sync import discord_group  # click commands load when the CLI starts

    cli.add_command(discord_group)
