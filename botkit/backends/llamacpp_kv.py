"""Where a conversation's KV cache lives between its turns, and which sequence a new prompt takes.

A sequence of a llama.cpp context keeps the KV cache of the last prompt and reply it
generated. A conversation's next prompt starts with those tokens, so only what
follows the longest common prefix needs evaluating. When every sequence is taken,
the least recently used idle one is given up: its cache is copied to host memory
(``SavedCaches``, within ``[backend] kv_cache_mb``) and copied back when its
conversation returns. Only caches that memory cannot hold are dropped, to be
evaluated again from the text. A new conversation whose prompt begins as another's
cache does gets a copy of that beginning (``Engine._copy``, ``Engine._restore`` with
``keep``) and leaves the other's cache where it is.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

# A cache continues a prompt when the prompt repeats at least this share of its tokens:
# a conversation's next turn repeats all of them but the end of the last reply, while
# another conversation shares no more than the system prompt.
CONTINUES = 0.5


def common_prefix(cached: Sequence[int], tokens: Sequence[int]) -> int:
    """How many tokens ``cached`` and ``tokens`` share from their start."""
    size = min(len(cached), len(tokens))
    for index in range(size):
        if cached[index] != tokens[index]:
            return index
    return size


def continues(cached: Sequence[int], shared: int) -> bool:
    """Whether a prompt sharing ``shared`` leading tokens with ``cached`` is that cache's conversation."""
    return bool(cached) and shared >= max(1, int(len(cached) * CONTINUES))


@dataclass(eq=False)
class SavedCache:
    """A sequence's KV cache copied to host memory: the tokens it holds and llama.cpp's bytes."""

    lane: Hashable  # the context (LoRA adapter) it was computed in; only valid there
    tokens: tuple[int, ...]
    data: Any  # a ctypes byte array from llama_state_seq_get_data
    size: int


class SavedCaches:
    """Saved KV caches, least recently used first, in at most ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.evictions = 0  # caches dropped for room (or too big to keep): evaluated again if they return
        self._caches: OrderedDict[int, SavedCache] = OrderedDict()
        self._next = 0

    def __len__(self) -> int:
        return len(self._caches)

    def fits(self, size: int) -> bool:
        return 0 < size <= self.limit

    def add(self, cache: SavedCache) -> None:
        """Keep ``cache``, dropping the least recently used ones until it fits."""
        if not self.fits(cache.size):
            self.evictions += 1
            return
        while self.used + cache.size > self.limit:
            _, dropped = self._caches.popitem(last=False)
            self.used -= dropped.size
            self.evictions += 1
        self._caches[self._next] = cache
        self._next += 1
        self.used += cache.size

    def best(self, lane: Hashable, tokens: Sequence[int]) -> tuple[SavedCache | None, int]:
        """The saved cache of ``lane`` sharing the longest prefix with ``tokens``, and that length."""
        found, longest = None, 0
        for cache in self._caches.values():
            if cache.lane == lane:
                shared = common_prefix(cache.tokens, tokens)
                if shared > longest:
                    found, longest = cache, shared
        return found, longest

    def take(self, cache: SavedCache) -> None:
        """Remove ``cache``: it is being copied back into a sequence."""
        for key, kept in self._caches.items():
            if kept is cache:
                del self._caches[key]
                self.used -= cache.size
                return

    def drop_lane(self, lane: Hashable) -> None:
        """Forget the caches of a context that is freed (their numbers mean nothing elsewhere)."""
        for key in [key for key, cache in self._caches.items() if cache.lane == lane]:
            self.used -= self._caches.pop(key).size
            self.evictions += 1

    def clear(self) -> None:
        self._caches.clear()
        self.used = 0
