"""Which platform deliveries were seen already, so that a redelivered event is answered once."""

from __future__ import annotations

import time
from collections import OrderedDict


class SeenDeliveries:
    """Remembers delivery ids (Slack ``event_id``, Discord message id) for ``ttl`` seconds.

    Platforms redeliver an event when its acknowledgement was late or lost; the
    first delivery is answered and later copies are dropped. A retry whose first
    delivery never arrived is the first one seen here, so it is answered. At most
    ``limit`` ids are kept: the oldest are forgotten first.
    """

    def __init__(self, ttl: float = 3600.0, limit: int = 100_000) -> None:
        self.ttl = ttl
        self.limit = limit
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first(self, delivery_id: str) -> bool:
        """True the first time ``delivery_id`` is seen (within ``ttl``), False for a repeat."""
        now = time.monotonic()
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at < self.ttl and len(self._seen) < self.limit:
                break
            del self._seen[oldest]
        if delivery_id in self._seen:
            return False
        self._seen[delivery_id] = now
        return True

    def __len__(self) -> int:
        return len(self._seen)
