"""The per-backend generation queue: first come first served, a place in line, /stop."""

from __future__ import annotations

import asyncio
import bisect
import threading
from dataclasses import dataclass, field

from botkit.errors import QueueFull


class GenerationCancelled(Exception):
    """The request was stopped (``/stop``) before it reached the model."""


@dataclass(eq=False)
class Ticket:
    """One request for the model. ``owner`` identifies who may stop it."""

    owner: str
    # Requests take the model in this order (the pipeline numbers messages as their
    # handling starts), not in the order they reach the queue: gates, history
    # loading and token counting take different times for each message.
    order: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)
    _granted: asyncio.Future[None] | None = None
    active: bool = False


class GenerationQueue:
    """Lets at most ``concurrency`` generations run at once; the rest wait in ``Ticket.order``."""

    def __init__(self, concurrency: int, limit: int) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self.limit = limit
        self._free = concurrency
        self._waiting: list[Ticket] = []  # sorted by ``order``
        self._active: set[Ticket] = set()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._active)

    def enqueue(self, ticket: Ticket) -> int:
        """Take a place in line. Returns 0 when the model is free now, else the 1-based place."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
            self._grant(ticket)
            return 0
        if len(self._waiting) >= self.limit:
            raise QueueFull(f"{len(self._waiting)} requests are already waiting for the model")
        ticket._granted = asyncio.get_running_loop().create_future()
        bisect.insort_right(self._waiting, ticket, key=lambda waiting: waiting.order)
        return self._waiting.index(ticket) + 1

    async def wait_turn(self, ticket: Ticket) -> None:
        """Wait until ``ticket`` may generate; raises ``GenerationCancelled`` if stopped first."""
        if ticket.active:
            return
        assert ticket._granted is not None, "enqueue() first"
        try:
            await ticket._granted
        except asyncio.CancelledError:
            if ticket in self._waiting:
                self._waiting.remove(ticket)
            elif ticket.active:
                self.release(ticket)
            raise

    def release(self, ticket: Ticket) -> None:
        """Give the slot of a finished generation to the next in line."""
        if not ticket.active:
            return
        ticket.active = False
        self._active.discard(ticket)
        while self._waiting:
            successor = self._waiting.pop(0)
            assert successor._granted is not None
            if not successor._granted.done():
                self._grant(successor)
                successor._granted.set_result(None)
                return
        self._free += 1

    def cancel(self, owner: str) -> int:
        """Stop every request of ``owner``, waiting or running. Returns how many."""
        stopped = 0
        for ticket in [t for t in self._waiting if t.owner == owner]:
            self._waiting.remove(ticket)
            assert ticket._granted is not None
            if not ticket._granted.done():
                ticket._granted.set_exception(GenerationCancelled())
            stopped += 1
        for ticket in self._active:
            if ticket.owner == owner and not ticket.cancel.is_set():
                ticket.cancel.set()
                stopped += 1
        return stopped

    def cancel_all(self) -> None:
        for owner in {t.owner for t in (*self._waiting, *self._active)}:
            self.cancel(owner)

    def _grant(self, ticket: Ticket) -> None:
        ticket.active = True
        self._active.add(ticket)
