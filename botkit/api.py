"""The bot as plugins, adapters and command handlers see it: the ``BotAPI`` protocol and its values.

This is the front door. Hooks, adapter factories and command handlers receive
an object that satisfies ``BotAPI`` (the running ``botkit.bot.Bot``); what is
not on this protocol is internal and may change in any release. The module is
a leaf: it imports nothing of botkit at run time, so any module may import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from pydantic import BaseModel

    from botkit.backend import EngineLoad
    from botkit.commands import Command
    from botkit.metrics import Metrics
    from botkit.settings import Settings
    from botkit.storage import Database
    from botkit.types import Message, MessageChange, Reaction, Responder, User

T = TypeVar("T")


class StateKey(Generic[T]):
    """Names one value a plugin keeps per bot, e.g. ``STORE: StateKey[MemoryStore] = StateKey("memory.store")``.

    The key carries the value's type, so ``bot.state.get(STORE)`` is typed; the
    name appears in error messages. Keys compare by identity: two plugins can
    never overwrite each other's state by choosing the same name.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"StateKey({self.name!r})"


class PluginState:
    """What plugins keep for one bot (a store, a task, a limiter), by ``StateKey``.

    Each bot has its own, so two bots in one process (tests, embedding) never
    share a plugin's state, and it goes away with the bot.
    """

    def __init__(self) -> None:
        self._values: dict[StateKey[Any], Any] = {}

    def set(self, key: StateKey[T], value: T) -> T:
        self._values[key] = value
        return value

    def get(self, key: StateKey[T]) -> T | None:
        """The value, or None when it was never set (the plugin has not started) or was popped."""
        return self._values.get(key)

    def require(self, key: StateKey[T]) -> T:
        """The value; ``LookupError`` naming the key when there is none."""
        try:
            return self._values[key]
        except KeyError:
            raise LookupError(
                f"no plugin state {key.name!r} on this bot: the plugin that keeps it has not started "
                "(or was switched off)"
            ) from None

    def pop(self, key: StateKey[T]) -> T | None:
        return self._values.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._values


@dataclass(frozen=True, slots=True)
class PluginStatus:
    """One plugin as ``bot.plugins.list()`` shows it."""

    name: str
    origin: str  # "builtin", "entry point (dist x.y)", a file path, or "given"
    on: bool
    error: str | None  # why it failed to load, if it did
    note: str | None  # why it is off although config selects it (a plugin it needs is off)
    switched: bool  # an admin's stored switch decides, not config.toml
    fixed: str | None  # why it cannot be switched at run time, or None
    # For a plugin that provides adapters: the state of each ("console: running", "discord: off
    # ([adapters.discord] enabled = false)"); the plugin being on does not mean its adapter runs.
    adapters: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """One backend and its generation queue, as ``bot.status()`` shows it."""

    name: str  # "default" for [backend], else the [backends.<name>] name
    type: str
    model: str
    lora: str | None  # the active LoRA adapter, None for the base model
    loras: tuple[str, ...]  # LoRA adapters configured by name
    context_window: int
    generating: int
    waiting: int
    concurrency: int
    queue_limit: int
    engine: EngineLoad | None = None  # what its engine is doing, for a backend that reports it

    def describe(self) -> str:
        """One line for an admin: the model, what generates and waits, and the engine's load if known."""
        parts = [f"{self.name}: {self.type} {self.model}"]
        if self.lora:
            parts.append(f"LoRA adapter {self.lora}")
        engine = self.engine
        if engine is None:
            parts.append(f"{self.generating}/{self.concurrency} generating")
        else:
            parts.append(f"slots {engine.slots_in_use}/{engine.slots} in use")
        parts.append(f"{self.waiting} waiting (at most {self.queue_limit})")
        if engine is not None:
            parts.append(
                f"KV cache {engine.kv_cache_mb:.1f}/{engine.kv_cache_limit_mb:g} MB "
                f"({engine.kv_saved} saved, {engine.evictions} evicted)"
            )
            prompt_tokens = engine.reused_tokens + engine.evaluated_tokens
            if prompt_tokens:
                parts.append(f"prompt tokens reused {engine.reused_tokens / prompt_tokens:.0%}")
            else:
                parts.append("no prompt evaluated yet")
        parts.append(f"context {self.context_window:,} tokens")
        return " · ".join(parts)


@dataclass(frozen=True, slots=True)
class BotStatus:
    """What a running bot is doing (``/status``, the control socket's ``status``)."""

    backends: tuple[BackendStatus, ...]
    conversations: int  # conversations with a message being handled now
    plugins_on: int
    plugins_total: int
    database: str  # the URL, password masked
    uptime_s: float


