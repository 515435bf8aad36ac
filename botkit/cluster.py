"""Conversation locks shared by the replicas (Redis, else PostgreSQL advisory locks): one conversation, one answer at a time.

With ``[cluster] enabled`` (several ``botkit run`` processes serve one bot) the
pipeline's lanes order one process's messages of a conversation and these
locks, taken inside a lane, order them across the processes. Redis
(``[cluster] redis_url``) holds each lock as a key that expires after
``lock_ttl_s`` unless its holder renews it, so a killed replica's lock frees
itself; each grant carries a fencing token that grows with every grant. Without
Redis, on PostgreSQL, a lock is a session advisory lock on one connection per
process, freed when that session ends. Not enabled (the default), there is one
process and no lock beyond the lanes. docs/architecture.md ("Several replicas")
says what is guaranteed while Redis comes and goes."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from botkit.errors import ConfigError
from botkit.metrics import Metrics

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from botkit.settings import ClusterSettings
    from botkit.storage.database import Database

log = logging.getLogger("botkit.cluster")

FIRST_POLL = 0.02  # seconds before a waiter asks again; each next wait doubles, up to MAX_POLL
MAX_POLL = 0.5
REDIS_RETRY_S = 5.0  # while Redis is down, how often one acquire tries it again
PREFIX = "botkit:lock:"
FENCE_KEY = "botkit:lock-fence"
RELEASED_CHANNEL = "botkit:lock-released"

# Free -> taken with the next fencing token (one counter for every conversation: tokens only grow).
ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
return token
"""
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# Compare and delete: a holder whose lock expired never frees its successor's.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], KEYS[1])
  return 1
end
return 0
"""


class LockStoreDown(Exception):
    """The lock store (Redis, the database) cannot be reached: the caller takes the next one."""


@dataclass(slots=True)
class Grant:
    """What a store hands the holder of one conversation's lock."""

    store: str  # "redis" or "postgresql"
    token: int | None  # the fencing token (Redis); None where the session itself fences (PostgreSQL)
    value: str = ""  # what the Redis key holds while this grant is current


class LockStore(Protocol):
    name: str

    async def acquire(self, key: str) -> Grant: ...

    async def holds(self, key: str, grant: Grant) -> bool: ...

    async def release(self, key: str, grant: Grant) -> None: ...

    async def close(self) -> None: ...


class Waiters:
    """Events of the local acquires waiting for a key: set when its release is announced."""

    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = {}

    def add(self, key: str) -> asyncio.Event:
        event = asyncio.Event()
        self._events.setdefault(key, set()).add(event)
        return event

    def remove(self, key: str, event: asyncio.Event) -> None:
        events = self._events.get(key)
        if events is not None:
            events.discard(event)
            if not events:
                del self._events[key]

    def wake(self, key: str) -> None:
        for event in self._events.get(key, ()):
            event.set()


async def wait_turn(try_acquire: Any, key: str, waiters: Waiters | None) -> Grant:
    """Call ``try_acquire()`` until it grants; between tries wait for a release notice or a
    poll interval that doubles up to MAX_POLL (a notice may be missed: the poll is the fallback)."""
    delay = FIRST_POLL
    while True:
        event = waiters.add(key) if waiters is not None else asyncio.Event()
        try:
            grant = await try_acquire()
            if grant is not None:
                return grant
            try:
                await asyncio.wait_for(event.wait(), delay)
            except TimeoutError:
                delay = min(delay * 2, MAX_POLL)
        finally:
            if waiters is not None:
                waiters.remove(key, event)


