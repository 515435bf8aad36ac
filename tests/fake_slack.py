"""A fake Slack on 127.0.0.1 for the real slack-bolt / slack_sdk clients: Web API, Socket Mode, signed events.

It serves what the Slack adapter uses of the Web API (``auth.test``,
``apps.connections.open``, ``chat.postMessage``, ``chat.update``,
``conversations.replies``, ``users.info``) as JSON over HTTP, the Socket Mode
WebSocket (``hello``, envelopes, acks, ``disconnect``), and ``response_url``
endpoints for slash commands; and it plays Slack's side of the HTTP Events API
by posting signed requests to the bot. Every Web API call is recorded; a test
can make the next call of a method answer 429, drop the WebSocket, or deliver
an event again. Tokens are checked as Slack does (``invalid_auth``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import ClientSession, WSMsgType, web

from botkit.testing import WAIT_TIMEOUT, eventually

# Slack truncates (and chat.postMessage refuses) text beyond this many characters.
HARD_TEXT_LIMIT = 40_000
DROPPED = 0  # ApiCall.status of a call whose connection the fake closed unanswered (drop_next)


@dataclass
class ApiCall:
    """One Web API request as the fake saw it."""

    method: str
    args: dict[str, Any]
    status: int = 200
    error: str | None = None
    at: float = field(default_factory=time.monotonic)  # when it arrived


@dataclass
class Envelope:
    """One Socket Mode envelope and whether the app acknowledged it."""

    envelope_id: str
    type: str
    payload: dict[str, Any]
    retry_attempt: int = 0
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    acked_at: float | None = None  # time.monotonic() of the first acknowledgement
    ack_payload: dict[str, Any] | None = None

    def frame(self) -> str:
        return json.dumps(
            {
                "envelope_id": self.envelope_id,
                "type": self.type,
                "payload": self.payload,
                "accepts_response_payload": self.type != "events_api",
                "retry_attempt": self.retry_attempt,
                "retry_reason": "timeout" if self.retry_attempt else "",
            }
        )


class FakeSlack:
    """One workspace with one installed app. Use ``async with FakeSlack() as slack``."""

    def __init__(
        self,
        *,
        bot_token: str = "xoxb-fake-bot-token",
        app_token: str = "xapp-fake-app-token",
        signing_secret: str = "fake-signing-secret",
        bot_user_id: str = "UBOT",
        bot_id: str = "BBOT",
        team_id: str = "T0001",
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.signing_secret = signing_secret
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.team_id = team_id
        self.calls: list[ApiCall] = []
        self.channels: dict[str, list[dict[str, Any]]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.responses: list[dict[str, Any]] = []  # what was posted to response_url endpoints
        self.envelopes: list[Envelope] = []
        self.connections = 0  # Socket Mode connections opened so far
        self._failures: dict[str, list[tuple[int, float]]] = {}
        self._socket: web.WebSocketResponse | None = None
        self._socket_ready = asyncio.Event()
        self._ticks = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None
        self.port = 0
        self.add_user(bot_user_id, "botkit", is_bot=True)

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> FakeSlack:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/socket", self._socket_mode)
        app.router.add_post("/response/{id}", self._response_url)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._session = ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        if self._socket is not None:
            await self._socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    # --- workspace state -------------------------------------------------------------------

    def add_user(self, user_id: str, name: str, *, is_admin: bool = False, is_bot: bool = False) -> None:
        self.users[user_id] = {
            "id": user_id,
            "team_id": self.team_id,
            "name": name.lower(),
            "real_name": name,
            "is_bot": is_bot,
            "is_admin": is_admin,
            "is_owner": False,
            "profile": {"display_name": name, "real_name": name},
        }

    def next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ticks):06d}"

    def add_message(
        self,
        channel: str,
        text: str,
        *,
        user: str | None = "U1",
        thread_ts: str | None = None,
        bot_id: str | None = None,
        subtype: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Put a message into the channel's history (as someone wrote it) and return it."""
        message: dict[str, Any] = {"type": "message", "text": text, "ts": self.next_ts(), **fields}
        if user is not None:
            message["user"] = user
        if bot_id is not None:
            message["bot_id"] = bot_id
        if subtype is not None:
            message["subtype"] = subtype
        if thread_ts is not None:
            message["thread_ts"] = thread_ts
        self.channels.setdefault(channel, []).append(message)
        return message

    def history(self, channel: str) -> list[dict[str, Any]]:
        return self.channels.get(channel, [])

    def thread(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """The thread's messages as Slack shows them: the parent, then the replies, oldest first."""
        return [m for m in self.history(channel) if m["ts"] == thread_ts or m.get("thread_ts") == thread_ts]

    def bot_messages(self, channel: str) -> list[dict[str, Any]]:
        return [m for m in self.history(channel) if m.get("bot_id") == self.bot_id]

    def calls_to(self, method: str) -> list[ApiCall]:
        return [call for call in self.calls if call.method == method]

    def fail_next(self, method: str, status: int = 429, retry_after: float = 1) -> None:
        """Make the next call of ``method`` answer ``status`` (429: rate limited, with Retry-After)."""
        self._failures.setdefault(method, []).append((status, retry_after))

    def drop_next(self, method: str) -> None:
        """Close the connection of the next call of ``method`` before answering, as a reset or a restarting proxy does."""
        self._failures.setdefault(method, []).append((DROPPED, 0))

    async def wait_for(
        self, condition: Callable[[], object], timeout: float = WAIT_TIMEOUT, what: str = "the condition"
    ) -> None:
        """Wait until ``condition()`` is true, polling; fail the test after ``timeout`` seconds."""
        await eventually(condition, timeout, what=f"fake Slack: {what}")

    # --- events as Slack builds them -------------------------------------------------------

    def mention(
        self, channel: str, text: str, *, user: str = "U1", thread_ts: str | None = None
    ) -> dict[str, Any]:
        """A user writes ``<@bot> text`` in a channel: stored in history; returns the app_mention event."""
        message = self.add_message(channel, f"<@{self.bot_user_id}> {text}", user=user, thread_ts=thread_ts)
        return {**message, "type": "app_mention", "channel": channel, "event_ts": message["ts"]}

    def direct_message(self, channel: str, text: str, *, user: str = "U1") -> dict[str, Any]:
        """A user writes to the bot in their DM: returns the ``message`` event (``message.im``)."""
        message = self.add_message(channel, text, user=user)
        return {**message, "channel": channel, "channel_type": "im", "event_ts": message["ts"]}

    def event_callback(self, event: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
        return {
            "token": "legacy-verification-token",
            "team_id": self.team_id,
            "api_app_id": "A0001",
            "event": event,
            "type": "event_callback",
            "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
            "event_time": int(time.time()),
            "authorizations": [
                {"team_id": self.team_id, "user_id": self.bot_user_id, "is_bot": True, "enterprise_id": None}
            ],
        }

    def slash_command(
        self, command: str, text: str, *, user: str = "U1", channel: str = "C1"
    ) -> dict[str, str]:
        response_id = uuid.uuid4().hex
        return {
            "token": "legacy-verification-token",
            "team_id": self.team_id,
            "team_domain": "fake",
            "channel_id": channel,
            "channel_name": "directmessage" if channel.startswith("D") else "general",
            "user_id": user,
            "user_name": self.users.get(user, {}).get("name", user),
            "command": command,
            "text": text,
            "api_app_id": "A0001",
            "response_url": f"http://127.0.0.1:{self.port}/response/{response_id}",
            "trigger_id": f"trigger-{response_id[:8]}",
        }

    # --- Socket Mode -----------------------------------------------------------------------

    async def send_event(
        self, event: dict[str, Any], *, event_id: str | None = None, retry_attempt: int = 0
    ) -> Envelope:
        """Deliver an Events API payload over Socket Mode (waiting for a connection if none is up)."""
        body = self.event_callback(event, event_id)
        return await self._send_envelope("events_api", body, retry_attempt)

    async def send_command(self, command: str, text: str, **where: str) -> Envelope:
        return await self._send_envelope("slash_commands", self.slash_command(command, text, **where), 0)

    async def _send_envelope(self, kind: str, payload: dict[str, Any], retry_attempt: int) -> Envelope:
        envelope = Envelope(uuid.uuid4().hex, kind, payload, retry_attempt)
        self.envelopes.append(envelope)
        await asyncio.wait_for(self._socket_ready.wait(), WAIT_TIMEOUT)
        assert self._socket is not None
        await self._socket.send_str(envelope.frame())
        return envelope

    async def drop_socket(self) -> None:
        """Close the Socket Mode connection from Slack's side (the client should reconnect)."""
        socket = self._socket
        self._socket_ready.clear()
        if socket is not None:
            await socket.close(code=1011, message=b"fake outage")

    async def ask_to_reconnect(self) -> None:
        """Send Slack's ``disconnect`` message, as before a server restart."""
        assert self._socket is not None
        await self._socket.send_str(json.dumps({"type": "disconnect", "reason": "refresh_requested"}))

    async def wait_connected(self, connections: int = 1, timeout: float = WAIT_TIMEOUT) -> None:
        await self.wait_for(lambda: self.connections >= connections and self._socket_ready.is_set(), timeout)

    async def _socket_mode(self, request: web.Request) -> web.WebSocketResponse:
        if request.query.get("ticket") != self.app_token[-8:]:
            raise web.HTTPUnauthorized()
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        self.connections += 1
        self._socket = socket
        await socket.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": 1,
                    "debug_info": {"host": "fake-slack", "approximate_connection_time": 18060},
                    "connection_info": {"app_id": "A0001"},
                }
            )
        )
        self._socket_ready.set()
        # Envelopes sent while no connection was up, or not acknowledged before it dropped,
        # are delivered again on the new connection, as Slack retries them.
        for envelope in self.envelopes:
            if not envelope.acked.is_set():
                envelope.retry_attempt += 1
                await socket.send_str(envelope.frame())
        async for frame in socket:
            if frame.type != WSMsgType.TEXT:
                continue
            ack = json.loads(frame.data)
            for envelope in self.envelopes:
                if envelope.envelope_id == ack.get("envelope_id") and envelope.acked_at is None:
                    envelope.ack_payload = ack.get("payload")
                    envelope.acked_at = time.monotonic()
                    envelope.acked.set()
        if self._socket is socket:
            self._socket_ready.clear()
        return socket

    # --- HTTP Events API (Slack's side: signed requests to the bot) -----------------------

    def sign(self, body: str, timestamp: int, secret: str | None = None) -> str:
        base = f"v0:{timestamp}:{body}".encode()
        digest = hmac.new((secret or self.signing_secret).encode(), base, hashlib.sha256).hexdigest()
        return f"v0={digest}"

    async def post_signed(
        self,
        url: str,
        body: str,
        content_type: str,
        *,
        retry_num: int | None = None,
        secret: str | None = None,
        timestamp_header: str | None = None,
    ) -> tuple[int, str]:
        """POST ``body`` to the bot as Slack does; ``secret`` signs with another secret (a forgery),
        ``timestamp_header`` replaces the ``X-Slack-Request-Timestamp`` that Slack would send.
        """
        assert self._session is not None
        timestamp = int(time.time())
        headers = {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": str(timestamp) if timestamp_header is None else timestamp_header,
            "X-Slack-Signature": self.sign(body, timestamp, secret),
        }
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        async with self._session.post(url, data=body.encode(), headers=headers) as response:
            return response.status, await response.text()

    async def post_event(
        self,
        url: str,
        event: dict[str, Any],
        *,
        event_id: str | None = None,
        retry_num: int | None = None,
        secret: str | None = None,
    ) -> tuple[int, str]:
        body = json.dumps(self.event_callback(event, event_id))
        return await self.post_signed(url, body, "application/json", retry_num=retry_num, secret=secret)

    async def post_command(self, url: str, command: str, text: str, **where: str) -> tuple[int, str]:
        body = urlencode(self.slash_command(command, text, **where))
        return await self.post_signed(url, body, "application/x-www-form-urlencoded")

    async def _response_url(self, request: web.Request) -> web.Response:
        self.responses.append(await request.json())
        return web.Response(text="ok")

    # --- Web API ---------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                args.update(await request.json())
            else:
                args.update(dict(await request.post()))
        call = ApiCall(method, args)
        self.calls.append(call)
        failures = self._failures.get(method)
        if failures:
            status, retry_after = failures.pop(0)
            if status == DROPPED:
                call.status, call.error = status, "connection closed"
                assert request.transport is not None
                request.transport.close()
                raise ConnectionResetError("fake Slack dropped the connection")
            call.status, call.error = status, "ratelimited" if status == 429 else "fatal_error"
            headers = {"Retry-After": f"{retry_after:g}"} if status == 429 else {}
            return web.json_response({"ok": False, "error": call.error}, status=status, headers=headers)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ") or args.get("token")
        expected = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != expected:
            call.error = "invalid_auth" if token else "not_authed"
            return web.json_response({"ok": False, "error": call.error})
        handler = getattr(self, "_api_" + method.replace(".", "_"), None)
        if handler is None:
            call.error = "unknown_method"
            return web.json_response({"ok": False, "error": "unknown_method"})
        result = handler(args)
        if not result.get("ok", True):
            call.error = result["error"]
        return web.json_response({"ok": True, **result}, headers={"X-OAuth-Scopes": "chat:write"})

    def _api_auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://fake.slack.com/",
            "team": "Fake",
            "user": "botkit",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
        }

    def _api_apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"url": f"ws://127.0.0.1:{self.port}/socket?ticket={self.app_token[-8:]}"}

    def _api_chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        text = str(args.get("text", ""))
        if not text:
            return {"ok": False, "error": "no_text"}
        if len(text) > HARD_TEXT_LIMIT:
            return {"ok": False, "error": "msg_too_long"}
        message = self.add_message(
            args["channel"], text, user=self.bot_user_id, thread_ts=args.get("thread_ts"), bot_id=self.bot_id
        )
        return {"channel": args["channel"], "ts": message["ts"], "message": message}

    def _api_chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        text = str(args.get("text", ""))
        if len(text) > HARD_TEXT_LIMIT:
            return {"ok": False, "error": "msg_too_long"}
        for message in self.history(args["channel"]):
            if message["ts"] == args["ts"]:
                if message.get("bot_id") != self.bot_id:
                    return {"ok": False, "error": "cant_update_message"}
                message["text"] = text
                return {"channel": args["channel"], "ts": args["ts"], "text": text}
        return {"ok": False, "error": "message_not_found"}

    def _api_conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        messages = self.thread(args["channel"], args["ts"])
        if not messages:
            return {"ok": False, "error": "thread_not_found"}
        inclusive = str(args.get("inclusive", "")).lower() in ("1", "true")
        if "latest" in args:
            latest = float(args["latest"])
            messages = [
                m for m in messages if float(m["ts"]) < latest or (inclusive and float(m["ts"]) == latest)
            ]
        start = int(args.get("cursor") or 0)
        limit = int(args.get("limit") or 1000)
        page = messages[start : start + limit]
        more = start + limit < len(messages)
        return {
            "messages": page,
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        }

    def _api_users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(args.get("user", ""))
        if user is None:
            return {"ok": False, "error": "user_not_found"}
        return {"user": user}


