"""The console's input: lines read on a thread, at the prompt and while a reply is written; editing and history at a terminal."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import TextIO

log = logging.getLogger("botkit.adapters.console")

HISTORY_LINES = 1000  # lines of the history file kept between sessions


class ConsoleInput:
    """Reads one line each time the console asks for one, on a daemon thread.

    A blocking read cannot be taken back, so a read asked for while a reply is
    being written (without a prompt) may still be waiting when the reply ends;
    ``reading`` tells the console so, and it shows the prompt itself.

    At a terminal (``terminal=True``: stdin and stdout are the process's own
    terminal) ``input()`` reads through ``readline`` when Python has it: the
    arrow keys edit the line and walk the history, which ``history`` keeps
    between sessions (the newest ``HISTORY_LINES`` lines).
    """

    def __init__(self, stdin: TextIO, terminal: bool, history: Path | None = None) -> None:
        self.stdin = stdin
        self.terminal = terminal
        self.history = history if terminal else None
        self.lines: asyncio.Queue[str | None] = asyncio.Queue()
        self.reading = False  # a line was asked for and has not been taken (event loop side only)
        self._want = threading.Event()
        self._prompt = ""
        self._readline = None
        self._terminal_state: list | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.terminal:
            self._setup_terminal()
        threading.Thread(
            target=self._read_lines, args=(loop,), name="botkit-console-input", daemon=True
        ).start()

    def ask(self, prompt: str = "") -> None:
        """Ask for the next line, showing ``prompt`` at a terminal; nothing if a read is under way."""
        if not self.reading:
            self._prompt = prompt
            self.reading = True
            self._want.set()

    async def next_line(self) -> str | None:
        """The line asked for (``None`` at the end of input); cancelling leaves it for the next call."""
        line = await self.lines.get()
        self.reading = False
        return line

    def close(self) -> None:
        """Save the history and give the terminal back as it was (a read may be left under way)."""
        if self._readline is not None and self.history is not None:
            try:
                self.history.parent.mkdir(parents=True, exist_ok=True)
                self.history.touch(mode=0o600, exist_ok=True)  # what you typed: yours to read only
                self._readline.write_history_file(str(self.history))
            except OSError as error:
                log.warning("console: cannot save the input history to %s (%s)", self.history, error)
        if self._terminal_state is not None:
            import termios

            try:
                termios.tcsetattr(self.stdin.fileno(), termios.TCSADRAIN, self._terminal_state)
            except (OSError, termios.error):
                pass  # the terminal is gone

    def _setup_terminal(self) -> None:
        try:
            import readline  # input() edits lines through it once imported
            import termios
        except ImportError:  # Windows, or a Python built without readline: plain lines
            return
        self._readline = readline
        readline.set_history_length(HISTORY_LINES)
        if "libedit" not in (readline.__doc__ or ""):
            # Leaving while a read is under way (Ctrl-C at the prompt) must not leave the
            # terminal in bracketed-paste mode; a pasted line is then sent as typed.
            readline.parse_and_bind("set enable-bracketed-paste off")
        try:
            self._terminal_state = termios.tcgetattr(self.stdin.fileno())
        except (OSError, termios.error):
            self._terminal_state = None
        if self.history is not None and self.history.exists():
            try:
                readline.read_history_file(str(self.history))
            except OSError as error:
                log.warning("console: cannot read the input history %s (%s)", self.history, error)

    def _read_lines(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            self._want.wait()
            self._want.clear()
            try:
                line: str | None = input(self._prompt) if self.terminal else self.stdin.readline()
                if line == "" and not self.terminal:
                    line = None
            except EOFError:
                line = None
            except (OSError, ValueError):  # stdin closed under us
                line = None
            try:
                loop.call_soon_threadsafe(self.lines.put_nowait, line)
            except RuntimeError:  # the loop is gone: we are exiting
                return
            if line is None:
                return