@runtime_checkable
class PluginSwitches(Protocol):
    """Switching plugins on and off at run time; an admin's switch is stored and survives restarts."""

    async def list(self) -> list[PluginStatus]:
        """Every plugin found, by name."""
        ...

    def is_on(self, name: str) -> bool:
        """Whether plugin ``name`` is loaded now (its hooks are called)."""
        ...

    async def enable(self, name: str) -> str:
        """Switch ``name`` on now and store the switch. Returns what happened, for an admin."""
        ...

    async def disable(self, name: str) -> str:
        """Switch ``name`` off now and store the switch. Returns what happened, for an admin."""
        ...

    async def clear(self, name: str) -> str:
        """Forget the stored switch of ``name``: config.toml decides again from the next start."""
        ...


@runtime_checkable
class BotAPI(Protocol):
    """Everything a plugin, an adapter or a command handler may use of the running bot."""

    @property
    def settings(self) -> Settings:
        """The current settings (config.toml plus ``BOTKIT_*``); replaced as a whole by a reload."""
        ...

    @property
    def db(self) -> Database:
        """The one database: ``async with bot.db.session()`` is a transaction."""
        ...

    @property
    def metrics(self) -> Metrics:
        """The bot's Prometheus metrics: ``counter``, ``gauge``, ``histogram`` (counting nothing while off)."""
        ...

    @property
    def state(self) -> PluginState:
        """Per-bot plugin state, by ``StateKey``."""
        ...

    @property
    def clustered(self) -> bool:
        """Whether other replicas may answer this bot's conversations too (Redis or PostgreSQL locks:
        ``botkit.cluster``); then what one process caches of a conversation may be stale."""
        ...

    @property
    def plugins(self) -> PluginSwitches:
        """The loaded plugins, and switching them at run time."""
        ...

    @property
    def commands(self) -> Mapping[str, Command]:
        """The chat commands of the plugins that are on, by name."""
        ...

    def plugin_settings(self, name: str) -> BaseModel:
        """The validated ``[plugins.<name>]`` settings of a plugin that registered a model."""
        ...

    async def is_admin(self, user: User, message: Message | None = None) -> bool:
        """Whether ``user`` is an admin: the ``botkit_is_admin`` hook, else ``[bot] admins``."""
        ...

    async def handle(self, message: Message, responder: Responder) -> None:
        """Answer one incoming message (adapters call this)."""
        ...

    async def react(self, reaction: Reaction) -> None:
        """Hand a reaction the adapter saw to the plugins (``botkit_reaction``)."""
        ...

    async def message_changed(self, change: MessageChange) -> None:
        """Hand an edit or deletion the adapter saw to the plugins (``botkit_message_changed``)."""
        ...

    async def first_delivery(self, platform: str, delivery_id: str) -> bool:
        """True the first time any replica sees this delivery (kept a day, in the database); False for a
        platform's redelivery. True too when the database cannot tell: an event is never lost."""
        ...

    def stop_generations(self, message: Message) -> int:
        """Stop the generations of ``message``'s author in its conversation. Returns how many."""
        ...

    async def forget_user(self, platform: str, user_id: str) -> bool:
        """Ask every plugin to let go of a user (``botkit_forget_user``); False: one cannot yet."""
        ...

    async def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` by the default backend's tokenizer."""
        ...

    async def switch_lora(self, backend: str, lora: str | None) -> str:
        """Make ``lora`` (a name, a path, or None for none) the active LoRA adapter of ``backend``."""
        ...

    async def start_canary(self, backend: str, lora: str, share: float) -> Any:
        """Answer ``share`` percent of ``backend``'s conversations, sticky per conversation, with LoRA adapter
        ``lora`` (a name from its ``loras``); the rest keep the active one. ``CanaryError`` says why not.
        Returns the ``botkit.canary.CanaryPlan``."""
        ...

    async def end_canary(self, backend: str, outcome: str, reason: str) -> str:
        """End ``backend``'s canary, ``"promoted"`` (everyone gets its adapter) or ``"rolled_back"``; a note."""
        ...

    async def canary_report(self) -> list[str]:
        """The running canaries (read again from the database) and each arm's results, as lines."""
        ...

    async def reload_settings(self) -> list[str]:
        """Re-read the config file and apply what can be applied without a restart; notes for an admin."""
        ...

    def effective_config(self) -> dict[str, Any]:
        """Everything the bot runs with, secrets masked."""
        ...

    def status(self) -> BotStatus:
        """What the bot is doing now."""
        ...
