"""A fake Discord on 127.0.0.1 for the real discord.py client: the REST API and the gateway WebSocket.

REST (``/api/v10``): what the Discord adapter uses - the bot's own user and
application, messages (create, edit, delete), typing, threads, application
command sync, interaction callbacks and webhook follow-ups - recorded call by
call. The gateway speaks Discord's protocol: HELLO, heartbeats and their ACKs,
IDENTIFY/READY, GUILD_CREATE, dispatches with sequence numbers, RESUME/RESUMED
with the missed events replayed, INVALID_SESSION; with ``zlib-stream``
transport compression when asked (discord.py asks). Sharding as Discord does it:
IDENTIFY may carry ``shard: [id, count]``; each shard gets the events of the
guilds it owns (``(guild_id >> 22) % count``) and shard 0 the DMs. A test can post a user's
message, react, edit, delete, run a slash command, answer the next request of a
route with 429, drop the gateway connection (of one shard) and replay delivered events, and
keep new gateway connections waiting (Discord unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

from botkit.testing import WAIT_TIMEOUT

MESSAGE_LIMIT = 2000
SUPPRESS_EMBEDS = 1 << 2
EPHEMERAL = 1 << 6

ROUTE_NAMES = {
    "channels": "{channel}",
    "messages": "{message}",
    "guilds": "{guild}",
    "applications": "{application}",
    "webhooks": "{application}",
    "interactions": "{interaction}",
}

# Gateway opcodes.
DISPATCH, HEARTBEAT, IDENTIFY, RESUME, INVALID_SESSION, HELLO, HEARTBEAT_ACK = 0, 1, 2, 6, 9, 10, 11


@dataclass
class RestCall:
    """One REST request as the fake saw it (``route`` has the ids replaced by names, e.g. ``{channel}``)."""

    method: str
    path: str
    route: str
    body: Any
    status: int = 200
    at: float = field(default_factory=time.monotonic)


@dataclass
class GatewaySession:
    """One gateway session: its sequence numbers and every event dispatched in it (for RESUME)."""

    session_id: str
    sequence: int = 0
    events: list[tuple[int, str]] = field(default_factory=list)
    socket: web.WebSocketResponse | None = None
    compressor: Any = None
    replay_on_resume: int = 0
    shard: tuple[int, int] = (0, 1)  # [id, count] as IDENTIFY sent it; (0, 1) unsharded


def json_response(data: Any, status: int, headers: dict[str, str] | None = None) -> web.Response:
    """JSON as Discord sends it: discord.py parses a body only when the content type is exactly this."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def snowflake_time() -> str:
    return datetime.now(UTC).isoformat()


def shard_of(guild_id: str | int, shard_count: int) -> int:
    """The shard Discord sends a guild's events to."""
    return (int(guild_id) >> 22) % shard_count


