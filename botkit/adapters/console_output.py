"""What the console prints of a reply: word by word as it is generated, corrected when a filter rewrote it."""

from __future__ import annotations

import uuid
from typing import TextIO

from botkit.types import ReplyStatus, Responder


class ConsoleResponder(Responder):
    """Prints replies; streamed text appears word by word as it is generated.

    A trailing partial word is held back until it is complete, so output filters
    see whole words before anything reaches the screen.
    """

    def __init__(self, out: TextIO, speaker: str) -> None:
        self.out = out
        self.speaker = speaker
        self.printed = ""
        self.started = False
        self.reply_id: str | None = None  # the console's id of the finished reply

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    async def send(self, text: str) -> None:
        self._write(f"{self.speaker}> {text}\n")

    async def update(self, text: str) -> None:
        cut = max(text.rfind(" "), text.rfind("\n")) + 1
        stable = text[:cut]
        if not stable.startswith(self.printed):
            return  # a filter rewrote what is on screen; finish() prints the corrected reply
        if not self.started:
            self._write(f"{self.speaker}> ")
            self.started = True
        self._write(stable[len(self.printed) :])
        self.printed = stable

    async def finish(self, text: str, status: ReplyStatus) -> list[str]:
        if not self.started:
            self._write(f"{self.speaker}> {text}\n")
        elif text.startswith(self.printed):
            self._write(text[len(self.printed) :] + "\n")
        else:
            self._write(f"\n{self.speaker}> (corrected) {text}\n")
        self.reply_id = uuid.uuid4().hex
        return [self.reply_id]


__all__ = ["ConsoleResponder"]
