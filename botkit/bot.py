"""The running bot: settings, loaded plugins, the backend and its queue, the pipeline."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

from botkit.adapter import Adapter, AdapterSettings
from botkit.backend import Backend, BackendSettings
from botkit.errors import ConfigError
from botkit.generation import GenerationQueue
from botkit.hookcall import call_all, call_plugin, first_result
from botkit.pipeline import Pipeline
from botkit.plugin_host import PluginHost
from botkit.registry import Registry
from botkit.settings import Settings, load_settings, masked_dump, validate_table
from botkit.storage import Database, Migrator
from botkit.switches import apply_overrides, read_overrides
from botkit.types import Message, Responder, User

log = logging.getLogger("botkit")


class Bot:
    """One bot process. Build it with ``Bot.load``, then ``await start()`` / ``await stop()``."""

    def __init__(self, settings: Settings, host: PluginHost) -> None:
        self.settings = settings
        self.host = host
        self.backend_name, self.backend_settings, self.backend = self._make_backend()
        self.queue = GenerationQueue(self.backend.concurrency, self.backend_settings.queue_limit)
        self.db = Database(settings.storage)
        self.migrator = Migrator(self.db, list(self.registry.migrations.values()))
        self.pipeline = Pipeline(self)
        self.started = False

    @classmethod
    def load(cls, settings: Settings, extra_plugins: dict[str, object] | None = None) -> Bot:
        """Load the plugins that ``settings`` selects (plus ``extra_plugins``) and build the bot."""
        host = PluginHost(settings)
        host.load(extra_plugins)
        return cls(settings, host)

    @property
    def hook(self) -> Any:
        return self.host.hook

    @property
    def registry(self) -> Registry:
        return self.host.registry

    def plugin_settings(self, name: str) -> BaseModel:
        """The validated ``[plugins.<name>]`` settings of a plugin that registered a model."""
        return self.host.plugin_settings[name]

    def _make_backend(self) -> tuple[str, BackendSettings, Backend]:
        raw = self.settings.backend
        type_name = raw.get("type", BackendSettings.model_fields["type"].default)
        backend_type = self.registry.backends.get(type_name)
        if backend_type is None:
            available = (
                ", ".join(sorted(self.registry.backends)) or "none (are the backend plugins disabled?)"
            )
            raise ConfigError(
                f"{self.settings.source_name}: [backend] type: no backend {type_name!r}; available: {available}"
            )
        settings = validate_table(backend_type.settings_model, raw, self.settings, ("backend",))
        assert isinstance(settings, BackendSettings)
        return type_name, settings, backend_type.factory(settings)

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
        return self.registry.adapters[name].factory(self, self.adapter_settings(name))

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
            "storage": masked_dump(settings.storage),
            "backend": masked_dump(self.backend_settings),
            "adapters": {
                name: masked_dump(self.adapter_settings(name)) for name in sorted(self.registry.adapters)
            },
            "plugins": {
                "on_error": settings.plugins.on_error,
                "directory": str(settings.plugins.directory) if settings.plugins.directory else None,
                **plugin_tables,
            },
        }

    async def start(self) -> None:
        """Open the database (upgrading or checking its schema), load the model, run start-up hooks."""
        await self.db.connect()
        try:
            await self.migrator.ensure_current(self.settings.storage.auto_upgrade)
            apply_overrides(self, await read_overrides(self.db))
            await self.backend.start()
        except BaseException:
            await self.db.close()
            raise
        await call_all(self.hook.botkit_startup, bot=self)
        self.started = True
        log.info("bot started: backend %s, model %s", self.backend_name, self.backend.model_name)

    async def stop(self) -> None:
        """Stop every generation, wait for in-flight messages, run the shutdown hooks."""
        if not self.started:
            return
        self.started = False
        self.queue.cancel_all()
        await self.pipeline.drain()
        await call_all(self.hook.botkit_shutdown, bot=self)
        await self.backend.close()
        await self.db.close()

    async def handle(self, message: Message, responder: Responder) -> None:
        """Answer one incoming message; adapters call this."""
        await self.pipeline.handle(message, responder)

    async def is_admin(self, user: User, message: Message | None = None) -> bool:
        """Whether ``user`` is an admin: the ``botkit_is_admin`` hook, else ``[bot] admins``."""
        decided = await first_result(self.hook.botkit_is_admin, user=user, message=message, bot=self)
        if decided is not None:
            return bool(decided)
        # Config entries are "platform:user_id"; without a message the platform is unknown.
        return message is not None and f"{message.platform}:{user.id}" in self.settings.bot.admins

    def generation_owner(self, message: Message) -> str:
        """Who may /stop the generation started by ``message``: its author, in its conversation."""
        scope = self.settings.bot.conversation_scope
        return f"{message.conversation_key(scope)}|{message.user_key}"

    async def reload_settings(self) -> list[str]:
        """Read the config file again and apply it without restarting or reloading the model.

        Returns notes for the admin. Raises ``ConfigError`` (nothing applied) when
        the new config is invalid. Plugins whose settings changed are restarted
        (their shutdown, then startup hooks). Backend keys that need the model
        reloaded, and plugin switches, wait for a restart.
        """
        new = load_settings(self.settings.source_path)
        type_name = new.backend.get("type", self.backend_name)
        notes: list[str] = []
        backend_type = self.registry.backends.get(type_name)
        if backend_type is None or type_name != self.backend_name:
            raise ConfigError(f"[backend] type: switching to {type_name!r} needs a restart")
        backend_settings = validate_table(backend_type.settings_model, new.backend, new, ("backend",))
        assert isinstance(backend_settings, BackendSettings)
        plugin_settings = {
            name: validate_table(
                model,
                {k: v for k, v in new.plugins.tables().get(name, {}).items() if k != "enabled"},
                new,
                ("plugins", name),
            )
            for name, model in self.registry.settings_models.items()
        }
        reload_keys = set(type(backend_settings).model_fields) - set(BackendSettings.model_fields) | {
            "prompt_format"
        }
        changed_model_keys = sorted(
            k for k in reload_keys if getattr(backend_settings, k) != getattr(self.backend_settings, k)
        )
        if changed_model_keys:
            notes.append(f"[backend] {', '.join(changed_model_keys)} changed: they apply after a restart")
            backend_settings = backend_settings.model_copy(
                update={k: getattr(self.backend_settings, k) for k in changed_model_keys}
            )
        if new.storage != self.settings.storage:
            notes.append("[storage] changed: it applies after a restart")
            new.storage = self.settings.storage
        if {n: t.get("enabled", True) for n, t in new.plugins.tables().items()} != {
            n: t.get("enabled", True) for n, t in self.settings.plugins.tables().items()
        }:
            notes.append("plugin switches in config apply after a restart (/enable and /disable act now)")
        restart = [
            name for name, value in plugin_settings.items() if value != self.host.plugin_settings.get(name)
        ]
        self.settings = self.host.settings = new
        self.backend_settings = self.backend.settings = backend_settings
        self.queue.limit = backend_settings.queue_limit
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

    def stop_generations(self, message: Message) -> int:
        """Stop the generations of ``message``'s author in its conversation. Returns how many."""
        return self.queue.cancel(self.generation_owner(message))
