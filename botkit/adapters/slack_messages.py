"""Translating between Slack and botkit: events into messages (with their thread), mrkdwn both ways, replies.

Replies are rendered from Markdown to mrkdwn (``slack_mrkdwn``: ``&``, ``<``
and ``>`` escaped, so nothing the model writes becomes a mention or a
``<!channel>``; only its ``[text](url)`` links become links) and posted with
Slack's own protection against pings and previews: ``parse = "none"``,
``link_names = false``, ``unfurl_links`` and ``unfurl_media`` off. The Slack
SDK is only ever handed in (an ``AsyncWebClient``), never imported here.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

from botkit.adapters.edits import EditStream
from botkit.adapters.slack_mrkdwn import escape_mrkdwn, mrkdwn_parts
from botkit.types import Message, MessageChange, Reaction, ReplyStatus, Responder, Role, Turn, User

log = logging.getLogger("botkit.adapters.slack")

PLATFORM = "slack"
# How long a user's name and roles are trusted before users.info is asked again.
USER_CACHE_SECONDS = 3600.0
FAILED_LOOKUP_SECONDS = 300.0
USER_CACHE_SIZE = 5000
# conversations.replies page size (Slack allows up to 1000; smaller pages answer faster).
THREAD_PAGE = 200

_LINK = re.compile(r"<((?:https?|mailto):[^|>]+)(?:\|([^>]*))?>")
_CHANNEL = re.compile(r"<#([A-Z0-9]+)(?:\|([^>]*))?>")
_SPECIAL = re.compile(r"<!(here|channel|everyone)(?:\|[^>]*)?>")


def incoming_text(text: str, bot_user_id: str | None) -> str:
    """What a user wrote, as readable text: the bot's own mention dropped, links and channels spelled out."""
    if bot_user_id:
        text = re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", "", text)
    text = _LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})" if m.group(2) else m.group(1), text)
    text = _CHANNEL.sub(lambda m: f"#{m.group(2) or m.group(1)}", text)
    text = _SPECIAL.sub(lambda m: f"@{m.group(1)}", text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return text.strip()


def is_from_a_bot(event: dict[str, Any]) -> bool:
    """Messages of bots (this one included) are never answered."""
    return bool(event.get("bot_id")) or event.get("subtype") == "bot_message" or "bot_profile" in event


def reaction_name(reaction: str) -> str:
    """Slack's emoji name without a skin tone: ``+1::skin-tone-3`` -> ``+1``."""
    return reaction.split("::", 1)[0]


class SlackUsers:
    """Names and roles of Slack users (``users.info``), cached; a failed lookup gives the bare id a while."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._cache: OrderedDict[str, tuple[float, User]] = OrderedDict()  # id -> (expires at, user)

    async def get(self, user_id: str) -> User:
        cached = self._cache.get(user_id)
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1]
        try:
            info = (await self.client.users_info(user=user_id))["user"]
        except Exception as error:  # a missing users:read scope must not stop the bot from answering
            log.warning("slack: users.info for %s failed (%s); using the bare id", user_id, error)
            return self._keep(user_id, User(id=user_id, name=user_id), FAILED_LOOKUP_SECONDS)
        profile = info.get("profile") or {}
        name = (
            profile.get("display_name")
            or profile.get("real_name")
            or info.get("real_name")
            or info.get("name")
        )
        roles = tuple(role for role in ("admin", "owner") if info.get(f"is_{role}"))
        user = User(id=user_id, name=name or user_id, is_bot=bool(info.get("is_bot")), roles=roles)
        return self._keep(user_id, user, USER_CACHE_SECONDS)

    def _keep(self, user_id: str, user: User, seconds: float) -> User:
        self._cache[user_id] = (time.monotonic() + seconds, user)
        self._cache.move_to_end(user_id)
        while len(self._cache) > USER_CACHE_SIZE:
            self._cache.popitem(last=False)
        return user


class SlackTranslator:
    """Turns Slack events into botkit values: messages (with their thread), reactions, edits."""

    def __init__(self, client: Any, bot_user_id: str) -> None:
        self.client = client
        self.bot_user_id = bot_user_id
        self.users = SlackUsers(client)

    async def message(self, event: dict[str, Any], *, is_dm: bool, thread_messages: int) -> Message:
        """A mention or DM as a ``Message``; its thread is always the one the reply goes to."""
        channel, ts = event["channel"], event["ts"]
        thread_ts = event.get("thread_ts")
        context: tuple[Turn, ...] = ()
        if thread_ts and thread_ts != ts and thread_messages:
            try:
                context = await self.read_thread(channel, thread_ts, ts, thread_messages)
            except Exception as error:  # a missing history scope: answer without the thread
                log.warning(
                    "slack: could not read thread %s in %s (%s); answering without it",
                    thread_ts,
                    channel,
                    error,
                )
        return Message(
            text=incoming_text(event.get("text", ""), self.bot_user_id),
            author=await self.users.get(event["user"]),
            platform=PLATFORM,
            channel_id=channel,
            thread_id=thread_ts or ts,
            is_dm=is_dm,
            message_id=ts,
            created_at=datetime.fromtimestamp(float(ts), UTC),
            thread_context=context,
        )

    async def read_thread(self, channel: str, thread_ts: str, before_ts: str, limit: int) -> tuple[Turn, ...]:
        """The thread's messages the bot has not seen, oldest first, as user turns with their speakers.

        Those are the messages before ``before_ts`` and after the bot's own last
        message in the thread: what the bot said, and the message it answered, are
        already in the conversation's stored history. At most the newest ``limit``.
        """
        window: deque[dict[str, Any]] = deque(maxlen=limit)
        cursor = None
        while True:
            page = await self.client.conversations_replies(
                channel=channel,
                ts=thread_ts,
                latest=before_ts,
                inclusive=False,
                limit=THREAD_PAGE,
                cursor=cursor,
            )
            for item in page.get("messages", []):
                if item.get("ts") == before_ts:
                    continue
                if item.get("user") == self.bot_user_id:
                    window.clear()  # everything up to here is in the stored history
                else:
                    window.append(item)
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not page.get("has_more") or not cursor:
                break
        turns = []
        for item in window:
            text = incoming_text(item.get("text", ""), self.bot_user_id)
            if not text:
                continue
            if item.get("user"):
                speaker = (await self.users.get(item["user"])).display_name
            else:
                speaker = (item.get("bot_profile") or {}).get("name") or item.get("username") or "a bot"
            turns.append(Turn(Role.USER, text, speaker=speaker))
        return tuple(turns)

    async def command(
        self,
        command: dict[str, Any],
        *,
        umbrella: str = "",
        prefix: str = "/",
        question_ts: str | None = None,
    ) -> Message:
        """A slash command as a ``Message``: the question of the ask command (posted as ``question_ts``),
        else the bot command it stands for: ``/botkit reset`` (``umbrella``) or ``/reset`` -> ``/reset``.
        """
        name, text = command["command"], (command.get("text") or "").strip()
        channel = command["channel_id"]
        author = await self.users.get(command["user_id"])
        where = {
            "author": author,
            "platform": PLATFORM,
            "channel_id": channel,
            "is_dm": channel.startswith("D"),
        }
        if question_ts is not None:
            return Message(text=text, thread_id=question_ts, message_id=question_ts, **where)
        wanted = (text or "help") if name == umbrella else f"{name.removeprefix('/')} {text}".strip()
        return Message(text=prefix + wanted, message_id=command.get("trigger_id") or uuid4().hex, **where)

    async def reaction(self, event: dict[str, Any]) -> Reaction:
        """``reaction_added`` / ``reaction_removed`` on a message."""
        item = event["item"]
        return Reaction(
            platform=PLATFORM,
            channel_id=item["channel"],
            message_id=item["ts"],
            user=await self.users.get(event["user"]),
            emoji=reaction_name(event["reaction"]),
            added=event["type"] == "reaction_added",
        )

    async def change(self, event: dict[str, Any]) -> MessageChange | None:
        """A ``message_changed`` / ``message_deleted`` event; None when no person's text changed."""
        old = event.get("previous_message") or {}
        if event["subtype"] == "message_deleted":
            if is_from_a_bot(old):
                return None
            user = await self.users.get(old["user"]) if old.get("user") else None
            return MessageChange(PLATFORM, event["channel"], event["deleted_ts"], None, user)
        new = event.get("message") or {}
        if is_from_a_bot(new) or new.get("text") == old.get("text"):
            return None  # the bot's own edits, or an unfurl attached: no new text
        user = await self.users.get(new["user"]) if new.get("user") else None
        text = incoming_text(new.get("text", ""), self.bot_user_id)
        return MessageChange(PLATFORM, event["channel"], new["ts"], text, user)


class SlackResponder(Responder):
    """Delivers the answers to one message into its Slack thread; a streamed reply is edited in place.

    Answers are Markdown, sent as mrkdwn in parts of at most ``limit`` characters
    as Slack counts them (escapes included). ``notify`` (a slash command's
    ephemeral ``respond``) receives ``send``'s mrkdwn parts instead of the thread
    when given.
    """

    def __init__(
        self,
        client: Any,
        channel: str,
        thread_ts: str | None,
        *,
        limit: int,
        interval: float,
        notify: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.client = client
        self.channel = channel
        self.thread_ts = thread_ts
        self.limit = limit
        self.notify = notify
        self.stream = EditStream(
            self._post,
            self._edit,
            limit=limit,
            interval=interval,
            delete=self.delete,
            split=lambda text: mrkdwn_parts(text, limit),
        )

    async def post(self, text: str) -> str:
        """Post ``text`` as written (escaped, no formatting); returns the message's ``ts``."""
        return await self._post(escape_mrkdwn(text))

    async def _post(self, mrkdwn: str) -> str:
        response = await self.client.chat_postMessage(
            channel=self.channel,
            thread_ts=self.thread_ts,
            text=mrkdwn,
            parse="none",
            link_names=False,
            unfurl_links=False,
            unfurl_media=False,
        )
        return str(response["ts"])

    async def _edit(self, ts: str, mrkdwn: str) -> None:
        await self.client.chat_update(
            channel=self.channel, ts=ts, text=mrkdwn, parse="none", link_names=False
        )

    async def delete(self, ts: str) -> None:
        await self.client.chat_delete(channel=self.channel, ts=ts)

    async def send(self, text: str) -> None:
        for part in mrkdwn_parts(text, self.limit):
            if self.notify is not None:
                await self.notify(part)
            else:
                await self._post(part)

    async def update(self, text: str) -> None:
        await self.stream.update(text)

    async def finish(self, text: str, status: ReplyStatus) -> list[str]:
        return await self.stream.finish(text)
