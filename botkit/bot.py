"""The running bot: settings, loaded plugins, the backend and its queue, the pipeline."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

from botkit.adapter import Adapter, AdapterSettings
from botkit.backend import Backend, BackendSettings
from botkit.errors import ConfigError
from botkit.generation import GenerationQueue
from botkit.hookcall import call_all, first_result
from botkit.pipeline import Pipeline
from botkit.plugin_host import PluginHost
from botkit.registry import Registry
from botkit.settings import Settings, validate_table
from botkit.storage import Database, Migrator
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
            available = ", ".join(sorted(self.registry.backends)) or "none (are the backend plugins disabled?)"
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

    async def start(self) -> None:
        """Open the database (upgrading or checking its schema), load the model, run start-up hooks."""
        await self.db.connect()
        try:
            await self.migrator.ensure_current(self.settings.storage.auto_upgrade)
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

    def stop_generations(self, message: Message) -> int:
        """Stop the generations of ``message``'s author in its conversation. Returns how many."""
        return self.queue.cancel(self.generation_owner(message))
