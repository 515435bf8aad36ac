"""The running bot: settings, loaded plugins, the backend and its queue, the pipeline."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel

from botkit import __version__
from botkit.adapter import Adapter, AdapterSettings
from botkit.api import BotStatus, PluginState
from botkit.backend import Backend, BackendSettings
from botkit.backend_set import (
    DEFAULT,
    BackendSlot,
    build_backends,
    check_override_backends,
    check_override_loras,
    close_backends,
    raw_tables,
    start_backends,
    validate_backend,
)
from botkit.canary import PROMOTED, Canaries, CanaryPlan, report_lines
from botkit.cluster import ClusterLocks
from botkit.commands import Command
from botkit.deliveries import DeliveryClaims
from botkit.errors import ConfigError, LoraError
from botkit.generation import GenerationQueue
from botkit.hookcall import call_all, call_plugin, each_result, first_result
from botkit.metrics import MessageMetrics, Metrics, bot_state_families, open_metrics
from botkit.pipeline import Pipeline
from botkit.plugin_host import PluginHost, read_stored_switches
from botkit.registry import Registry
from botkit.settings import Settings, load_settings, masked_dump, validate_table
from botkit.storage import Database, Migrator
from botkit.storage.database import BOT_APPLICATION_NAME
from botkit.types import Message, MessageChange, Reaction, Responder, User

log = logging.getLogger("botkit")


class Bot:
    """One bot process. Build it with ``Bot.load``, then ``await start()`` / ``await stop()``."""

    def __init__(self, settings: Settings, host: PluginHost) -> None:
        self.host = host
        host.settings = settings
        self.backends = build_backends(self.registry, settings)
        self.db = Database(settings.storage)
        self.canaries = Canaries(self.db)
        self.migrator = Migrator(self.db, list(self.registry.migrations.values()))
        self.metrics: Metrics = open_metrics(settings.metrics, __version__)
        # Read once: which store a replica locks in is fixed for the process (a reload keeps it).
        self.locks = ClusterLocks(settings.cluster, self.db, self.metrics)
        self.pipeline = Pipeline(
            settings=lambda: self.settings,
            hook=self.host.hook,
            registry=self.registry,
            backends=self.backends,
            is_admin=self.is_admin,
            bot=self,
            metrics=MessageMetrics(self.metrics, settings.metrics.per_channel),
            canaries=self.canaries,
            locks=self.locks if self.locks.active else None,
        )
        self.deliveries = DeliveryClaims(self.db, self.metrics)
        self.state = PluginState()
        self.adapters: dict[str, Adapter] = {}  # those made (``make_adapter``), by name
        host.bind(self.db, self)
        self.metrics.add_collector(lambda: bot_state_families(self))
        self.started = False
        self._started_at = time.monotonic()

    @classmethod
    def load(cls, settings: Settings, extra_plugins: dict[str, object] | None = None) -> Bot:
        """Load the plugins that ``settings`` selects (plus ``extra_plugins``) and build the bot."""
        host = PluginHost(settings)
        host.load(extra_plugins)
        return cls(settings, host)

    @property
    def settings(self) -> Settings:
        """The current settings; one holder (the plugin host's), replaced as a whole by a reload."""
        return self.host.settings

    @property
    def hook(self) -> Any:
        return self.host.hook

    @property
    def registry(self) -> Registry:
        return self.host.registry

    def plugin_settings(self, name: str) -> BaseModel:
        """The validated ``[plugins.<name>]`` settings of a plugin that registered a model."""
        return self.host.plugin_settings[name]

    @property
    def plugins(self) -> PluginHost:
        """The loaded plugins, and switching them at run time (``botkit.api.PluginSwitches``)."""
        return self.host

    @property
    def commands(self) -> Mapping[str, Command]:
        """The chat commands of the plugins that are on, by name (read-only)."""
        return MappingProxyType(self.registry.commands)

    @property
    def default_backend(self) -> BackendSlot:
        """The ``[backend]`` table's backend: it answers wherever no override names another."""
        return self.backends[DEFAULT]

    @property
    def backend(self) -> Backend:
        return self.default_backend.backend

    @property
    def backend_settings(self) -> BackendSettings:
        return self.default_backend.settings

    @property
    def backend_name(self) -> str:
        """The default backend's type (``llamacpp``, ``openai``...)."""
        return self.default_backend.type_name

    @property
    def queue(self) -> GenerationQueue:
        return self.default_backend.queue

    async def switch_lora(self, backend: str, lora: str | None) -> str:
        """Make ``lora`` (a name, a path, or None for none) the active LoRA adapter of ``backend``."""
        slot = self.backends.get(backend)
        if slot is None:
            raise LoraError(f"no backend {backend!r}; configured: {', '.join(sorted(self.backends))}")
        return await slot.backend.switch_lora(lora)

    async def start_canary(self, backend: str, lora: str, share: float) -> CanaryPlan:
        """Answer ``share`` percent of ``backend``'s conversations with LoRA adapter ``lora`` (``botkit.canary``)."""
        slot = self.backends.get(backend)
        if slot is None:
            raise ConfigError(f"no backend {backend!r}; configured: {', '.join(self.backends)}")
        return await self.canaries.start(slot, lora, share)

    async def end_canary(self, backend: str, outcome: str, reason: str) -> str:
        """End ``backend``'s canary: ``PROMOTED`` makes its adapter everyone's, ``ROLLED_BACK`` the control's.

        Takes effect from the next message, without a restart; a line for the admin.
        """
        plan = await self.canaries.end(backend, outcome, reason)
        if outcome == PROMOTED:
            await self.switch_lora(backend, plan.canary_lora)
            return f"{plan.describe()}: promoted, everyone gets LoRA adapter {plan.canary_lora!r} now"
        control = plan.control_lora or "the base model"
        return f"{plan.describe()}: rolled back ({reason}), everyone gets {control} now"

    async def canary_report(self) -> list[str]:
        """The running canaries (read again from the database) and each arm's results, as lines."""
        notes = await self.refresh_canaries()
        lines = [f"ended since: {note}" for note in notes]
        for plan in self.canaries.plans:
            lines.extend(report_lines(await self.canaries.results(plan)))
        return lines or ["no canary is running"]

    async def refresh_canaries(self) -> list[str]:
        """Take the canaries another replica or the CLI started or ended; a line for each one ended."""
        notes = []
        for plan, outcome in await self.canaries.refresh():
            if outcome == PROMOTED:
                await self.switch_lora(plan.backend, plan.canary_lora)
            notes.append(f"{plan.describe()}: {outcome or 'ended'}")
        return notes

    async def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` by the default backend's tokenizer."""
        return await self.backend.count_text(text)

    def status(self) -> BotStatus:
        """What the bot is doing now: its backends and queues, conversations, plugins, database."""
        plugins = self.host.infos
        return BotStatus(
            backends=tuple(slot.status() for slot in self.backends.values()),
            conversations=len(self.pipeline.lanes),
            plugins_on=sum(1 for name in plugins if self.host.is_on(name)),
            plugins_total=len(plugins),
            database=self.db.display_url,
            uptime_s=time.monotonic() - self._started_at,
        )

    def adapter_settings(self, name: str) -> AdapterSettings:
        adapter_type = self.registry.adapters.get(name)
        if adapter_type is None:
            available = ", ".join(sorted(self.registry.adapters)) or "none"
            raise ConfigError(f"no adapter {name!r} is loaded; available: {available}")
        raw = self.settings.adapters.get(name, {})
        settings = validate_table(adapter_type.settings_model, raw, self.settings, ("adapters", name))
        assert isinstance(settings, AdapterSettings)
        return settings

    def make_adapter(self, name: str) -> Adapter:
        adapter = self.registry.adapters[name].factory(self, self.adapter_settings(name))
        self.adapters[name] = adapter
        self.host.running_adapters.add(name)  # `/plugins` tells the adapters that run from the rest
        return adapter

    def enabled_adapters(self) -> list[str]:
        return [name for name in sorted(self.registry.adapters) if self.adapter_settings(name).enabled]

    def effective_config(self) -> dict[str, Any]:
        """Everything the bot runs with, secrets masked."""
        settings = self.settings
        plugin_tables: dict[str, Any] = {}
        for name, info in sorted(self.host.infos.items()):
            table: dict[str, Any] = {"enabled": info.enabled}
            if name in self.host.plugin_settings:
                table.update(masked_dump(self.host.plugin_settings[name]))
            plugin_tables[name] = table
        return {
            "bot": masked_dump(settings.bot),
            "logging": masked_dump(settings.logging),
            "metrics": masked_dump(settings.metrics),
            "storage": masked_dump(settings.storage),
            "backend": masked_dump(self.backend_settings),
            "backends": {
                name: masked_dump(slot.settings) for name, slot in self.backends.items() if name != DEFAULT
            },
            "overrides": {
                place: override.model_dump(mode="json", exclude_none=True)
                for place, override in self.settings.overrides.items()
            },
            "adapters": {
                name: masked_dump(self.adapter_settings(name)) for name in sorted(self.registry.adapters)
            },
            "plugins": {
                "on_error": settings.plugins.on_error,
                "directory": str(settings.plugins.directory) if settings.plugins.directory else None,
                **plugin_tables,
            },
        }

    @property
    def clustered(self) -> bool:
        """Whether other replicas may answer this bot's conversations too (``botkit.cluster``)."""
        return self.locks.active

    async def start(self) -> None:
        """Open the database (upgrading or checking its schema), load the model, run start-up hooks."""
        await self.db.connect(application_name=BOT_APPLICATION_NAME)  # `botkit db upgrade` sees it
        try:
            await self.migrator.ensure_current(self.settings.storage.auto_upgrade)
            self.host.apply_stored_switches(await read_stored_switches(self.db))
            await self.canaries.refresh()  # before any message: a conversation keeps its arm across restarts
            await start_backends(self.backends)
        except BaseException:
            await self.db.close()
            raise
        try:
            check_override_loras(self.settings, self.backends)
        except ConfigError:
            await close_backends(self.backends)
            await self.db.close()
            raise
        self.metrics.start()
        await call_all(self.hook.botkit_startup, bot=self)
        self.started = True
        self._started_at = time.monotonic()
        for slot in self.backends.values():
            log.info("backend %s started: %s, model %s", slot.name, slot.type_name, slot.backend.model_name)

    async def stop(self) -> None:
        """Stop every generation, wait for in-flight messages, run the shutdown hooks."""
        if not self.started:
            return
        self.started = False
        await self.pipeline.stop_and_drain()
        await call_all(self.hook.botkit_shutdown, bot=self)
        await self.locks.close()
        await close_backends(self.backends)
        await self.deliveries.close()
        await self.db.close()
        self.metrics.stop()

    async def handle(self, message: Message, responder: Responder) -> None:
        """Answer one incoming message; adapters call this."""
        await self.pipeline.handle(message, responder)

    async def forget_user(self, platform: str, user_id: str) -> bool:
        """Ask every plugin to let go of a user (``botkit_forget_user``) before their rows are deleted.

        False when a plugin cannot do its part now (its pending writes cannot
        reach the database): the deletion must be put off.
        """
        async for plugin, done in each_result(
            self.hook.botkit_forget_user, platform=platform, user_id=user_id, bot=self
        ):
            if done is False:
                log.warning("forgetting %s:%s put off: plugin %r cannot do its part now", platform, user_id, plugin)
                return False
        return True

    async def react(self, reaction: Reaction) -> None:
        """Hand a reaction the adapter saw to the plugins (``botkit_reaction``)."""
        await call_all(self.hook.botkit_reaction, reaction=reaction, bot=self)

    async def message_changed(self, change: MessageChange) -> None:
        """Hand an edit or deletion the adapter saw to the plugins (``botkit_message_changed``)."""
        await call_all(self.hook.botkit_message_changed, change=change, bot=self)

    async def first_delivery(self, platform: str, delivery_id: str) -> bool:
        """True the first time any replica sees this delivery; False for a platform's redelivery.

        Claimed in the database (``seen_deliveries``); when it cannot answer, True (see ``DeliveryClaims``).
        """
        return await self.deliveries.first(platform, delivery_id)

    async def is_admin(self, user: User, message: Message | None = None) -> bool:
        """Whether ``user`` is an admin: the ``botkit_is_admin`` hook, else ``[bot] admins``."""
        decided = await first_result(self.hook.botkit_is_admin, user=user, message=message, bot=self)
        if decided is not None:
            return bool(decided)
        # Config entries are "platform:user_id"; without a message the platform is unknown.
        return message is not None and f"{message.platform}:{user.id}" in self.settings.bot.admins

    async def reload_settings(self) -> list[str]:
        """Read the config file again and apply it without restarting or reloading the model.

        Returns notes for the admin. Raises ``ConfigError`` (nothing applied) when
        the new config is invalid. Plugins whose settings changed are restarted
        (their shutdown, then startup hooks). Backend keys that need the model
        reloaded, and plugin switches, wait for a restart.
        """
        new = load_settings(self.settings.source_path)
        self.host.check_tables(new)  # [finetune] and other plugins' top-level tables
        notes: list[str] = []
        backend_settings, lora_changes = self._reload_backends(new, notes)
        plugin_settings = {
            name: validate_table(
                model,
                {k: v for k, v in new.plugins.tables().get(name, {}).items() if k != "enabled"},
                new,
                ("plugins", name),
            )
            for name, model in self.registry.settings_models.items()
        }
        if new.storage != self.settings.storage:
            notes.append("[storage] changed: it applies after a restart")
            new.storage = self.settings.storage
        if new.logging != self.settings.logging:
            notes.append("[logging] changed: it applies after a restart")
        if new.bot.control_socket != self.settings.bot.control_socket:
            notes.append("[bot] control_socket changed: it applies after a restart")
        if new.metrics != self.settings.metrics:
            notes.append("[metrics] changed: it applies after a restart")
            new.metrics = self.settings.metrics
        if {n: t.get("enabled", True) for n, t in new.plugins.tables().items()} != {
            n: t.get("enabled", True) for n, t in self.settings.plugins.tables().items()
        }:
            notes.append("plugin switches in config apply after a restart (/enable and /disable act now)")
        restart = [
            name for name, value in plugin_settings.items() if value != self.host.plugin_settings.get(name)
        ]
        self.host.settings = new
        for name, settings in backend_settings.items():
            slot = self.backends[name]
            slot.backend.settings = settings
            slot.queue.limit = settings.queue_limit
        for name in lora_changes:
            notes.append(await self._reload_lora(name))
        for name in restart:
            owner = self.registry.owner("settings", name) or name
            running = self.host.pm.get_plugin(owner) is not None
            if running:
                await call_plugin(self.hook.botkit_shutdown, owner, bot=self)
            self.host.plugin_settings[name] = plugin_settings[name]
            if running:
                await call_plugin(self.hook.botkit_startup, owner, bot=self)
        notes.append(
            "reloaded "
            + (f"{new.source_name}; restarted: {', '.join(restart)}" if restart else new.source_name)
        )
        return notes

    def _reload_backends(
        self, new: Settings, notes: list[str]
    ) -> tuple[dict[str, BackendSettings], list[str]]:
        """Validate the new backend tables: the settings to apply, and which backends change LoRA adapter."""
        tables = raw_tables(new)
        if set(tables) != set(self.backends):
            notes.append("backends added to or removed from the config apply after a restart")
        check_override_backends(new, self.backends)
        check_override_loras(new, self.backends)
        applied: dict[str, BackendSettings] = {}
        lora_changes: list[str] = []
        for name, slot in self.backends.items():
            if name not in tables:
                continue
            type_name, settings = validate_backend(self.registry, new, name, tables[name])
            if type_name != slot.type_name:
                raise ConfigError(f"[{slot.table}] type: switching to {type_name!r} needs a restart")
            fields = type(settings).model_fields
            # A LoRA adapter is switched in place; every other engine key needs the model reloaded.
            lora_keys = {"lora_path", "lora_scale"} & set(fields)
            reload_keys = (set(fields) - set(BackendSettings.model_fields) - lora_keys) | {"prompt_format", "alpaca_variant"}
            changed = sorted(k for k in reload_keys if getattr(settings, k) != getattr(slot.settings, k))
            if changed:
                notes.append(f"[{slot.table}] {', '.join(changed)} changed: they apply after a restart")
                settings = settings.model_copy(update={k: getattr(slot.settings, k) for k in changed})
            if any(getattr(settings, k) != getattr(slot.settings, k) for k in lora_keys):
                lora_changes.append(name)
            applied[name] = settings
        return applied, lora_changes

    async def _reload_lora(self, name: str) -> str:
        slot = self.backends[name]
        path = getattr(slot.settings, "lora_path", None)
        try:
            return await slot.backend.switch_lora(str(path) if path is not None else None)
        except LoraError as error:
            return f"[{slot.table}] lora_path not applied, the LoRA adapter in use stays: {error}"

    def stop_generations(self, message: Message) -> int:
        """Stop the generations of ``message``'s author in its conversation. Returns how many."""
        return self.pipeline.stop_generations(message)
