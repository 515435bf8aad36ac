"""Translating between Discord and botkit: what a user wrote, who wrote it, and delivering the replies.

Replies are sent with Discord's own protection against pings and previews:
``allowed_mentions`` that allow nothing (no ``@everyone``, role, user or
replied-user ping, whatever the text says) and embeds suppressed, so a link
in a reply never unfurls. discord.py objects are only ever handed in; the
library is imported lazily, by the adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from abc import abstractmethod
from typing import Any

from botkit.adapters.edits import EditStream, split_text
from botkit.types import MessageChange, Reaction, ReplyStatus, Responder, User

log = logging.getLogger("botkit.adapters.discord")

PLATFORM = "discord"
# Discord refuses message content longer than this (characters).
MESSAGE_LIMIT = 2000
# A typing indicator shows for about 10 seconds; renew it before it fades.
TYPING_RENEW_SECONDS = 8.0

_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")
_CHANNEL_MENTION = re.compile(r"<#(\d+)>")


def incoming_text(message: Any, bot_user_id: int) -> str:
    """What a user wrote, readable: the bot's own mention dropped, other mentions spelled as names."""
    return readable_text(
        message.content,
        bot_user_id,
        users={user.id: user.display_name for user in message.mentions},
        roles={role.id: role.name for role in getattr(message, "role_mentions", [])},
        channels={channel.id: channel.name for channel in getattr(message, "channel_mentions", [])},
    )


def readable_text(
    content: str,
    bot_user_id: int,
    *,
    users: dict[int, str] | None = None,
    roles: dict[int, str] | None = None,
    channels: dict[int, str] | None = None,
) -> str:
    """``content`` with ``<@id>``, ``<@&id>`` and ``<#id>`` replaced by ``@name`` / ``#name`` where known."""
    users, roles, channels = users or {}, roles or {}, channels or {}

    def user(match: re.Match[str]) -> str:
        user_id = int(match.group(1))
        if user_id == bot_user_id:
            return ""
        return f"@{users[user_id]}" if user_id in users else match.group(0)

    content = _USER_MENTION.sub(user, content)
    content = _ROLE_MENTION.sub(
        lambda m: f"@{roles[int(m.group(1))]}" if int(m.group(1)) in roles else m.group(0), content
    )
    content = _CHANNEL_MENTION.sub(
        lambda m: f"#{channels[int(m.group(1))]}" if int(m.group(1)) in channels else m.group(0), content
    )
    return re.sub(r"[ \t]{2,}", " ", content).strip()


def author_of(member_or_user: Any) -> User:
    """A Discord user (or guild member, whose role ids become ``User.roles``) as a botkit ``User``."""
    roles = tuple(str(role.id) for role in getattr(member_or_user, "roles", []) if not role.is_default())
    return User(
        id=str(member_or_user.id),
        name=member_or_user.display_name,
        is_bot=bool(member_or_user.bot),
        roles=roles,
    )


def place_of(channel: Any) -> tuple[str, str | None, bool]:
    """(channel_id, thread_id, is_dm) of a Discord channel, thread or DM as botkit sees it.

    A thread belongs to its parent channel: ``channel_id`` is the parent's id, ``thread_id`` the thread's.
    """
    import discord

    if isinstance(channel, discord.Thread):
        return str(channel.parent_id), str(channel.id), False
    is_dm = (
        isinstance(channel, discord.DMChannel | discord.GroupChannel) or getattr(channel, "guild", 1) is None
    )
    return str(channel.id), None, is_dm


def reaction_from(payload: Any, bot_user_id: int, channel_id: str, *, added: bool) -> Reaction | None:
    """A raw reaction event as a ``Reaction``; ``None`` for the bot's own, bots', and those on others' messages."""
    if payload.user_id == bot_user_id:
        return None
    if added and payload.message_author_id is not None and payload.message_author_id != bot_user_id:
        return None  # a reaction to someone else's message says nothing about the bot
    member = payload.member
    if member is not None and member.bot:
        return None
    user = author_of(member) if member is not None else User(id=str(payload.user_id))
    emoji = payload.emoji.name if payload.emoji.is_custom_emoji() else str(payload.emoji)
    return Reaction(PLATFORM, channel_id, str(payload.message_id), user, emoji or "", added)


def edit_from(payload: Any, bot_user_id: int, channel_id: str) -> MessageChange | None:
    """A raw message edit as a ``MessageChange``; ``None`` for bots' edits and updates that keep the text."""
    data = payload.data
    author = data.get("author") or {}
    if author.get("bot") or "content" not in data or data.get("webhook_id"):
        return None  # its own streaming edits, other bots', embeds being attached
    cached = payload.cached_message
    if cached is not None and cached.content == data["content"]:
        return None  # the text did not change (an unfurl, a pin)
    names = {
        int(user["id"]): user.get("global_name") or user["username"] for user in data.get("mentions", [])
    }
    text = readable_text(data["content"], bot_user_id, users=names)
    user = None
    if author:
        user = User(id=str(author["id"]), name=author.get("global_name") or author.get("username", ""))
    return MessageChange(PLATFORM, channel_id, str(payload.message_id), text, user)


