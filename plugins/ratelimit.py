"""Rate limits on the ``limits`` library: per user, per channel, global, role tiers, a daily token budget.

Limits are counted in memory by default, or in Redis (``storage = "redis://..."``)
so that several bot processes share them. They apply to every message,
commands included; admins are exempt unless configured otherwise. A limited
user is told once per window when to try again; further messages in that
window are dropped silently.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

from limits import RateLimitItem, RateLimitItemPerDay, parse
from limits.aio.storage import Storage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from botkit import Message, Metrics, Refuse, StateKey, hookimpl

log = logging.getLogger("botkit.plugins.ratelimit")

NAME = "ratelimit"
EXAMPLE = "e.g. '5/minute', '100/day' or '1 per 10 seconds'"

STRATEGIES: dict[str, type[RateLimiter]] = {
    "fixed-window": FixedWindowRateLimiter,
    "moving-window": MovingWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
}


def parse_limit(value: str) -> RateLimitItem:
    try:
        return parse(value)
    except ValueError:
        raise ValueError(f"must be 'N/period', {EXAMPLE}") from None


class RateLimitSettings(BaseModel):
    """``[plugins.ratelimit]``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    per_user: str | None = Field(
        None, description="messages one user may send, e.g. '10/minute'; unset: no limit"
    )
    per_channel: str | None = Field(
        None, description="messages one channel (or DM) may send, e.g. '60/minute'"
    )
    global_: str | None = Field(None, alias="global", description="messages the whole bot accepts")
    tiers: dict[str, str] = Field(
        default_factory=dict, description="role -> per-user limit; a user gets their most generous tier"
    )
    tokens_per_day: int | None = Field(
        None, ge=1, description="prompt + reply tokens one user may use per day"
    )
    exempt_admins: bool = Field(True, description="admins are never limited")
    strategy: Literal["fixed-window", "moving-window", "sliding-window-counter"] = "sliding-window-counter"
    storage: str = Field(
        "memory://", description="'memory://' or 'redis://HOST:PORT/DB' (shared by processes)"
    )
    password: SecretStr | None = Field(None, description="Redis password (environment only)")

    @field_validator("per_user", "per_channel", "global_")
    @classmethod
    def _limit(cls, value: str | None) -> str | None:
        if value is not None:
            parse_limit(value)
        return value

    @field_validator("tiers")
    @classmethod
    def _tiers(cls, value: dict[str, str]) -> dict[str, str]:
        for role, limit in value.items():
            try:
                parse_limit(limit)
            except ValueError:
                raise ValueError(f"tier {role!r}: must be 'N/period', {EXAMPLE}") from None
        return value

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str) -> str:
        scheme = value.split("://", 1)[0]
        if scheme not in ("memory", "redis", "rediss"):
            raise ValueError("must be 'memory://' or 'redis://HOST:PORT/DB'")
        if "@" in value:
            raise ValueError("put the Redis password in BOTKIT_PLUGINS__RATELIMIT__PASSWORD, not in the URL")
        return value


def per_second(item: RateLimitItem) -> float:
    return item.amount / item.get_expiry()


@dataclass(frozen=True, slots=True)
class Check:
    scope: str  # "global", "channel", "user"
    key: str
    item: RateLimitItem


NOTICES = {
    "user": "You're sending messages faster than I can take them. Please try again in {wait}.",
    "channel": "This channel is sending me more messages than I can take. Please try again in {wait}.",
    "global": "I'm getting more messages than I can take right now. Please try again in {wait}.",
    "tokens": "You've used today's budget of {amount:,} tokens. It renews in {wait}.",
}


