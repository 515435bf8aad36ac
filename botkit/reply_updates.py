"""A reply as its stream grows: what the stream gave (``Streamed``), and its updates to the platform (``StreamedUpdates``)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from botkit.types import Refuse, ReplyStatus, Responder

log = logging.getLogger("botkit.pipeline")  # its lines stay where they were: the pipeline's


@dataclass(slots=True)
class Streamed:
    """What the backend's stream gave one request: its raw text and how the stream ended."""

    raw: str = ""
    status: ReplyStatus = ReplyStatus.COMPLETED
    refusal: Refuse | None = None  # the output filter's, when one stopped the stream
    completion_tokens: int = 0
    prompt_tokens: int | None = None  # the backend's own count, when its stream gave one
    first_token_s: float | None = None
    truncated: bool = False  # the backend's finish reason: cut at the length limit


class StreamedUpdates:
    """Hands a growing reply to ``responder.update`` without ever making the model wait for it.

    An update may wait on a platform (a rate limit, a slow edit); the model's
    stream must not, or the model slot is held for as long as the platform
    takes. ``offer`` keeps only the newest text and a task delivers it, one
    ``update`` at a time; texts offered meanwhile are merged into the next one.
    A responder whose ``update`` returns at once still gets every text.
    """

    def __init__(self, responder: Responder) -> None:
        self._responder = responder
        self._newest: str | None = None
        self._delivery: asyncio.Task[None] | None = None

    async def offer(self, text: str) -> None:
        """Take the whole reply so far; it reaches the responder as soon as its last update is done."""
        self._newest = text
        if self._delivery is None or self._delivery.done():
            self._delivery = asyncio.create_task(self._deliver(), name="botkit-reply-updates")
        # One turn of the event loop: an update that does not wait is made before the next chunk.
        await asyncio.sleep(0)

    async def settle(self) -> None:
        """Wait for the update in progress, if any; texts not yet delivered are dropped
        (``finish`` delivers the final text, and must come after every update)."""
        self._newest = None
        if self._delivery is not None:
            await asyncio.wait({self._delivery})

    def abandon(self) -> None:
        """Stop delivering: the message is no longer being answered (shutdown)."""
        self._newest = None
        if self._delivery is not None:
            self._delivery.cancel()

    async def _deliver(self) -> None:
        while self._newest is not None:
            text, self._newest = self._newest, None
            try:
                await self._responder.update(text)
            except Exception:
                log.exception("a streamed update of the reply failed; the final text is still delivered")


__all__ = ["Streamed", "StreamedUpdates"]
