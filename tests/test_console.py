"""The console adapter in process: input read while a reply is written, and the note on an earlier conversation."""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import pty
import re
import termios
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from botkit.adapters.console import ConsoleAdapter
from botkit.plugins.memory import memory
from botkit.testing import WAIT_TIMEOUT, eventually


class TypedInput:
    """The console's stdin as a pipe the test types into, line by line, whenever it likes."""

    def __init__(self) -> None:
        read_end, self._write_end = os.pipe()
        self.stdin = os.fdopen(read_end, "r", encoding="utf-8")
        self.ended = False

    def type(self, *lines: str) -> None:
        os.write(self._write_end, "".join(line + "\n" for line in lines).encode())

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            os.close(self._write_end)

    def unread(self) -> bool:
        """Whether the pipe still holds bytes the console has not read."""
        waiting = bytearray(4)
        fcntl.ioctl(self.stdin.fileno(), termios.FIONREAD, waiting)
        return int.from_bytes(waiting, "little") > 0


def console(bot, stdin, stdout=None) -> ConsoleAdapter:
    return ConsoleAdapter(bot, bot.adapter_settings("console"), stdin, stdout or io.StringIO())


async def chat(bot, *lines: str) -> list[str]:
    """A piped console session: each line in turn, then the end of input."""
    stdout = io.StringIO()
    await asyncio.wait_for(
        console(bot, io.StringIO("".join(line + "\n" for line in lines)), stdout).run(), 30
    )
    return stdout.getvalue().splitlines()


@asynccontextmanager
async def typing_session(bot) -> AsyncIterator[tuple[TypedInput, io.StringIO]]:
    """A console session the test types into as it goes; on leaving, the input ends and so does the session."""
    typed, stdout = TypedInput(), io.StringIO()
    session = asyncio.ensure_future(console(bot, typed.stdin, stdout).run())
    try:
        yield typed, stdout
        typed.end()
        await asyncio.wait_for(session, WAIT_TIMEOUT)
    finally:
        session.cancel()
        typed.end()
        typed.stdin.close()


async def test_stop_typed_while_a_reply_is_written_stops_it_and_later_lines_wait(make_bot):
    async with make_bot() as bot:
        name = bot.settings.bot.name
        gate = bot.backend.hold("never ", "shown")
        bot.backend.say("the next answer")
        async with typing_session(bot) as (typed, stdout):
            typed.type("write a lot")
            await gate.reached()  # the reply is being written and waits there
            typed.type(":who", "/stop", "and then this")
            await eventually(
                lambda: "the next answer" in stdout.getvalue(), what="the queued message answered"
            )
        assert stdout.getvalue().splitlines() == [
            f"{name}> [stopped]",
            f"{name}> Stopped.",  # /stop's own answer, once the reply it stopped is complete
            "(now you in #general)",  # :who, typed before /stop, waited for the reply
            f"{name}> the next answer",  # and so did the next message
        ]
        assert [prompt.current.text for prompt in bot.backend.prompts] == ["write a lot", "and then this"]


async def test_lines_typed_while_a_reply_is_written_are_answered_in_order(make_bot):
    async with make_bot() as bot:
        name = bot.settings.bot.name
        (gate,) = bot.backend.say_in_parts("One ", "two")
        bot.backend.say("three")
        async with typing_session(bot) as (typed, stdout):
            typed.type("count")
            await gate.reached()
            typed.type("go on")  # not a command: read now, answered after the reply, not lost
            await eventually(lambda: not typed.unread(), what="the typed line read during the reply")
            gate.open()
        assert stdout.getvalue().splitlines() == [f"{name}> One two", f"{name}> three"]
        assert [prompt.current.text for prompt in bot.backend.prompts] == ["count", "go on"]


async def test_the_banner_says_when_the_chat_goes_on_with_an_earlier_conversation(make_bot):
    async with make_bot() as bot:
        assert await console(bot, io.StringIO()).continuing_note() is None  # a new conversation
        await chat(bot, "hello", "and again")
        await eventually(lambda: not memory(bot).pending, what="the exchanges written")
        assert await console(bot, io.StringIO()).continuing_note() == (
            "(continuing the conversation in #general: 4 earlier messages; /reset to start fresh)"
        )
        await chat(bot, ":channel random", "elsewhere")
        await eventually(lambda: not memory(bot).pending, what="the exchange written")
        assert "4 earlier messages" in await console(bot, io.StringIO()).continuing_note()

        await chat(bot, "/reset")
        await eventually(lambda: not memory(bot).pending, what="the reset written")
        assert await console(bot, io.StringIO()).continuing_note() is None
        await chat(bot, "fresh start")
        await eventually(lambda: not memory(bot).pending, what="the exchange written")
        assert "2 earlier messages" in await console(bot, io.StringIO()).continuing_note()

        await bot.plugins.disable("memory")  # nothing is remembered, so nothing goes on
        assert await console(bot, io.StringIO()).continuing_note() is None


async def test_a_console_on_a_terminal_shows_the_banner_and_the_prompt(make_bot):
    async with make_bot() as bot:
        await chat(bot, "hello")
        await eventually(lambda: not memory(bot).pending, what="the exchange written")
        master, slave = pty.openpty()
        os.set_blocking(master, False)
        screen = bytearray()

        def shows(pattern: str) -> bool:
            try:
                screen.extend(os.read(master, 4096))
            except BlockingIOError:
                pass
            return re.search(pattern, screen.decode("utf-8", "replace")) is not None

        with os.fdopen(slave, "r", encoding="utf-8") as stdin, open(slave, "w", closefd=False) as stdout:
            session = asyncio.ensure_future(console(bot, stdin, stdout).run())
            try:
                await eventually(
                    lambda: shows(
                        r"\(continuing the conversation in #general: 2 earlier messages; /reset to start fresh\)"
                        r"\r?\n\[you in #general\] > "
                    ),
                    what="the banner and the prompt",
                )
                os.write(master, b":who\n")
                await eventually(lambda: shows(r"\(now you in #general\)\r?\n\[you in #general\] > "))
                os.write(master, b"\x04")  # Ctrl-D at the prompt
                await asyncio.wait_for(session, WAIT_TIMEOUT)
            finally:
                session.cancel()
                os.close(master)
