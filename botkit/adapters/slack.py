"""The Slack adapter: slack-bolt (async) in Socket Mode or behind the HTTP Events API; it only translates.

It answers mentions (``app_mention``) and direct messages (``message.im``),
always in a thread; called into the middle of a thread it reads the thread
first (``conversations.replies``) and hands the messages the bot has not seen
to the core as ``Message.thread_context``. Slash commands are acknowledged at
once and answered afterwards. Reactions go to ``bot.react``; edits and
deletions in DMs to ``bot.message_changed``. A redelivered event (Slack's
retries, ``X-Slack-Retry-Num``) is answered once, by its ``event_id``.
Tokens and the signing secret come only from the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from botkit import hookimpl
from botkit.adapter import Adapter
from botkit.adapters.api_retries import platform_retries, slack_retry_handlers
from botkit.adapters.slack_messages import (
    PLATFORM,
    SlackResponder,
    SlackTranslator,
    escape_mrkdwn,
    is_from_a_bot,
)
from botkit.adapters.slack_settings import SlackSettings
from botkit.errors import PlatformError
from botkit.settings import env_name

if TYPE_CHECKING:
    from botkit.api import BotAPI

log = logging.getLogger("botkit.adapters.slack")

# Longest wait at shutdown for acknowledged events that have not reached the pipeline yet.
PREPARE_TIMEOUT = 10.0
# Slack's request timestamps are Unix seconds. slack_sdk's verifier calls int() on the header
# unchecked, so anything else would end as an HTTP 500 with a traceback instead of a 401.
_REQUEST_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value() if value is not None else ""


class SlackAdapter(Adapter):
    """Connects one Slack app (one workspace) to the bot."""

    name = PLATFORM
    settings: SlackSettings

    def __init__(self, bot: BotAPI, settings: SlackSettings) -> None:
        super().__init__(bot, settings)
        self.client: Any = None
        self.slack: SlackTranslator  # set in run(), once the bot's own user id is known
        self.http_port: int | None = None  # mode 'http': the port it listens on, once started
        self.connected = asyncio.Event()
        self._closed = asyncio.Event()
        self._preparing: set[asyncio.Future[None]] = set()

    async def run(self) -> None:
        from slack_bolt.async_app import AsyncApp
        from slack_sdk.web.async_client import AsyncWebClient

        settings = self.settings
        retries = platform_retries(self.bot.metrics)
        self.client = AsyncWebClient(
            token=_secret(settings.bot_token),
            base_url=settings.api_url,
            retry_handlers=slack_retry_handlers(retries, settings.rate_limit_retries),
        )
        self.slack = SlackTranslator(self.client, await self._identify())
        app = AsyncApp(client=self.client, signing_secret=_secret(settings.signing_secret), name="botkit")
        app.event("app_mention")(self._on_mention)
        app.event("message")(self._on_message)
        app.event("reaction_added")(self._on_reaction)
        app.event("reaction_removed")(self._on_reaction)
        app.command(re.compile(r"^/"))(self._on_command)
        if settings.mode == "socket":
            await self._serve_socket(app)
        else:
            await self._serve_http(app)
        if self._preparing:
            await asyncio.wait(set(self._preparing), timeout=PREPARE_TIMEOUT)

    def is_connected(self) -> bool:
        return self.connected.is_set() and not self._closed.is_set()

    async def close(self) -> None:
        self._closed.set()

    async def _identify(self) -> str:
        """The bot's own user id (``auth.test``); a refused token stops start-up with what to set."""
        from slack_sdk.errors import SlackApiError

        try:
            identity = await self.client.auth_test()
        except SlackApiError as error:
            raise PlatformError(
                f"Slack refused the bot token ({error.response.get('error')}): check "
                f"{env_name(('adapters', PLATFORM, 'bot_token'))}"
            ) from None
        except OSError as error:  # aiohttp's connection errors are OSErrors
            raise PlatformError(
                f"cannot reach Slack at [adapters.slack] api_url {self.settings.api_url}: {error}"
            ) from None
        return str(identity["user_id"])

    async def _serve_socket(self, app: Any) -> None:
        from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
        from slack_sdk.errors import SlackApiError

        app_token = _secret(self.settings.app_token)
        try:
            # Asked here, not only by the handler (which retries forever), so a bad token stops start-up.
            url = (await self.client.apps_connections_open(app_token=app_token))["url"]
        except SlackApiError as error:
            raise PlatformError(
                f"Slack refused the app token ({error.response.get('error')}): check "
                f"{env_name(('adapters', PLATFORM, 'app_token'))} (an xapp- token with connections:write)"
            ) from None
        handler = AsyncSocketModeHandler(app, app_token=app_token, web_client=self.client)
        handler.client.wss_uri = url
        try:
            await handler.connect_async()
            log.info("slack: connected in Socket Mode as %s", self.slack.bot_user_id)
            self.connected.set()
            await self._closed.wait()
        finally:
            await handler.close_async()

    async def _serve_http(self, app: Any) -> None:
        from aiohttp import web
        from slack_bolt.app.async_server import AsyncSlackAppServer

        settings = self.settings
        server = AsyncSlackAppServer(port=settings.port, path=settings.path, app=app, host=settings.host)
        server.web_app.middlewares.append(web.middleware(_refuse_malformed_timestamps))
        runner = web.AppRunner(server.web_app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, settings.host, settings.port)
            try:
                await site.start()
            except OSError as error:
                raise PlatformError(
                    f"[adapters.slack] cannot listen on {settings.host}:{settings.port}: {error}"
                ) from None
            self.http_port = runner.addresses[0][1]
            log.info(
                "slack: Events API endpoint on http://%s:%d%s", settings.host, self.http_port, settings.path
            )
            self.connected.set()
            await self._closed.wait()
        finally:
            await runner.cleanup()

    @contextlib.contextmanager
    def _preparing_message(self) -> Iterator[None]:
        """Marks an acknowledged event on its way to the pipeline, which shutdown waits for."""
        future = asyncio.get_running_loop().create_future()
        self._preparing.add(future)
        try:
            yield
        finally:
            future.set_result(None)
            self._preparing.discard(future)

    async def _first(self, body: dict[str, Any]) -> bool:
        event_id = body.get("event_id")
        return event_id is None or await self.bot.first_delivery(PLATFORM, str(event_id))

    def _responder(self, channel: str, thread_ts: str | None, **options: Any) -> SlackResponder:
        settings = self.settings
        return SlackResponder(
            self.client,
            channel,
            thread_ts,
            limit=settings.message_limit,
            interval=settings.edit_interval,
            **options,
        )

    # --- events ---------------------------------------------------------------------------

    async def _on_mention(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        # A mention in a DM also arrives as message.im, which answers it.
        in_dm = event.get("channel_type") == "im" or str(event.get("channel", "")).startswith("D")
        if is_from_a_bot(event) or in_dm:
            return
        await self._answer(event, body, is_dm=False)

    async def _on_message(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        subtype = event.get("subtype")
        if subtype in ("message_changed", "message_deleted"):
            if await self._first(body):
                await self._on_change(event)
            return
        if subtype is not None or is_from_a_bot(event) or event.get("channel_type") != "im":
            return
        await self._answer(event, body, is_dm=True)

    async def _answer(self, event: dict[str, Any], body: dict[str, Any], *, is_dm: bool) -> None:
        # The claim (a database write) is part of the way to the pipeline that shutdown waits for.
        with self._preparing_message():
            if not await self._first(body):
                return
            message = await self.slack.message(
                event, is_dm=is_dm, thread_messages=self.settings.thread_messages
            )
        await self.bot.handle(message, self._responder(message.channel_id, message.thread_id))

    async def _on_reaction(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        if (event.get("item") or {}).get("type") == "message" and await self._first(body):
            await self.bot.react(await self.slack.reaction(event))

    async def _on_change(self, event: dict[str, Any]) -> None:
        change = await self.slack.change(event)
        if change is not None:
            await self.bot.message_changed(change)

    # --- slash commands -------------------------------------------------------------------

    async def _on_command(self, ack: Any, command: dict[str, Any], respond: Any) -> None:
        await ack()  # within Slack's 3 seconds; the answer follows
        from slack_sdk.errors import SlackApiError

        async def notify(mrkdwn: str) -> None:
            await respond(text=mrkdwn, response_type="ephemeral")

        with self._preparing_message():
            channel, question = command["channel_id"], (command.get("text") or "").strip()
            if command["command"] != self.settings.ask_command:
                prefix = self.bot.settings.bot.command_prefix
                message = await self.slack.command(command, umbrella=self.settings.command, prefix=prefix)
                responder = self._responder(channel, None, notify=notify)
            elif not question:
                await notify(escape_mrkdwn(f"Ask me something, e.g. {command['command']} what is a haiku?"))
                return
            else:
                author = await self.slack.users.get(command["user_id"])
                responder = self._responder(channel, None)
                try:
                    # The question, posted for everyone to see, roots the thread of the answer.
                    responder.thread_ts = await responder.post(f"{author.display_name} asked: {question}")
                except SlackApiError as error:
                    await notify(
                        escape_mrkdwn(
                            f"I can't post here ({error.response.get('error')}); invite me to the channel."
                        )
                    )
                    return
                message = await self.slack.command(command, question_ts=responder.thread_ts)
        await self.bot.handle(message, responder)


async def _refuse_malformed_timestamps(request: Any, handler: Any) -> Any:
    """A request whose ``X-Slack-Request-Timestamp`` is no timestamp gets Bolt's 401, as a bad signature does."""
    from aiohttp import web

    timestamp = request.headers.get("X-Slack-Request-Timestamp")
    if timestamp is not None and not _REQUEST_TIMESTAMP.fullmatch(timestamp):
        log.debug("slack: refused a request with a malformed X-Slack-Request-Timestamp")
        return web.json_response({"error": "invalid request"}, status=401)
    return await handler(request)


@hookimpl
def botkit_register_adapters(register):
    register(PLATFORM, SlackAdapter, SlackSettings)
