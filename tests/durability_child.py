"""A bot process for the kill tests of test_durability.py: answers messages, then stops at a named point.

    python durability_child.py DATA_DIR EVENTS KILL_POINT MESSAGE...

Every reply it delivers is appended to EVENTS (``{"delivered": ..., "message": ...}``):
that is what the user saw. At KILL_POINT it appends ``{"stopped": KILL_POINT}``
and waits to be killed (SIGKILL by the test):

- ``after-delivery``: the last reply has been delivered; nothing after that runs.
- ``locked``: every reply has been delivered while another process held the
  SQLite write lock (the test takes it once this process says ``ready``, then
  writes a line to its stdin).
- ``after-commit``: memory's writer committed a batch and is about to take it
  out of its journal.

Test code only: production modules know nothing of these points.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from pathlib import Path

from botkit.plugins.memory.spool import Spool
from botkit.settings import settings_from_mapping
from botkit.testing import DEFAULT_TEST_CONFIG, MemoryChat, RecordingResponder, TestBot


def main(data_dir: str, events_path: str, point: str, messages: list[str]) -> None:
    events = Path(events_path)

    def event(**fields: object) -> None:
        with events.open("a", encoding="utf-8") as file:
            file.write(json.dumps(fields) + "\n")

    if point == "after-commit":
        def stop_before_drop(self: Spool, count: int) -> None:
            event(stopped=point)
            threading.Event().wait()  # the whole process stops here, event loop and all

        Spool.drop = stop_before_drop  # type: ignore[method-assign]

    class SeenResponder(RecordingResponder):
        async def finish(self, text, status):
            ids = await super().finish(text, status)
            event(delivered=text, message=self.message.text)
            if point == "after-delivery" and self.message.text == messages[-1]:
                event(stopped=point)
                await asyncio.Event().wait()
            return ids

    async def run() -> None:
        settings = settings_from_mapping({**DEFAULT_TEST_CONFIG, "storage": {"data_dir": data_dir}})
        bot = TestBot.load(settings)
        bot.chat = MemoryChat(bot)
        await bot.start()
        event(ready=True)
        await asyncio.to_thread(sys.stdin.readline)  # the test's go-ahead
        for text in messages:
            bot.backend.say(f"the answer to {text}")
            message = bot.chat.message(text)
            await bot.handle(message, SeenResponder(message))
        if point == "locked":
            event(stopped=point)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