class FakeDiscord:
    """One guild with two text channels (``add_guild`` adds more), three users and the bot.

    Use ``async with FakeDiscord() as discord``.
    """

    def __init__(self, *, token: str = "fake-discord-bot-token", heartbeat_interval_ms: int = 41250) -> None:
        self.token = token
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self._ids = itertools.count(1_100_000_000_000_000_001)
        self.application_id = self.new_id()
        self.bot_user = self._user("botkit", bot=True, user_id=self.application_id)
        self.guild_id = self.new_id()
        self.guilds: dict[str, str] = {self.guild_id: "Fake Guild"}  # guild id -> name
        self.moderator_role = {"id": self.new_id(), "name": "Moderators"}
        self.alice = self._user("alice")
        self.bob = self._user("bob")
        self.other_bot = self._user("otherbot", bot=True)
        self.general = self.new_id()
        self.random = self.new_id()
        self.channels: dict[str, dict[str, Any]] = {
            self.general: self._text_channel(self.general, "general"),
            self.random: self._text_channel(self.random, "random"),
        }
        self.member_roles: dict[str, list[str]] = {self.bob["id"]: [self.moderator_role["id"]]}
        self.dm_channels: dict[str, str] = {}  # user id -> DM channel id
        self.messages: dict[str, dict[str, Any]] = {}  # current state of every live message
        self.deleted: list[str] = []
        self.calls: list[RestCall] = []
        self.commands: dict[str, list[dict[str, Any]]] = {}  # "global" or a guild id -> synced commands
        self.interactions: dict[str, dict[str, Any]] = {}  # interaction token -> its state
        self.typing: list[str] = []  # channel ids, one per typing request
        self.sessions: dict[str, GatewaySession] = {}
        self.current: GatewaySession | None = None  # the session identified or resumed last
        self.live: dict[int, GatewaySession] = {}  # shard id -> its session (connected or resumable)
        self.shard_count = 1  # as the last IDENTIFY said
        self.recommended_shards = 1  # GET /gateway/bot's "shards"
        self.identifies = 0
        self.identified_shards: list[tuple[int, int]] = []
        self.resumes: list[dict[str, Any]] = []
        self.replayed = 0  # events sent again on RESUME that the client had already received
        self.gateway_urls: list[str] = []
        self.ready = asyncio.Event()  # a session is live (READY or RESUMED sent)
        self._accepting = asyncio.Event()  # cleared: new gateway connections wait before HELLO
        self._accepting.set()
        self._rate_limits: list[tuple[str, str, float]] = []
        self._failures: list[tuple[str, str, int]] = []
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> FakeDiscord:
        app = web.Application()
        app.router.add_route("GET", "/gateway", self._gateway)
        app.router.add_route("GET", "/resume-gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for session in self.sessions.values():
            if session.socket is not None and not session.socket.closed:
                await session.socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    def adapter_config(self, **extra: Any) -> dict[str, Any]:
        """The ``[adapters.discord]`` table that points the bot at this fake."""
        return {"enabled": True, "api_url": self.api_url, "gateway_url": self.gateway_url, **extra}

    # --- objects ---------------------------------------------------------------------------

    def new_id(self) -> str:
        return str(next(self._ids))

    def _user(self, name: str, *, bot: bool = False, user_id: str | None = None) -> dict[str, Any]:
        return {
            "id": user_id or self.new_id(),
            "username": name,
            "global_name": name.capitalize(),
            "discriminator": "0",
            "avatar": None,
            "bot": bot,
        }

    def _text_channel(
        self, channel_id: str, name: str, *, parent: str | None = None, guild_id: str | None = None
    ) -> dict[str, Any]:
        if parent is not None:
            guild_id = self.channels[parent]["guild_id"]
        channel = {
            "id": channel_id,
            "type": 0,
            "guild_id": guild_id or self.guild_id,
            "name": name,
            "position": len(getattr(self, "channels", {})),
            "permission_overwrites": [],
            "nsfw": False,
            "topic": None,
            "parent_id": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
        }
        if parent is not None:
            channel.update(
                type=11,
                parent_id=parent,
                owner_id=self.bot_user["id"],
                message_count=0,
                member_count=1,
                thread_metadata={
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": snowflake_time(),
                    "locked": False,
                },
            )
        return channel

    def _member(self, user: dict[str, Any]) -> dict[str, Any]:
        return {
            "roles": list(self.member_roles.get(user["id"], [])),
            "joined_at": "2024-01-01T00:00:00+00:00",
            "nick": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
        }

    def _guild(self, guild_id: str) -> dict[str, Any]:
        everyone = {"id": guild_id, "name": "@everyone", "permissions": "68608"}
        roles = [everyone, self.moderator_role] if guild_id == self.guild_id else [everyone]
        channels = [c for c in self.channels.values() if c["guild_id"] == guild_id]
        return {
            "id": guild_id,
            "name": self.guilds[guild_id],
            "icon": None,
            "owner_id": self.alice["id"],
            "roles": [
                {
                    "color": 0,
                    "hoist": False,
                    "position": position,
                    "permissions": role.get("permissions", "0"),
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                    **role,
                }
                for position, role in enumerate(roles)
            ],
            "emojis": [],
            "stickers": [],
            "features": [],
            "member_count": 4,
            "members": [{**self._member(self.bot_user), "user": self.bot_user}],
            "channels": [c for c in channels if c["type"] == 0],
            "threads": [c for c in channels if c["type"] == 11],
            "presences": [],
            "voice_states": [],
            "large": False,
            "unavailable": False,
            "joined_at": "2024-01-01T00:00:00+00:00",
            "premium_tier": 0,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "preferred_locale": "en-US",
        }

    def _message(
        self,
        channel_id: str,
        author: dict[str, Any],
        content: str,
        *,
        mentions: list[dict[str, Any]] = (),  # type: ignore[assignment]
        reply_to: str | None = None,
        flags: int = 0,
        interaction: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        in_guild = channel_id in self.channels
        message: dict[str, Any] = {
            "id": self.new_id(),
            "channel_id": channel_id,
            "author": author,
            "content": content,
            "timestamp": snowflake_time(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [{**user, "member": self._member(user)} if in_guild else user for user in mentions],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": flags,
        }
        if in_guild:
            message["guild_id"] = self.channels[channel_id]["guild_id"]
            message["member"] = self._member(author)
        if reply_to is not None:
            message["type"] = 19
            message["message_reference"] = {"message_id": reply_to, "channel_id": channel_id, "type": 0}
            if in_guild:
                message["message_reference"]["guild_id"] = message["guild_id"]
            message["referenced_message"] = self.messages.get(reply_to)
        if interaction is not None:
            message["interaction_metadata"] = interaction
        return message

    def add_guild(self, name: str, *, shard: tuple[int, int] | None = None) -> tuple[str, str]:
        """Another guild the bot is in, with one text channel: ``(guild_id, channel_id)``.

        ``shard=(id, count)`` picks an id that Discord routes to shard ``id`` of ``count``.
        Add guilds before the bot connects: they come in READY and GUILD_CREATE.
        """
        guild_id = int(self.new_id())
        while shard is not None and shard_of(guild_id, shard[1]) != shard[0]:
            guild_id += 1 << 22  # the next id of a later millisecond: the next shard
        self.guilds[str(guild_id)] = name
        channel_id = self.new_id()
        self.channels[channel_id] = self._text_channel(channel_id, "general", guild_id=str(guild_id))
        return str(guild_id), channel_id

    # --- what a test does as a user --------------------------------------------------------

    def dm_channel(self, user: dict[str, Any]) -> str:
        """The id of ``user``'s DM channel with the bot."""
        if user["id"] not in self.dm_channels:
            self.dm_channels[user["id"]] = self.new_id()
        return self.dm_channels[user["id"]]

    async def say(
        self,
        content: str,
        *,
        author: dict[str, Any] | None = None,
        channel: str | None = None,
        mention_bot: bool = False,
        reply_to: str | None = None,
    ) -> dict[str, Any]:
        """A user posts a message (MESSAGE_CREATE); ``mention_bot`` prefixes and lists the bot's mention."""
        author = author or self.alice
        channel_id = channel or self.general
        mentions = [self.bot_user] if mention_bot else []
        if (
            reply_to is not None
            and self.messages.get(reply_to, {}).get("author", {}).get("id") == self.bot_user["id"]
        ):
            mentions = [self.bot_user]  # Discord pings the author of the message replied to, by default
        text = f"<@{self.bot_user['id']}> {content}" if mention_bot else content
        known = {user["id"]: user for user in (self.alice, self.bob, self.other_bot, self.bot_user)}
        for user_id in re.findall(r"<@!?(\d+)>", content):  # Discord lists every user the text mentions
            if user_id in known and known[user_id] not in mentions:
                mentions.append(known[user_id])
        message = self._message(channel_id, author, text, mentions=mentions, reply_to=reply_to)
        self.messages[message["id"]] = message
        await self.dispatch("MESSAGE_CREATE", message)
        return message

    async def open_thread(
        self, name: str, *, owner: dict[str, Any] | None = None, channel: str | None = None
    ) -> str:
        """A user starts a thread in ``channel`` (THREAD_CREATE); returns its id."""
        thread = self._text_channel(self.new_id(), name, parent=channel or self.general)
        thread["owner_id"] = (owner or self.alice)["id"]
        self.channels[thread["id"]] = thread
        await self.dispatch("THREAD_CREATE", {**thread, "newly_created": True})
        return thread["id"]

    async def edit_message(self, message_id: str, content: str) -> None:
        message = self.messages[message_id]
        message.update(content=content, edited_timestamp=snowflake_time())
        await self.dispatch("MESSAGE_UPDATE", dict(message))

    async def delete_message(self, message_id: str) -> None:
        message = self.messages.pop(message_id)
        self.deleted.append(message_id)
        payload = {"id": message_id, "channel_id": message["channel_id"]}
        if "guild_id" in message:
            payload["guild_id"] = message["guild_id"]
        await self.dispatch("MESSAGE_DELETE", payload)

    async def react(
        self, message_id: str, emoji: str, *, user: dict[str, Any] | None = None, add: bool = True
    ) -> None:
        user = user or self.alice
        message = self.messages[message_id]
        payload: dict[str, Any] = {
            "user_id": user["id"],
            "channel_id": message["channel_id"],
            "message_id": message_id,
            "emoji": {"id": None, "name": emoji},
            "burst": False,
            "type": 0,
        }
        if "guild_id" in message:
            payload["guild_id"] = message["guild_id"]
            if add:
                payload["member"] = {**self._member(user), "user": user}
        if add:
            payload["message_author_id"] = message["author"]["id"]
        await self.dispatch("MESSAGE_REACTION_ADD" if add else "MESSAGE_REACTION_REMOVE", payload)

    async def slash(
        self,
        name: str,
        options: dict[str, str] | None = None,
        *,
        user: dict[str, Any] | None = None,
        channel: str | None = None,
    ) -> str:
        """A user runs a slash command (INTERACTION_CREATE); returns the interaction's token."""
        user = user or self.alice
        channel_id = channel or self.general
        guild_id = self.channels[channel_id]["guild_id"] if channel_id in self.channels else None
        scope = guild_id if guild_id in self.commands else "global"
        registered = {command["name"]: command for command in self.commands.get(scope, [])}
        if name not in registered:
            raise AssertionError(f"/{name} is not synced in {scope}; synced: {sorted(registered)}")
        token = f"interaction-token-{uuid.uuid4().hex}"
        interaction: dict[str, Any] = {
            "id": self.new_id(),
            "application_id": self.application_id,
            "type": 2,
            "data": {
                "id": registered[name]["id"],
                "name": name,
                "type": 1,
                "options": [
                    {"name": key, "type": 3, "value": value} for key, value in (options or {}).items()
                ],
            },
            "channel_id": channel_id,
            "token": token,
            "version": 1,
            "app_permissions": "2248473465835073",
            "attachment_size_limit": 10_485_760,
            "locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": guild_id or self.guild_id},
            "context": 0,
        }
        if channel_id in self.channels:
            interaction["guild_id"] = guild_id
            interaction["guild_locale"] = "en-US"
            interaction["channel"] = self.channels[channel_id]
            interaction["member"] = {**self._member(user), "user": user, "permissions": "2248473465835073"}
            interaction["data"]["guild_id"] = guild_id
        else:
            interaction["user"] = user
            interaction["channel"] = {"id": channel_id, "type": 1, "recipients": [user]}
            interaction["context"] = 1
        self.interactions[token] = {
            "id": interaction["id"],
            "deferred": None,
            "messages": [],
            "user": user,
            "channel_id": channel_id,
        }
        await self.dispatch("INTERACTION_CREATE", interaction)
        return token

    # --- test controls ---------------------------------------------------------------------

    def rate_limit_next(self, method: str, route: str, retry_after: float = 0.5) -> None:
        """Answer the next ``method`` request of ``route`` (e.g. ``PATCH``, ``/channels/{channel}/messages/{message}``) with 429."""
        self._rate_limits.append((method, route, retry_after))

    def fail_next(self, method: str, route: str, status: int, *, times: int = 1) -> None:
        """Answer the next ``times`` ``method`` requests of ``route`` with ``status`` (e.g. 500)."""
        self._failures.extend([(method, route, status)] * times)

    async def drop_connection(self, *, replay: int = 0, shard: int | None = None) -> None:
        """Cut the gateway connection (the last one made, or ``shard``'s) as a network failure would;
        on RESUME, the last ``replay`` events the client already had are sent again (a redelivery),
        before the ones it missed."""
        session = self.current if shard is None else self.live.get(shard)
        assert session is not None and session.socket is not None, "no gateway connection to drop"
        session.replay_on_resume = replay
        self.ready.clear()
        socket, session.socket = session.socket, None
        transport = socket._req.transport if socket._req is not None else None  # type: ignore[attr-defined]
        if transport is not None:
            transport.abort()
        else:  # pragma: no cover - aiohttp always keeps the request on a prepared response
            await socket.close(code=4000)

    def hold_connections(self) -> None:
        """Keep new gateway connections waiting before HELLO (Discord unreachable) until ``let_connections_in``."""
        self._accepting.clear()

    def let_connections_in(self) -> None:
        self._accepting.set()

    async def wait_for(
        self, check: Callable[[], Any], timeout: float = WAIT_TIMEOUT, what: str = "a condition"
    ) -> Any:
        """Wait until ``check()`` is truthy (re-checked after every REST call and gateway event)."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; REST calls: {self.call_summary()}")
            self._changed.clear()
            # A change wakes the check at once; otherwise it is re-run every 0.1 s.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.1))

    def call_summary(self) -> list[str]:
        return [f"{call.method} {call.route} {call.status}" for call in self.calls]

    def calls_to(self, method: str, route: str) -> list[RestCall]:
        return [call for call in self.calls if call.method == method and call.route == route]

    def bot_messages(self, channel: str | None = None) -> list[dict[str, Any]]:
        """The bot's live messages (in ``channel``, if given), oldest first."""
        return [
            message
            for message in self.messages.values()
            if message["author"]["id"] == self.bot_user["id"]
            and (channel is None or message["channel_id"] == channel)
        ]

    def _touch(self) -> None:
        self._changed.set()

    # --- gateway ---------------------------------------------------------------------------

    async def dispatch(
        self, event: str, data: dict[str, Any], *, session: GatewaySession | None = None
    ) -> None:
        """Send an event to ``session``, else to the shard that owns it (its guild's; shard 0 for DMs);
        if the connection is down it is kept for RESUME."""
        if session is None:
            guild_id = data.get("guild_id")
            session = self.live.get(shard_of(guild_id, self.shard_count) if guild_id else 0)
        if session is None:
            return  # nobody connected that shard: Discord would not have this event for the bot either
        session.sequence += 1
        frame = json.dumps({"op": DISPATCH, "t": event, "s": session.sequence, "d": data})
        session.events.append((session.sequence, frame))
        if session.socket is not None and not session.socket.closed:
            await self._send(session, frame)
        self._touch()

    async def _send(self, session: GatewaySession, frame: str) -> None:
        socket = session.socket
        assert socket is not None
        try:
            if session.compressor is not None:
                data = session.compressor.compress(frame.encode()) + session.compressor.flush(
                    zlib.Z_SYNC_FLUSH
                )
                await socket.send_bytes(data)
            else:
                await socket.send_str(frame)
        except (ConnectionError, RuntimeError):
            pass  # the connection went away: the event stays in the session for RESUME

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        self.gateway_urls.append(str(request.rel_url))
        compression = request.query.get("compress")
        connection = GatewaySession(session_id="")  # becomes the real session at IDENTIFY / RESUME
        connection.socket = socket
        connection.compressor = zlib.compressobj() if compression == "zlib-stream" else None
        if compression not in (None, "zlib-stream"):
            await socket.close(code=4000, message=f"compression {compression} is not supported".encode())
            return socket
        await self._accepting.wait()
        await self._send(
            connection, json.dumps({"op": HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
        )
        async for frame in socket:
            if frame.type is not WSMsgType.TEXT:
                continue
            payload = json.loads(frame.data)
            op = payload.get("op")
            if op == HEARTBEAT:
                await self._send(connection, json.dumps({"op": HEARTBEAT_ACK}))
            elif op == IDENTIFY:
                await self._identify(connection, payload["d"], socket)
            elif op == RESUME:
                await self._resume(connection, payload["d"], socket)
        return socket

    async def _identify(
        self, connection: GatewaySession, data: dict[str, Any], socket: web.WebSocketResponse
    ) -> None:
        if data.get("token") != self.token:
            await socket.close(code=4004, message=b"Authentication failed.")
            return
        shard = data.get("shard", [0, 1])
        if not (isinstance(shard, list) and len(shard) == 2 and 0 <= shard[0] < shard[1]):
            await socket.close(code=4010, message=b"Invalid shard.")  # Discord's answer to such a shard
            return
        shard_id, self.shard_count = shard
        self.identifies += 1
        self.identified_shards.append((shard_id, self.shard_count))
        session = GatewaySession(
            session_id=uuid.uuid4().hex,
            socket=socket,
            compressor=connection.compressor,
            shard=(shard_id, self.shard_count),
        )
        self.sessions[session.session_id] = session
        self.current = self.live[shard_id] = session
        guilds = [guild for guild in self.guilds if shard_of(guild, self.shard_count) == shard_id]
        ready: dict[str, Any] = {
            "v": 10,
            "user": self.bot_user,
            "guilds": [{"id": guild, "unavailable": True} for guild in guilds],
            "session_id": session.session_id,
            "resume_gateway_url": f"ws://127.0.0.1:{self.port}/resume-gateway",
            "application": {"id": self.application_id, "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        if "shard" in data:
            ready["shard"] = shard
        await self.dispatch("READY", ready, session=session)
        for guild in guilds:
            await self.dispatch("GUILD_CREATE", self._guild(guild), session=session)
        self.ready.set()

    async def _resume(
        self, connection: GatewaySession, data: dict[str, Any], socket: web.WebSocketResponse
    ) -> None:
        session = self.sessions.get(data.get("session_id", ""))
        if data.get("token") != self.token or session is None:
            await self._send(connection, json.dumps({"op": INVALID_SESSION, "d": False}))
            return
        self.resumes.append({"session_id": session.session_id, "seq": data.get("seq")})
        session.socket, session.compressor = socket, connection.compressor
        self.current = self.live[session.shard[0]] = session
        seen = int(data.get("seq") or 0)
        replay_from = seen - session.replay_on_resume
        session.replay_on_resume = 0
        for sequence, frame in session.events:
            if sequence > replay_from:
                self.replayed += sequence <= seen
                await self._send(session, frame)
        await self.dispatch("RESUMED", {}, session=session)
        self.ready.set()

    # --- REST ------------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["path"]
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            body = json.loads(raw) if raw and request.content_type == "application/json" else raw.decode()
        route, ids = self._route(path)
        call = RestCall(request.method, path, route, body)
        self.calls.append(call)
        try:
            if (
                request.headers.get("Authorization") != f"Bot {self.token}"
                and not route.startswith("/webhooks/")
                and not route.startswith("/interactions/")
            ):
                call.status = 401
                return json_response({"message": "401: Unauthorized", "code": 0}, 401)
            for index, (method, limited, retry_after) in enumerate(self._rate_limits):
                if method == request.method and limited == route:
                    del self._rate_limits[index]
                    call.status = 429
                    return json_response(
                        {
                            "message": "You are being rate limited.",
                            "retry_after": retry_after,
                            "global": False,
                        },
                        429,
                        headers={
                            "Via": "1.1 google",
                            "Retry-After": str(retry_after),
                            "X-RateLimit-Scope": "user",
                        },
                    )
            for index, (method, failing, status) in enumerate(self._failures):
                if method == request.method and failing == route:
                    del self._failures[index]
                    call.status = status
                    return json_response({"message": f"{status}: failing on purpose", "code": 0}, status)
            status, answer = await self._answer(request.method, route, ids, body)
            call.status = status
            if answer is None:
                return web.Response(status=status)
            return json_response(answer, status)
        finally:
            self._touch()

    @staticmethod
    def _route(path: str) -> tuple[str, list[str]]:
        """``/channels/123/messages/456`` -> (``/channels/{channel}/messages/{message}``, ["123", "456"])."""
        parts = path.split("/")
        route, values = [], []
        for index, part in enumerate(parts):
            previous = parts[index - 1] if index else ""
            before = parts[index - 2] if index > 1 else ""
            if previous in ROUTE_NAMES and part.isdigit():
                route.append(ROUTE_NAMES[previous])
                values.append(part)
            elif before in ("webhooks", "interactions") and previous.isdigit():
                route.append("{token}")
                values.append(part)
            else:
                route.append(part)
        return "/".join(route), values

    async def _answer(self, method: str, route: str, ids: list[str], body: Any) -> tuple[int, Any]:
        key = (method, route)
        if key == ("GET", "/users/@me"):
            return 200, self.bot_user
        if key == ("GET", "/oauth2/applications/@me"):
            return 200, {
                "id": self.application_id,
                "name": "botkit",
                "icon": None,
                "description": "",
                "rpc_origins": [],
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self.alice,
                "summary": "",
                "verify_key": "0" * 64,
                "team": None,
                "flags": 0,
            }
        if key == ("GET", "/gateway/bot"):
            return 200, {
                "url": self.gateway_url,
                "shards": self.recommended_shards,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            }
        if key == ("POST", "/users/@me/channels"):
            user_id = body["recipient_id"]
            user = next(u for u in (self.alice, self.bob, self.other_bot) if u["id"] == user_id)
            return 200, {
                "id": self.dm_channel(user),
                "type": 1,
                "recipients": [user],
                "last_message_id": None,
            }
        if key == ("POST", "/channels/{channel}/typing"):
            self.typing.append(ids[0])
            return 204, None
        if key == ("POST", "/channels/{channel}/messages"):
            return self._post_message(ids[0], body)
        if key == ("PATCH", "/channels/{channel}/messages/{message}"):
            return await self._edit_message(ids[1], body)
        if key == ("DELETE", "/channels/{channel}/messages/{message}"):
            if ids[1] not in self.messages:
                return 404, {"message": "Unknown Message", "code": 10008}
            await self.delete_message(ids[1])
            return 204, None
        if key == ("POST", "/channels/{channel}/messages/{message}/threads"):
            return await self._start_thread(ids[0], ids[1], body)
        if method == "PUT" and route in (
            "/applications/{application}/commands",
            "/applications/{application}/guilds/{guild}/commands",
        ):
            scope = ids[1] if "guilds" in route else "global"
            self.commands[scope] = [
                {
                    **command,
                    "id": self.new_id(),
                    "application_id": self.application_id,
                    "version": self.new_id(),
                    "type": command.get("type", 1),
                }
                for command in body
            ]
            return 200, self.commands[scope]
        if key == ("POST", "/interactions/{interaction}/{token}/callback"):
            state = self.interactions[ids[1]]
            state["deferred"] = body
            return 200, {
                "interaction": {
                    "id": ids[0],
                    "type": 2,
                    "response_message_loading": body.get("type") == 5,
                    "response_message_ephemeral": bool((body.get("data") or {}).get("flags", 0) & EPHEMERAL),
                },
            }
        if route.startswith("/webhooks/{application}/{token}"):
            return await self._webhook(method, route, ids[1], ids[2:], body)
        return 404, {"message": f"the fake does not serve {method} {route}", "code": 0}

    def _check_content(self, body: dict[str, Any]) -> tuple[int, Any] | None:
        content = body.get("content") or ""
        if not content.strip():
            return 400, {"message": "Cannot send an empty message", "code": 50006}
        if len(content) > MESSAGE_LIMIT:
            return 400, {
                "message": "Invalid Form Body",
                "code": 50035,
                "errors": {"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH"}]}},
            }
        return None

    def _post_message(self, channel_id: str, body: dict[str, Any]) -> tuple[int, Any]:
        refused = self._check_content(body)
        if refused:
            return refused
        reply_to = (body.get("message_reference") or {}).get("message_id")
        reply_to = str(reply_to) if reply_to is not None else None
        message = self._message(
            channel_id, self.bot_user, body["content"], reply_to=reply_to, flags=body.get("flags", 0)
        )
        message["allowed_mentions"] = body.get("allowed_mentions")  # kept for assertions, as sent
        self.messages[message["id"]] = message
        asyncio.get_running_loop().create_task(self.dispatch("MESSAGE_CREATE", self._public(message)))
        return 200, self._public(message)

    @staticmethod
    def _public(message: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in message.items() if key != "allowed_mentions"}

    async def _edit_message(self, message_id: str, body: dict[str, Any]) -> tuple[int, Any]:
        message = self.messages.get(message_id)
        if message is None:
            return 404, {"message": "Unknown Message", "code": 10008}
        if "content" in body:
            refused = self._check_content(body)
            if refused:
                return refused
            message["content"] = body["content"]
        if "flags" in body:
            message["flags"] = body["flags"]
        if "allowed_mentions" in body:
            message["allowed_mentions"] = body["allowed_mentions"]
        message["edited_timestamp"] = snowflake_time()
        message.setdefault("edits", 0)
        message["edits"] += 1
        await self.dispatch("MESSAGE_UPDATE", self._public(message))
        return 200, self._public(message)

    async def _start_thread(self, channel_id: str, message_id: str, body: dict[str, Any]) -> tuple[int, Any]:
        thread_id = message_id  # Discord gives a thread started from a message that message's id
        thread = self._text_channel(thread_id, body.get("name", "thread"), parent=channel_id)
        thread["thread_metadata"]["auto_archive_duration"] = body.get("auto_archive_duration", 1440)
        self.channels[thread_id] = thread
        await self.dispatch("THREAD_CREATE", {**thread, "newly_created": True})
        return 201, thread

    async def _webhook(
        self, method: str, route: str, token: str, rest: list[str], body: Any
    ) -> tuple[int, Any]:
        state = self.interactions.get(token)
        if state is None or state["deferred"] is None:
            return 404, {"message": "Unknown Webhook", "code": 10015}
        flags = ((state["deferred"].get("data") or {}).get("flags") or 0) & EPHEMERAL
        if method == "PATCH" and (route.endswith("/messages/@original") or rest):
            original = route.endswith("/messages/@original")
            if original and not state["messages"]:
                refused = self._check_content(body)
                if refused:
                    return refused
                message = self._interaction_message(state, body, flags)
                return 200, self._public(message)
            message_id = state["messages"][0] if original else rest[0]
            if message_id not in state["messages"]:
                return 404, {"message": "Unknown Message", "code": 10008}
            return await self._edit_message(message_id, body)
        if method == "POST" and route == "/webhooks/{application}/{token}":
            refused = self._check_content(body)
            if refused:
                return refused
            if not state["messages"]:  # the first follow-up replaces the "thinking..." response
                message = self._interaction_message(state, body, flags | (body.get("flags") or 0))
            else:
                message = self._interaction_message(state, body, body.get("flags") or 0)
            return 200, self._public(message)
        if method == "DELETE" and rest:
            if rest[0] not in self.messages:
                return 404, {"message": "Unknown Message", "code": 10008}
            state["messages"].remove(rest[0])
            await self.delete_message(rest[0])
            return 204, None
        return 404, {"message": f"the fake does not serve {method} {route}", "code": 0}

    def _interaction_message(self, state: dict[str, Any], body: dict[str, Any], flags: int) -> dict[str, Any]:
        message = self._message(
            state["channel_id"],
            self.bot_user,
            body["content"],
            flags=flags,
            interaction={"id": state["id"], "type": 2, "user": state["user"]},
        )
        message["allowed_mentions"] = body.get("allowed_mentions")
        self.messages[message["id"]] = message
        state["messages"].append(message["id"])
        if not flags & EPHEMERAL:
            asyncio.get_running_loop().create_task(self.dispatch("MESSAGE_CREATE", self._public(message)))
        return message


@asynccontextmanager
async def start_discord(
    make_bot: Any,
    discord: FakeDiscord,
    config: dict[str, Any] | None = None,
    plugins: dict[str, object] | None = None,
    **adapter_keys: Any,
) -> AsyncIterator[tuple[Any, Any]]:
    """A started bot (``make_bot``) with its Discord adapter connected to ``discord``: ``(bot, adapter)``.

    The token must be in the environment (the ``discord`` fixture puts it there).
    Leaving the block closes the adapter, then stops the bot.
    """
    merged: dict[str, Any] = {"adapters": {"discord": discord.adapter_config(**adapter_keys)}}
    for key, value in (config or {}).items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    async with make_bot(merged, plugins=plugins) as bot:
        adapter = bot.make_adapter("discord")
        task = asyncio.create_task(adapter.run())
        connected = asyncio.create_task(adapter.connected.wait())
        await asyncio.wait({task, connected}, timeout=WAIT_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            connected.cancel()
            task.result()  # raises what stopped it
        if not connected.done():
            connected.cancel()
            task.cancel()
            raise AssertionError(f"the adapter did not connect; REST calls: {discord.call_summary()}")
        try:
            yield bot, adapter
        finally:
            await adapter.close()
            await asyncio.wait_for(task, WAIT_TIMEOUT)