# --- driving the adapter under test --------------------------------------------------------


def slack_config(slack: FakeSlack, **adapter_keys: Any) -> dict[str, Any]:
    """A bot config with the Slack adapter on, pointed at ``slack`` (secrets come from the environment)."""
    keys = {"enabled": True, "api_url": slack.api_url, "edit_interval": 0.05, **adapter_keys}
    return {"adapters": {"slack": keys}}


@asynccontextmanager
async def running(bot: Any) -> AsyncIterator[Any]:
    """Run the bot's Slack adapter until the block ends, then close it as ``botkit run`` does."""
    adapter = bot.make_adapter("slack")
    task = asyncio.ensure_future(adapter.run())
    connected = asyncio.ensure_future(adapter.connected.wait())
    await asyncio.wait({task, connected}, timeout=WAIT_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    connected.cancel()
    if task.done():
        task.result()  # raises what stopped it
        raise AssertionError("the Slack adapter stopped during start-up")
    if not adapter.connected.is_set():
        raise AssertionError(f"the Slack adapter did not connect within {WAIT_TIMEOUT:g} s")
    try:
        yield adapter
    finally:
        await adapter.close()
        await task


@asynccontextmanager
async def start_slack(
    make_bot: Any,
    slack: FakeSlack,
    config: dict[str, Any] | None = None,
    plugins: dict[str, object] | None = None,
    **adapter_keys: Any,
) -> AsyncIterator[tuple[Any, Any]]:
    """A started bot (``make_bot``) with its Slack adapter connected to ``slack``: ``(bot, adapter)``.

    Leaving the block closes the adapter, then stops the bot (in-flight replies end).
    """
    merged = slack_config(slack, **adapter_keys)
    for key, value in (config or {}).items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    async with make_bot(merged, plugins=plugins) as bot:
        async with running(bot) as adapter:
            yield bot, adapter