class DiscordResponder(Responder):
    """Delivers a streamed reply by editing it at most once per interval, continued in follow-up messages.

    Subclasses provide the three platform calls (``post``, ``edit``, ``delete``).
    """

    def __init__(self, allowed_mentions: Any, interval: float) -> None:
        self.allowed_mentions = allowed_mentions
        self.stream = EditStream(
            self.post, self.edit, limit=MESSAGE_LIMIT, interval=interval, delete=self.delete
        )
        self.posted = 0

    @abstractmethod
    async def post(self, text: str) -> str:
        """The platform call; a channel message and an interaction answer differ."""

    @abstractmethod
    async def edit(self, message_id: str, text: str) -> None:
        """The platform call; a channel message and an interaction answer differ."""

    @abstractmethod
    async def delete(self, message_id: str) -> None:
        """The platform call; a channel message and an interaction answer differ."""

    async def send(self, text: str) -> None:
        for part in split_text(text, MESSAGE_LIMIT):
            await self.post(part)

    async def update(self, text: str) -> None:
        await self.stream.update(text)

    async def finish(self, text: str, status: ReplyStatus) -> list[str]:
        return await self.stream.finish(text)


class ChannelResponder(DiscordResponder):
    """Answers in a channel, thread or DM; the first message is a reply to the user's message.

    Shows the typing indicator from ``start_typing`` until the first message is sent.
    """

    def __init__(self, channel: Any, reply_to: Any, *, allowed_mentions: Any, interval: float) -> None:
        super().__init__(allowed_mentions, interval)
        self.channel = channel
        self.reply_to = reply_to
        self._typing: asyncio.Task[None] | None = None

    def start_typing(self) -> None:
        self._typing = asyncio.create_task(self._keep_typing(), name="botkit-discord-typing")

    async def _keep_typing(self) -> None:
        while True:
            try:
                await self.channel.typing()
            except Exception as error:  # a missing permission must not stop the reply
                log.debug("discord: typing indicator failed: %s", error)
                return
            await asyncio.sleep(TYPING_RENEW_SECONDS)

    async def stop_typing(self) -> None:
        if self._typing is not None:
            self._typing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._typing
            self._typing = None

    async def post(self, text: str) -> str:
        await self.stop_typing()
        reference = None
        if self.posted == 0 and self.reply_to is not None:
            reference = self.reply_to.to_reference(fail_if_not_exists=False)
        sent = await self.channel.send(
            text,
            reference=reference,
            mention_author=False,
            allowed_mentions=self.allowed_mentions,
            suppress_embeds=True,
        )
        self.posted += 1
        return str(sent.id)

    async def edit(self, message_id: str, text: str) -> None:
        # A partial edit leaves the flags alone: embeds stay suppressed as they were when sent.
        await self.channel.get_partial_message(int(message_id)).edit(
            content=text, allowed_mentions=self.allowed_mentions
        )

    async def delete(self, message_id: str) -> None:
        await self.channel.get_partial_message(int(message_id)).delete()

    async def finish(self, text: str, status: ReplyStatus) -> list[str]:
        try:
            return await super().finish(text, status)
        finally:
            await self.stop_typing()


class InteractionResponder(DiscordResponder):
    """Answers a slash command after ``defer``: the first follow-up replaces the "thinking..." response."""

    def __init__(self, interaction: Any, *, ephemeral: bool, allowed_mentions: Any, interval: float) -> None:
        super().__init__(allowed_mentions, interval)
        self.interaction = interaction
        self.ephemeral = ephemeral

    async def post(self, text: str) -> str:
        sent = await self.interaction.followup.send(
            text,
            wait=True,
            ephemeral=self.ephemeral,
            allowed_mentions=self.allowed_mentions,
            suppress_embeds=True,
        )
        self.posted += 1
        return str(sent.id)

    async def edit(self, message_id: str, text: str) -> None:
        await self.interaction.followup.edit_message(
            int(message_id), content=text, allowed_mentions=self.allowed_mentions
        )

    async def delete(self, message_id: str) -> None:
        await self.interaction.followup.delete_message(int(message_id))

    async def close(self) -> None:
        """After the message was handled: a command that answered nothing leaves no "thinking..." behind."""
        if self.posted == 0:
            with contextlib.suppress(Exception):
                await self.interaction.delete_original_response()