def describe_wait(seconds: float) -> str:
    seconds = max(1, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


class Limiter:
    """The configured limits over one storage."""

    def __init__(self, settings: RateLimitSettings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self._refusals = (metrics or Metrics()).counter(
            "botkit_ratelimit_refusals_total",
            "Messages refused by a rate limit, by the limit's scope (user, channel, global, tokens).",
            ("scope",),
        )
        from botkit.ops import limits_storage  # late: botkit.ops imports the bot, which loads this plugin

        password = settings.password.get_secret_value() if settings.password is not None else None
        self.storage: Storage = limits_storage(settings.storage, password)
        self.limiter = STRATEGIES[settings.strategy](self.storage)
        self.budget = FixedWindowRateLimiter(self.storage)
        self.per_user = parse(settings.per_user) if settings.per_user else None
        self.per_channel = parse(settings.per_channel) if settings.per_channel else None
        self.global_ = parse(settings.global_) if settings.global_ else None
        self.tiers = {role: parse(limit) for role, limit in settings.tiers.items()}
        self.tokens = RateLimitItemPerDay(settings.tokens_per_day) if settings.tokens_per_day else None

    def user_limit(self, message: Message) -> RateLimitItem | None:
        tiers = [self.tiers[role] for role in message.author.roles if role in self.tiers]
        if tiers:
            return max(tiers, key=per_second)
        return self.per_user

    def checks(self, message: Message) -> list[Check]:
        channel = (
            f"{message.platform}:dm:{message.author.id}"
            if message.is_dm
            else f"{message.platform}:{message.channel_id}"
        )
        candidates = [
            ("global", "all", self.global_),
            ("channel", channel, self.per_channel),
            ("user", message.user_key, self.user_limit(message)),
        ]
        return [Check(scope, key, item) for scope, key, item in candidates if item is not None]

    async def admit(self, message: Message) -> Refuse | None:
        """``None`` when the message may pass, else a refusal (with a notice once per window)."""
        for check in self.checks(message):
            if not await self.limiter.hit(check.item, "botkit", check.scope, check.key):
                stats = await self.limiter.get_window_stats(check.item, "botkit", check.scope, check.key)
                return await self._refuse(check.scope, check.key, check.item, stats.reset_time)
        if self.tokens is not None:
            stats = await self.budget.get_window_stats(self.tokens, "botkit", "tokens", message.user_key)
            if stats.remaining <= 0:
                return await self._refuse("tokens", message.user_key, self.tokens, stats.reset_time)
        return None

    async def spend_tokens(self, message: Message, tokens: int) -> None:
        if self.tokens is None or tokens <= 0:
            return
        stats = await self.budget.get_window_stats(self.tokens, "botkit", "tokens", message.user_key)
        # A reply may cost more than what is left: take what is left, the budget is then spent.
        cost = min(tokens, stats.remaining)
        if cost > 0:
            await self.budget.hit(self.tokens, "botkit", "tokens", message.user_key, cost=cost)

    async def _refuse(self, scope: str, key: str, item: RateLimitItem, reset_time: float) -> Refuse:
        self._refusals.labels(scope=scope).inc()
        wait = max(reset_time - time.time(), 1.0)
        # One notice per window of the limit, counted in the same storage so replicas agree.
        notice_item = type(item)(1, item.multiples)
        first = await self.budget.hit(notice_item, "botkit", "notice", scope, key)
        text = NOTICES[scope].format(wait=describe_wait(wait), amount=item.amount) if first else None
        return Refuse(text, reason=f"rate limit: {scope} {key} over {item}")


LIMITER: StateKey[Limiter] = StateKey("ratelimit.limiter")


@hookimpl
def botkit_register_settings(register):
    register(NAME, RateLimitSettings)


@hookimpl
async def botkit_startup(bot):
    limiter = bot.state.set(LIMITER, Limiter(bot.plugin_settings(NAME), bot.metrics))
    if not await limiter.storage.check():
        log.error(
            "[plugins.ratelimit] storage %s cannot be reached; messages pass unlimited until it can",
            limiter.settings.storage,
        )


@hookimpl
async def botkit_gate(message: Message, bot) -> Refuse | None:
    limiter = bot.state.get(LIMITER)
    if limiter is None:
        return None
    if limiter.settings.exempt_admins and await bot.is_admin(message.author, message):
        return None
    try:
        return await limiter.admit(message)
    except Exception as error:  # noqa: BLE001 - a lost limit store must not silence the bot
        log.warning("rate limit store failed (%s); message let through", type(error).__name__)
        return None


@hookimpl
async def botkit_after_reply(message: Message, reply, bot) -> None:
    limiter = bot.state.get(LIMITER)
    if limiter is not None and not (
        limiter.settings.exempt_admins and await bot.is_admin(message.author, message)
    ):
        await limiter.spend_tokens(message, reply.prompt_tokens + reply.completion_tokens)


@hookimpl
def botkit_shutdown(bot) -> None:
    bot.state.pop(LIMITER)
