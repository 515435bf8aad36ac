"""Failed logins, counted with ``limits`` where the bot's rate limits are counted.

``[plugins.ratelimit] storage`` set to Redis: every replica and every ``botkit web`` on that
Redis shares one count per account name and per client address, so N processes do not
allow N times ``[web] login_limit``. Otherwise (memory, or the plugin off) each process
counts its own. When the shared storage fails (Redis down), logins are counted in this
process's memory until it answers again, and one warning says so: never unlimited.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from limits import parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from botkit import BotAPI
from botkit.ops import limits_storage

log = logging.getLogger("botkit.web")

NAMESPACE = "web-login"


def shared_storage(bot: BotAPI) -> Storage:
    """``[plugins.ratelimit] storage`` (with its password) when the plugin has settings, else this process's memory."""
    try:
        rate: Any = bot.plugin_settings("ratelimit")
    except KeyError:
        return MemoryStorage()
    secret = getattr(rate, "password", None)
    return limits_storage(str(getattr(rate, "storage", "memory://")), secret.get_secret_value() if secret else None)


class LoginLimit:
    """``login_limit`` (e.g. ``"10/minute"``) of failed logins per key (``("name", ...)``, ``("client", ...)``)."""

    def __init__(self, limit: str, storage: Storage) -> None:
        self.limit = parse(limit)
        self.shared = MovingWindowRateLimiter(storage)
        self.local = MovingWindowRateLimiter(MemoryStorage())
        self.storage = storage
        self._failing = False

    async def _call(self, method: str, *key: str) -> Any:
        if not isinstance(self.storage, MemoryStorage):
            try:
                result = await getattr(self.shared, method)(self.limit, NAMESPACE, *key)
            except Exception as error:  # noqa: BLE001 - any failure of the storage: count here instead
                if not self._failing:
                    log.warning(
                        "web console: the shared login limit's storage failed (%s); counting failed logins in "
                        "this process until it answers",
                        type(error).__name__,
                    )
                self._failing = True
            else:
                if self._failing:
                    log.warning("web console: the shared login limit's storage answers again")
                self._failing = False
                return result
        return await getattr(self.local, method)(self.limit, NAMESPACE, *key)

    async def wait_s(self, key: tuple[str, str]) -> int | None:
        """None while ``key`` may try again; else the seconds until it may."""
        if await self._call("test", *key):
            return None
        reset, _ = await self._call("get_window_stats", *key)
        return max(1, int(reset - time.time()))

    async def failed(self, key: tuple[str, str]) -> None:
        await self._call("hit", *key)
