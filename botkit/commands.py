"""Chat commands: what a plugin registers, and how a user's text is recognised as one."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botkit.types import Message, Responder

if TYPE_CHECKING:
    from botkit.api import BotAPI

_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


@dataclass(frozen=True, slots=True)
class CommandContext:
    """What a command handler gets: the message, the text after the command name, the bot."""

    message: Message
    args: str
    bot: BotAPI
    responder: Responder


CommandHandler = Callable[[CommandContext], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class Command:
    """A chat command such as ``/help``, answered without the model.

    ``handler`` returns the text to send back (or ``None`` when it replied
    itself). ``admin_only`` commands are refused, and the attempt logged, for
    anyone ``bot.is_admin`` does not accept. ``immediate`` commands (``/stop``)
    run as soon as they arrive instead of waiting behind the conversation's
    earlier messages.
    """

    name: str
    help: str
    handler: CommandHandler
    usage: str = ""
    admin_only: bool = False
    immediate: bool = False

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(
                f"command name {self.name!r}: use 1-32 lowercase letters, digits, '-' or '_', "
                "starting with a letter"
            )


def parse_command(text: str, prefix: str) -> tuple[str, str] | None:
    """``("name", "args")`` when ``text`` starts with ``prefix`` and a command-like word."""
    if not text.startswith(prefix):
        return None
    head, _, args = text[len(prefix) :].partition(" ")
    name = head.strip().lower()
    if not _NAME.fullmatch(name):
        return None
    return name, args.strip()
