"""The control socket's ``probe`` request: messages through a bot's whole pipeline, as ``botkit redteam`` sends them.

A probe runs on the platform ``redteam`` (``botkit.types.REDTEAM_PLATFORM``), which no adapter
uses, so it never joins a real user's conversation. ``botkit redteam`` answers probes with a
bot in its own process through the same function, so both ways run one code path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from botkit.errors import ControlError
from botkit.types import REDTEAM_PLATFORM, Message, ReplyStatus, Responder, User

if TYPE_CHECKING:
    from botkit.bot import Bot

PROBE_MESSAGES = 20  # messages one probe request may send


async def answer_probe(bot: Bot, request: Mapping[str, Any]) -> dict[str, Any]:
    """The ``probe`` request's answer, less ``ok``: the messages through ``bot``'s pipeline, on the
    ``redteam`` platform. ``botkit redteam`` calls it in-process too, so both ways run one code path.
    Raises ``ControlError`` for a request whose messages are not as documented."""
    replies = []
    for text, user, channel in probe_messages(request.get("messages")):
        message = Message(text, User(user, user), platform=REDTEAM_PLATFORM, channel_id=channel)
        responder = ProbeResponder()
        await bot.handle(message, responder)
        replies.append(responder.as_json())
    plugins = sorted(name for name in bot.host.infos if bot.host.is_on(name))
    return {"replies": replies, "plugins": plugins, "backend": bot.default_backend.summary()}


def probe_messages(value: Any) -> list[tuple[str, str, str]]:
    """``(text, user, channel)`` of each message of a ``probe`` request; ``ControlError`` naming what is wrong."""
    if not isinstance(value, list) or not 0 < len(value) <= PROBE_MESSAGES:
        raise ControlError(f'probe: "messages" must be a list of 1 to {PROBE_MESSAGES} messages')
    messages = []
    for number, item in enumerate(value, 1):
        fields = [item.get(key) if isinstance(item, dict) else None for key in ("text", "user", "channel")]
        if not all(isinstance(field, str) and field for field in fields):
            raise ControlError(f'probe: message {number} needs "text", "user" and "channel", each a string')
        messages.append((fields[0], fields[1], fields[2]))
    return messages


class ProbeResponder(Responder):
    """What the bot answered a probe: notices (commands, gates) and the reply the model gave, if any."""

    def __init__(self) -> None:
        self.notices: list[str] = []
        self.final: str | None = None
        self.status: ReplyStatus | None = None

    async def send(self, text: str) -> None:
        self.notices.append(text)

    async def update(self, text: str) -> None:
        """Streamed text is not kept: a probe's answer is the reply as finished."""

    async def finish(self, text: str, status: ReplyStatus) -> None:
        self.final, self.status = text, status

    def as_json(self) -> dict[str, Any]:
        text = self.final if self.final is not None else "\n".join(self.notices)
        status = self.status.value if self.status is not None else None
        return {"text": text, "status": status, "notices": self.notices}


__all__ = ["PROBE_MESSAGES", "ProbeResponder", "answer_probe", "probe_messages"]