class RedisLocks:
    """Locks as Redis keys with a TTL, renewed every third of it while held, released by compare-and-delete."""

    name = "redis"

    def __init__(self, url: str, password: str | None, ttl_s: float) -> None:
        import redis.asyncio as aioredis  # only when [cluster] redis_url is set

        self._errors: tuple[type[BaseException], ...] = (aioredis.RedisError, OSError)
        self.ttl_ms = round(ttl_s * 1000)
        self._client = aioredis.from_url(
            url,
            password=password,
            socket_connect_timeout=min(ttl_s / 3, 5.0),
            socket_timeout=min(ttl_s / 3, 5.0),
        )
        self._acquire = self._client.register_script(ACQUIRE)
        self._renew = self._client.register_script(RENEW)
        self._release = self._client.register_script(RELEASE)
        self._owner = uuid.uuid4().hex  # this process
        self._renewals: dict[str, asyncio.Task[None]] = {}
        self._waiters = Waiters()
        self._listener: asyncio.Task[None] | None = None

    async def acquire(self, key: str) -> Grant:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="botkit-cluster-lock-releases")

        async def attempt() -> Grant | None:
            try:
                token = await self._acquire(keys=[PREFIX + key, FENCE_KEY], args=[self._owner, self.ttl_ms])
            except self._errors as error:
                raise LockStoreDown(type(error).__name__) from error
            if not token:
                return None
            return Grant(self.name, int(token), f"{self._owner}:{int(token)}")

        grant = await wait_turn(attempt, key, self._waiters)
        self._renewals[key] = asyncio.create_task(self._keep(key, grant), name="botkit-cluster-lock-renewal")
        return grant

    async def holds(self, key: str, grant: Grant) -> bool:
        try:
            value = await self._client.get(PREFIX + key)
        except self._errors:
            return False  # cannot tell: not safe to act as the holder
        return value is not None and value.decode() == grant.value

    async def release(self, key: str, grant: Grant) -> None:
        renewal = self._renewals.pop(key, None)
        if renewal is not None:
            renewal.cancel()
        try:
            await self._release(keys=[PREFIX + key], args=[grant.value, RELEASED_CHANNEL])
        except self._errors as error:
            # It expires after lock_ttl_s: the next holder waits at most that long.
            log.warning("cluster: cannot release a conversation lock in Redis (%s)", type(error).__name__)

    async def close(self) -> None:
        tasks = [*self._renewals.values(), *([self._listener] if self._listener else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._renewals.clear()
        await self._client.aclose()

    async def _keep(self, key: str, grant: Grant) -> None:
        """Renew the lock every third of its TTL; stop (and say so) when it is someone else's."""
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                renewed = await self._renew(keys=[PREFIX + key], args=[grant.value, self.ttl_ms])
            except self._errors as error:
                log.warning("cluster: cannot renew a conversation lock in Redis (%s)", type(error).__name__)
                continue
            if not renewed:
                log.warning("cluster: a conversation lock expired while held (token %s)", grant.token)
                return

    async def _listen(self) -> None:
        """Wake local waiters when any replica announces a release; reconnects while Redis is away."""
        delay = FIRST_POLL
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(RELEASED_CHANNEL)
                delay = FIRST_POLL
                async for notice in pubsub.listen():
                    channel_key = notice["data"].decode()
                    self._waiters.wake(channel_key.removeprefix(PREFIX))
            except self._errors:
                pass  # waiters poll meanwhile
            finally:
                await pubsub.aclose()
            await asyncio.sleep(delay)  # Redis is away: try again later, backing off
            delay = min(delay * 2, REDIS_RETRY_S)


def advisory_key(key: str) -> int:
    """A conversation key as PostgreSQL's signed 64-bit advisory lock key."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


class AdvisoryLocks:
    """PostgreSQL session advisory locks, every one on this process's single dedicated connection.

    One connection per process, outside the pool (``[storage] pool_size`` is
    untouched), whatever the number of conversations being answered; waiting
    is ``pg_try_advisory_lock`` polling with backoff. The session ending (a
    crash, a lost connection) frees every lock it held; a lease then finds its
    lock gone (``holds``).
    """

    name = "postgresql"

    def __init__(self, db: Database) -> None:
        self._db = db
        self._engine: AsyncEngine | None = None
        self._connection: AsyncConnection | None = None
        self._session = 0  # grows with each new connection: a grant names the one it was taken on
        self._use = asyncio.Lock()  # one statement at a time on the connection

    async def acquire(self, key: str) -> Grant:
        number = advisory_key(key)

        async def attempt() -> Grant | None:
            taken = await self._run("SELECT pg_try_advisory_lock(:key)", number)
            return Grant(self.name, None, str(self._session)) if taken else None

        return await wait_turn(attempt, key, None)

    async def holds(self, key: str, grant: Grant) -> bool:
        if grant.value != str(self._session):
            return False
        try:
            return bool(
                await self._run(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND pid = pg_backend_pid() AND ((classid::bigint << 32) | objid::bigint) = :key)",
                    advisory_key(key),
                )
            )
        except LockStoreDown:
            return False

    async def release(self, key: str, grant: Grant) -> None:
        if grant.value != str(self._session):
            return  # that session ended, and its locks with it
        try:
            await self._run("SELECT pg_advisory_unlock(:key)", advisory_key(key))
        except LockStoreDown as error:
            log.warning("cluster: cannot release a PostgreSQL advisory lock (%s)", error)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def _run(self, sql: str, key: int) -> Any:
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        async with self._use:
            try:
                if self._connection is None:
                    self._connection = await self._connect()
                    self._session += 1
                result = await self._connection.execute(text(sql), {"key": key})
                value = result.scalar()
                await self._connection.commit()  # session locks outlive transactions; end each one
                return value
            except (SQLAlchemyError, OSError) as error:
                connection, self._connection = self._connection, None
                if connection is not None:
                    await asyncio.gather(connection.close(), return_exceptions=True)
                raise LockStoreDown(type(error).__name__) from error

    async def _connect(self) -> AsyncConnection:
        from sqlalchemy.ext.asyncio import create_async_engine
        from sqlalchemy.pool import NullPool

        if self._engine is None:
            self._engine = create_async_engine(
                self._db.url,
                poolclass=NullPool,
                hide_parameters=True,
                connect_args={"timeout": self._db.settings.connect_timeout},
            )
        return await self._engine.connect()


class Lease:
    """This process's hold on one conversation's cross-replica lock, from ``ClusterLocks.acquire``."""

    def __init__(self, locks: ClusterLocks, key: str, store: LockStore, grant: Grant) -> None:
        self._locks = locks
        self.key = key
        self._store = store
        self._grant = grant

    @property
    def store(self) -> str:
        """Which store granted it: "redis" or "postgresql"."""
        return self._grant.store

    @property
    def token(self) -> int | None:
        """The fencing token: larger than every earlier grant's (Redis); None on PostgreSQL."""
        return self._grant.token

    async def confirm(self) -> bool:
        """Whether the lock is still this holder's (it may have expired, or its session ended)."""
        return await self._store.holds(self.key, self._grant)

    async def regain(self) -> bool:
        """Wait for the lock again (after ``confirm`` found it lost); the lease then holds the new grant.

        False when no store can grant one now (the lanes still order this process)."""
        await self._store.release(self.key, self._grant)
        granted = await self._locks.grant(self.key)
        if granted is None:
            return False
        self._store, self._grant = granted
        return True

    async def release(self) -> None:
        await self._store.release(self.key, self._grant)


class ClusterLocks:
    """The conversation locks of one bot when ``[cluster] enabled``: Redis when configured, PostgreSQL
    advisory locks when it is down or not configured; none when not enabled (one process: the lanes)."""

    def __init__(self, settings: ClusterSettings, db: Database, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self._db = db
        self._redis: RedisLocks | None = None
        if settings.enabled and db.is_sqlite and settings.redis_url is None:
            raise ConfigError(
                "[cluster] enabled: several replicas need a lock they all reach: set [cluster] redis_url "
                "(replicas on one machine sharing the SQLite file), or [storage] url to PostgreSQL"
            )
        if settings.redis_url is not None and not settings.enabled:
            log.warning("cluster: [cluster] redis_url is set but enabled is false: one process, Redis unused")
        self._postgres = AdvisoryLocks(db) if settings.enabled and not db.is_sqlite else None
        self._redis_down_since: float | None = None
        metrics = metrics or Metrics()
        self._wait = metrics.histogram(
            "botkit_conversation_lock_wait_seconds",
            "Time a message waited for its conversation's cross-replica lock.",
            ("store",),
        )
        self._fallbacks = metrics.counter(
            "botkit_cluster_lock_fallbacks_total",
            "Conversation locks taken in PostgreSQL (or in-process) because Redis was unreachable.",
        )

    @property
    def active(self) -> bool:
        """Whether a message takes a cross-replica lock (``[cluster] enabled``)."""
        return self._settings.enabled

    async def acquire(self, key: str) -> Lease | None:
        """Wait for ``key``'s lock; None when no store can give one now (the lanes still order this process)."""
        if not self.active:
            return None
        started = time.perf_counter()
        granted = await self.grant(key)
        if granted is None:
            return None
        store, grant = granted
        self._wait.labels(store=grant.store).observe(time.perf_counter() - started)
        return Lease(self, key, store, grant)

    async def grant(self, key: str) -> tuple[LockStore, Grant] | None:
        redis = self._redis_store()
        if redis is not None and self._redis_worth_trying():
            try:
                grant = await redis.acquire(key)
            except LockStoreDown as error:
                self._redis_failed(error)
            else:
                if self._redis_down_since is not None:
                    log.warning("cluster: Redis is back; conversation locks are taken there again")
                    self._redis_down_since = None
                return redis, grant
        if redis is not None:
            self._fallbacks.inc()
        if self._postgres is None:
            return None
        try:
            return self._postgres, await self._postgres.acquire(key)
        except LockStoreDown as error:
            log.warning(
                "cluster: cannot take a PostgreSQL advisory lock (%s); this message is ordered in this "
                "process only",
                error,
            )
            return None

    async def close(self) -> None:
        for store in (self._redis, self._postgres):
            if store is not None:
                await store.close()

    def _redis_store(self) -> RedisLocks | None:
        if self._redis is None and self._settings.redis_url is not None:
            password = self._settings.redis_password
            self._redis = RedisLocks(
                self._settings.redis_url,
                password.get_secret_value() if password is not None else None,
                self._settings.lock_ttl_s,
            )
        return self._redis

    def _redis_worth_trying(self) -> bool:
        down = self._redis_down_since
        return down is None or time.monotonic() - down >= REDIS_RETRY_S

    def _redis_failed(self, error: LockStoreDown) -> None:
        if self._redis_down_since is None:
            log.warning(
                "cluster: Redis ([cluster] redis_url) is unreachable (%s); conversation locks fall back to %s "
                "until it is back",
                error,
                "PostgreSQL advisory locks" if self._postgres is not None else "this process's lanes only",
            )
        self._redis_down_since = time.monotonic()


__all__ = ["ClusterLocks", "Grant", "Lease", "LockStoreDown", "advisory_key"]
