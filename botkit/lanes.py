"""One lane per conversation: its messages are handled one at a time, in arrival order (across replicas too)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from botkit.cluster import ClusterLocks, Lease


class ConversationLanes:
    """One FIFO lock per conversation: its messages are handled in arrival order.

    With ``locks`` active (several replicas: ``botkit.cluster``), the holder of a
    lane also takes the conversation's cross-replica lock, so one process waits
    for it once per conversation at a time; ``before_release(key)`` runs before
    that lock goes to the next replica.
    """

    def __init__(
        self,
        locks: ClusterLocks | None = None,
        before_release: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._lanes: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._locks = locks
        self._before_release = before_release
        self._leases: dict[str, Lease] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._lanes.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                lease = await self._locks.acquire(key) if self._locks is not None else None
                if lease is None:
                    yield
                    return
                self._leases[key] = lease
                try:
                    yield
                finally:
                    try:
                        if self._before_release is not None:
                            await self._before_release(key)
                    finally:
                        del self._leases[key]
                        await lease.release()
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._lanes[key]

    def lease(self, key: str) -> Lease | None:
        """The cross-replica lock this process holds for ``key`` now, if any."""
        return self._leases.get(key)

    def __len__(self) -> int:
        return len(self._lanes)


__all__ = ["ConversationLanes"]
