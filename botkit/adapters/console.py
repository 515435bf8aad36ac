"""The console adapter: chat with the bot in a terminal or through a pipe, as any user, anywhere.

Lines starting with ':' steer the console itself (act as another user, as an
admin, in another channel, thread or DM; react to the last reply, edit or delete
your last message); everything else is a chat message.
Input is read while a reply is being written: /stop (any immediate bot command)
acts at once, other lines wait their turn. With a terminal, Ctrl-C stops the
reply being written and, at the prompt, exits; lines are edited with readline
and kept in a history file. With piped input each line gets its reply and the
command exits at EOF.
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import sys
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from pydantic import Field
from sqlalchemy import func, or_, select
from sqlalchemy.exc import SQLAlchemyError

from botkit import hookimpl
from botkit.adapter import Adapter, AdapterSettings
from botkit.adapters.console_input import ConsoleInput
from botkit.adapters.console_output import ConsoleResponder
from botkit.commands import parse_command
from botkit.storage import ConversationRecord, MessageRecord
from botkit.types import HISTORY_STATUSES, Message, MessageChange, Reaction, User

if TYPE_CHECKING:
    from botkit.api import BotAPI

log = logging.getLogger("botkit.adapters.console")

PLATFORM = "console"
MEMORY_PLUGIN = "memory"
HISTORY_FILE = "console_history"  # in the data directory: what was typed at the terminal, for the arrow keys

CONSOLE_HELP = """\
Console commands:
  :as NAME        write as user NAME
  :admin          write as the user 'admin' (an admin by default: [bot] admins)
  :roles A,B      give yourself roles A and B (':roles' alone drops them)
  :channel NAME   write in channel NAME
  :thread NAME    write in thread NAME of this channel (':thread' alone leaves it)
  :dm             write in a direct message to the bot
  :who            show who and where you are
  :react EMOJI    react to the bot's last reply (':react -EMOJI' takes it back)
  :edit TEXT      replace your last message by TEXT
  :delete         delete your last message
  :quit           leave (so do Ctrl-D and, at the prompt, Ctrl-C)
Bot commands start with '/': try /help."""


class ConsoleSettings(AdapterSettings):
    user: str = Field("you", min_length=1, description="the user you write as at start")
    channel: str = Field("general", min_length=1, description="the channel you write in at start")


@dataclass
class Place:
    """Who the console user is acting as, and where."""

    user: str
    channel: str
    thread: str | None = None
    dm: bool = False
    roles: tuple[str, ...] = ()

    def describe(self) -> str:
        who = self.user + (f" ({', '.join(self.roles)})" if self.roles else "")
        if self.dm:
            return f"{who} in a DM"
        where = f"#{self.channel}" + (f" thread {self.thread}" if self.thread else "")
        return f"{who} in {where}"


class ConsoleAdapter(Adapter):
    name = PLATFORM
    settings: ConsoleSettings

    def __init__(
        self,
        bot: BotAPI,
        settings: ConsoleSettings,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
    ) -> None:
        super().__init__(bot, settings)
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.interactive = self.stdin.isatty() and self.stdout.isatty()
        # input() reads (and edits, through readline) only the process's own terminal.
        terminal = self.interactive and self.stdin is sys.stdin and self.stdout is sys.stdout
        self.input = ConsoleInput(
            self.stdin, terminal, bot.settings.storage.data_dir.expanduser() / HISTORY_FILE
        )
        self.place = Place(settings.user, settings.channel)
        self._queued: deque[str | None] = deque()  # lines typed while a reply was being written
        self._closed = asyncio.Event()
        self._last_message: Message | None = None
        self._last_by_user: dict[str, Message] = {}  # for :edit and :delete
        self._last_reply: tuple[str, str] | None = None  # (channel id, reply id), for :react
        self._replying = False

    def prompt(self) -> str:
        return f"[{self.place.describe()}] > "

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.input.start(loop)
        interrupt_installed = self._install_interrupt(loop)
        if self.interactive:
            model = self.bot.status().backends[0].model  # the default backend comes first
            self.stdout.write(
                f"Chatting with {self.bot.settings.bot.name} ({model}). "
                "Type :help for console commands, /help for bot commands.\n"
            )
            continuing = await self.continuing_note()
            if continuing:
                self.stdout.write(continuing + "\n")
            self.stdout.flush()
        try:
            while not self._closed.is_set():
                if self._queued:
                    line = self._queued.popleft()  # typed while a reply was being written
                else:
                    if self.interactive and (self.input.reading or not self.input.terminal):
                        # input() shows the prompt, except in a read begun (silently) during the
                        # last reply, or on a terminal that is not this process's own.
                        self.stdout.write(self.prompt())
                        self.stdout.flush()
                    self.input.ask(self.prompt())
                    line = await self._next_line()
                if line is None:
                    break
                await self._handle_line(line.rstrip("\r\n"))
        finally:
            if interrupt_installed:
                loop.remove_signal_handler(signal.SIGINT)
            self.input.close()
            if self.interactive:
                self.stdout.write("\n")
                self.stdout.flush()

    async def continuing_note(self) -> str | None:
        """The banner's line about an earlier conversation the chat goes on with (``None``: it starts fresh)."""
        message = self._message("")
        count = await remembered_messages(self.bot, message)
        if not count:
            return None
        where = "a DM" if message.is_dm else f"#{message.channel_id}"
        messages = "1 earlier message" if count == 1 else f"{count} earlier messages"
        reset = f"{self.bot.settings.bot.command_prefix}reset"
        return f"(continuing the conversation in {where}: {messages}; {reset} to start fresh)"

    async def _next_line(self) -> str | None:
        """The next line read, or ``None`` at the end of input or when the console closes."""
        reader = asyncio.ensure_future(self.input.next_line())
        closer = asyncio.ensure_future(self._closed.wait())
        await asyncio.wait({reader, closer}, return_when=asyncio.FIRST_COMPLETED)
        closer.cancel()
        if not reader.done():
            reader.cancel()
            return None
        return reader.result()

    def _install_interrupt(self, loop: asyncio.AbstractEventLoop) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        try:
            loop.add_signal_handler(signal.SIGINT, self._on_interrupt)
        except (NotImplementedError, RuntimeError):
            return False
        return True

    def _on_interrupt(self) -> None:
        """Ctrl-C: at a terminal, stop the reply being written; otherwise leave (cleanly)."""
        stopped = self._last_message is not None and self.bot.stop_generations(self._last_message)
        if not (self.interactive and self._replying and stopped):
            self._closed.set()

    async def close(self) -> None:
        self._closed.set()

    def _message(self, text: str) -> Message:
        place = self.place
        return Message(
            text=text,
            author=User(id=place.user, name=place.user, roles=place.roles),
            platform=PLATFORM,
            channel_id=f"dm-{place.user}" if place.dm else place.channel,
            thread_id=None if place.dm else place.thread,
            is_dm=place.dm,
        )

    async def _handle_line(self, line: str) -> None:
        if line.startswith(":"):
            await self._console_command(line[1:].strip())
            return
        message = self._message(line)
        self._last_message = self._last_by_user[self.place.user] = message
        self._replying = True
        responder = ConsoleResponder(self.stdout, self.bot.settings.bot.name)
        try:
            await self._reply_while_reading(message, responder)
        finally:
            self._replying = False
        if responder.reply_id is not None:
            self._last_reply = (message.channel_id, responder.reply_id)

    async def _reply_while_reading(self, message: Message, responder: ConsoleResponder) -> None:
        """Answer ``message`` and meanwhile read on: /stop (any immediate command) acts now, other lines wait.

        An immediate command's answer is shown once the reply is complete, not in its middle.
        """
        reply = asyncio.ensure_future(self.bot.handle(message, responder))
        commands: list[tuple[asyncio.Future[None], io.StringIO]] = []
        try:
            while not reply.done():
                if self._queued and self._queued[-1] is None:
                    break  # the input has ended: nothing more to read
                self.input.ask()
                reader = asyncio.ensure_future(self.input.next_line())
                await asyncio.wait({reply, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not reader.done():
                    reader.cancel()  # the line stays in the queue for the prompt
                    break
                line = reader.result()
                if line is not None and self._immediate(line.strip()):
                    answer = io.StringIO()
                    command = asyncio.ensure_future(
                        self.bot.handle(
                            self._message(line.strip()), ConsoleResponder(answer, responder.speaker)
                        )
                    )
                    commands.append((command, answer))
                else:
                    self._queued.append(line)
            await reply
        except asyncio.CancelledError:
            reply.cancel()  # shut down while waiting for a line: the reply goes too, as when awaited
            raise
        finally:
            for command, answer in commands:
                await command
                self.stdout.write(answer.getvalue())
            self.stdout.flush()

    def _immediate(self, line: str) -> bool:
        """Whether ``line`` is a bot command that acts at once, such as /stop."""
        call = parse_command(line, self.bot.settings.bot.command_prefix)
        command = self.bot.commands.get(call[0]) if call is not None else None
        return command is not None and command.immediate

    async def _console_command(self, command: str) -> None:
        name, _, arg = command.partition(" ")
        arg = arg.strip()
        place = self.place
        if name in ("as", "channel") and not arg:
            self._say(f":{name} needs a name, e.g. ':{name} alice'")
            return
        if name in ("react", "edit", "delete"):
            await self._change_command(name, arg)
            return
        if name == "as":
            place.user = arg
        elif name == "admin":
            place.user = "admin"
        elif name == "roles":
            place.roles = tuple(role.strip() for role in arg.split(",") if role.strip())
        elif name == "channel":
            place.channel, place.thread, place.dm = arg, None, False
        elif name == "thread":
            place.thread, place.dm = (arg or None), False
        elif name == "dm":
            place.dm = True
        elif name == "who":
            pass
        elif name in ("quit", "exit", "q"):
            self._closed.set()
            return
        elif name == "help":
            self._say(CONSOLE_HELP)
            return
        else:
            self._say(f"unknown console command ':{name}'; type :help for the list")
            return
        self._say(f"now {place.describe()}")

    async def _change_command(self, name: str, arg: str) -> None:
        """:react, :edit and :delete: what a platform reports when someone reacts, edits or deletes."""
        user = User(id=self.place.user, name=self.place.user, roles=self.place.roles)
        if name == "react":
            if not arg.lstrip("-"):
                self._say(":react needs an emoji, e.g. ':react 👍' (':react -👍' takes it back)")
            elif self._last_reply is None:
                self._say("no reply to react to yet")
            else:
                channel_id, reply_id = self._last_reply
                emoji, added = arg.removeprefix("-"), not arg.startswith("-")
                await self.bot.react(Reaction(PLATFORM, channel_id, reply_id, user, emoji, added))
                self._say(f"{'reacted' if added else 'took back'} {emoji} on the last reply")
            return
        message = self._last_by_user.get(user.id)
        if message is None:
            self._say(f"you ({user.id}) have no message to {name}")
        elif name == "edit" and not arg:
            self._say(":edit needs the new text, e.g. ':edit What is 2 + 2?'")
        else:
            text = arg if name == "edit" else None
            if text is None:
                del self._last_by_user[user.id]
            change = MessageChange(PLATFORM, message.channel_id, message.message_id, text, user)
            await self.bot.message_changed(change)
            self._say("edited your last message" if text is not None else "deleted your last message")

    def _say(self, text: str) -> None:
        self.stdout.write(f"({text})\n" if "\n" not in text else text + "\n")
        self.stdout.flush()


async def remembered_messages(bot: BotAPI, message: Message) -> int:
    """How many messages of ``message``'s conversation the memory plugin would put into a prompt.

    The stored user messages and completed replies of the conversation since its
    last /reset, read from the database (0 when memory is off or the database
    cannot be read). Records still waiting to be written are not counted.
    """
    if not bot.plugins.is_on(MEMORY_PLUGIN):
        return 0
    scope_key = message.conversation_key(bot.settings.bot.conversation_scope)
    open_conversation = (
        select(ConversationRecord.id)
        .where(ConversationRecord.scope_key == scope_key, ConversationRecord.ended_at.is_(None))
        .order_by(ConversationRecord.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    query = select(func.count(MessageRecord.id)).where(
        MessageRecord.conversation_id == open_conversation,
        MessageRecord.deleted_at.is_(None),
        or_(MessageRecord.role == "user", MessageRecord.status.in_(HISTORY_STATUSES)),
    )
    try:
        async with bot.db.sessions() as session:
            return await session.scalar(query) or 0
    except (SQLAlchemyError, OSError) as error:
        log.warning("console: cannot count the earlier messages of %s (%s)", scope_key, error)
        return 0


@hookimpl
def botkit_register_adapters(register):
    register(PLATFORM, ConsoleAdapter, ConsoleSettings)
