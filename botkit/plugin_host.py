"""Loading and registering the plugins that discovery found (``botkit.plugin_discovery``); switching them.

A plugin switched by an admin at run time (``/enable``, ``/disable``, ``botkit
plugins enable|disable``) is stored in ``plugin_state`` (plugin ``botkit``, key
``enabled:NAME``) and beats ``[plugins.NAME] enabled`` in config until it is
cleared: ``apply_stored_switches`` applies the stored ones at start, before any
plugin has started.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy
from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError

from botkit import hookspecs
from botkit.api import PluginStatus
from botkit.errors import ConfigError, PluginLoadError
from botkit.hookcall import call_plugin
from botkit.plugin_discovery import PluginSource, deselected_reason, discover, selected_names
from botkit.registry import Registry
from botkit.settings import Settings, plugin_table, reject_unknown_tables, validate_table
from botkit.storage import Database, PluginStateRecord

if TYPE_CHECKING:
    from botkit.api import BotAPI

log = logging.getLogger("botkit.plugins")

_REGISTER_HOOKS = {
    "botkit_register_settings": "settings_registrar",
    "botkit_register_backends": "backend_registrar",
    "botkit_register_adapters": "adapter_registrar",
    "botkit_register_commands": "command_registrar",
    "botkit_register_migrations": "migrations_registrar",
    "botkit_register_plugin": "plugin_registrar",
    "botkit_register_probes": "probes_registrar",
}

# Where stored switches live in ``plugin_state``.
SWITCH_OWNER = "botkit"
SWITCH_PREFIX = "enabled:"


async def read_stored_switches(db: Database) -> dict[str, bool]:
    """Plugin name -> enabled, as stored by an admin; empty when the table does not exist yet."""
    try:
        async with db.sessions() as session:
            rows = await session.execute(
                select(PluginStateRecord.key, PluginStateRecord.value).where(
                    PluginStateRecord.plugin == SWITCH_OWNER
                )
            )
            return {
                key.removeprefix(SWITCH_PREFIX): bool(value)
                for key, value in rows
                if key.startswith(SWITCH_PREFIX)
            }
    except SQLAlchemyError:
        return {}


async def stored_switches_of(settings: Settings) -> dict[str, bool]:
    """The stored switches in the database of ``settings``, for a command that starts no bot.

    Empty when the SQLite file does not exist yet (it is not created just to look). Raises
    ``StorageError`` when the database cannot be reached.
    """
    db = Database(settings.storage)
    path = db.sqlite_path
    if path is not None and str(path) != ":memory:" and not path.exists():
        return {}
    await db.connect()
    try:
        return await read_stored_switches(db)
    finally:
        await db.close()


async def store_switch(db: Database, name: str, enabled: bool | None) -> None:
    """Store (or with ``None`` clear) the switch of plugin ``name``."""
    async with db.session() as session:
        await session.execute(
            delete(PluginStateRecord).where(
                PluginStateRecord.plugin == SWITCH_OWNER, PluginStateRecord.key == SWITCH_PREFIX + name
            )
        )
        if enabled is not None:
            session.add(PluginStateRecord(plugin=SWITCH_OWNER, key=SWITCH_PREFIX + name, value=enabled))


@dataclass
class PluginInfo:
    name: str
    origin: str
    enabled: bool
    loaded: bool
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    note: str | None = None  # why it is off although selected (a plugin it needs is off)
    selected: bool = True  # what the config chose, before any stored switch
    stored: bool | None = None  # the stored switch applied at start, if there is one
    stored_refused: str | None = None  # why that stored switch could not be applied


class PluginHost:
    """The pluggy manager with botkit's plugins loaded and their contributions registered."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pm = pluggy.PluginManager("botkit")
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.infos: dict[str, PluginInfo] = {}
        self.plugin_settings: dict[str, Any] = {}
        self.sources: dict[str, PluginSource] = {}
        self._suspended: dict[str, tuple[object, dict[tuple[str, str], Any]]] = {}
        self._db: Database | None = None
        self._bot: BotAPI | None = None
        self.running_adapters: set[str] = set()  # the adapters this process started (the bot records them)
        # ``botkit config check`` sets a list here: the config's problems join it instead of stopping the load.
        self.problems: list[str] | None = None

    def bind(self, db: Database, bot: BotAPI) -> None:
        """Give the host the database its switches are stored in and the bot its hooks receive."""
        self._db, self._bot = db, bot

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def load(self, extra: dict[str, object] | None = None) -> None:
        """Import, register and configure every selected plugin, and ``extra`` ones (tests, embedding).

        A plugin that fails raises ``PluginLoadError`` when ``[plugins] on_error``
        is "fail", and is left out with a logged error when it is "skip".
        """
        self.sources = discover(self.settings.plugins.directory)
        for name, plugin in (extra or {}).items():
            if name in self.sources:
                raise ConfigError(
                    f"a plugin named {name!r} is already installed ({self.sources[name].origin})"
                )
            self.sources[name] = PluginSource(name, "given", lambda plugin=plugin: plugin)
        names = selected_names(self.sources, self.settings)
        # Built-ins register first, so that a clash names the third-party plugin.
        ordered = sorted(self.sources.items(), key=lambda item: (item[1].origin != "builtin", item[0]))
        for name, source in ordered:
            selected = name in names
            self.infos[name] = PluginInfo(
                name, source.origin, enabled=selected, loaded=False, selected=selected
            )
        self._activate([name for name, _ in ordered if name in names])

    def _activate(self, names: list[str]) -> None:
        for name in names:
            source = self.sources[name]
            self._guarded(
                self.infos[name], lambda source=source, name=name: self.pm.register(source.load(), name=name)
            )
        for step in (self._check_hooks, self._collect, self._configure):
            for name in names:
                if self.pm.get_plugin(name) is not None:
                    self._guarded(self.infos[name], lambda name=name, step=step: step(name))
        self.pm.check_pending()
        self._reject_stray_tables()
        for name in names:
            plugin = self.pm.get_plugin(name)
            if plugin is not None:
                info = self.infos[name]
                info.loaded = info.enabled = True
                info.note = None
                info.hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
        self._suspend_unmet()

    def _suspend_unmet(self) -> None:
        """Take out every loaded plugin that needs a plugin which is off (until none is left)."""
        changed = True
        while changed:
            changed = False
            for name in sorted(self.pm_names()):
                missing = self.missing_needs(name)
                if missing:
                    self.suspend(name)
                    note = f"needs plugin {missing[0]!r}, which is off"
                    self.infos[name].note = note
                    log.warning("plugin %r is off: it %s", name, note)
                    changed = True

    def missing_needs(self, name: str) -> list[str]:
        """The plugins ``name`` declared it needs that are not on now."""
        return [need for need in self.registry.traits_of(name).needs if self.pm.get_plugin(need) is None]

    def needed_by(self, name: str) -> list[str]:
        """The plugins that are on and need ``name``."""
        return sorted(
            other for other in self.pm_names() if name in self.registry.traits_of(other).needs
        )

    # -- switching plugins while the bot runs ---------------------------------

    def switchable(self, name: str) -> str | None:
        """Why ``name`` cannot be switched without a restart, or ``None`` when it can."""
        if name not in self.infos:
            available = ", ".join(sorted(self.infos))
            return f"there is no plugin {name!r}; available: {available}"
        kinds = {kind for (kind, _), owner in self.registry.owners.items() if owner == name}
        for kind in ("backend", "adapter", "migrations"):
            if kind in kinds:
                return f"plugin {name!r} provides a {kind}: change config.toml and restart instead"
        if self.registry.traits_of(name).required:
            return f"plugin {name!r} is required and cannot be switched off"
        return None

    def suspend(self, name: str) -> None:
        """Take a loaded plugin out: its hooks stop being called, its commands disappear."""
        plugin = self.pm.get_plugin(name)
        if plugin is None:
            return
        self.pm.unregister(plugin)
        self._suspended[name] = (plugin, self.registry.withdraw(name))
        self.infos[name].enabled = False

    def resume(self, name: str) -> None:
        """Put a plugin (back) in: a suspended one as it was, one never loaded from its source.

        Raises ``PluginLoadError`` when it cannot load, whatever ``on_error`` says.
        """
        if self.pm.get_plugin(name) is not None:
            return
        if name in self._suspended:
            plugin, entries = self._suspended.pop(name)
            self.pm.register(plugin, name=name)
            self.registry.restore(name, entries)
            self.infos[name].enabled = True
            return
        saved, self.settings.plugins.on_error = self.settings.plugins.on_error, "fail"
        try:
            self._activate([name])
        finally:
            self.settings.plugins.on_error = saved

    # -- the public switch API (botkit.api.PluginSwitches) -------------------

    def is_on(self, name: str) -> bool:
        return self.pm.get_plugin(name) is not None

    async def list(self) -> list[PluginStatus]:
        stored = await read_stored_switches(self._bound()[0])
        return [
            PluginStatus(
                name=name,
                origin=info.origin,
                on=self.is_on(name),
                error=info.error,
                note=info.note,
                switched=name in stored,
                fixed=self.switchable(name),
                adapters=self.adapter_states(name),
            )
            for name, info in sorted(self.infos.items())
        ]

    def adapter_states(self, name: str) -> tuple[str, ...]:
        """The state of each adapter plugin ``name`` provides: running here, off in config, or not started."""
        states = []
        owned = (
            a for (kind, a), owner in self.registry.owners.items() if kind == "adapter" and owner == name
        )
        for adapter in sorted(owned):
            if adapter in self.running_adapters:
                states.append(f"{adapter}: running")
                continue
            model = self.registry.adapters[adapter].settings_model
            try:
                raw = self.settings.adapters.get(adapter, {})
                enabled = validate_table(model, raw, self.settings, ("adapters", adapter)).enabled
            except ConfigError as error:
                states.append(f"{adapter}: off (invalid config: {error})")
                continue
            if enabled:
                states.append(f"{adapter}: not running (enabled, but not started by this command)")
            else:
                states.append(f"{adapter}: off ([adapters.{adapter}] enabled = false)")
        return tuple(states)

    async def enable(self, name: str) -> str:
        return await self._switch(name, True)

    async def disable(self, name: str) -> str:
        return await self._switch(name, False)

    async def clear(self, name: str) -> str:
        if name not in self.infos:
            return f"There is no plugin {name!r}."
        await store_switch(self._bound()[0], name, None)
        return f"Stored switch of {name} cleared: config.toml decides from the next start."

    async def _switch(self, name: str, enabled: bool) -> str:
        db, bot = self._bound()
        reason = self.switchable(name)
        if reason is not None:
            return f"Cannot switch {name}: {reason}."
        also = ""
        if enabled and not self.is_on(name):
            error = self._resume_checked(name)
            if error:
                return f"Cannot enable {name}: {error}"
            await call_plugin(self.hook.botkit_startup, name, bot=bot)
            back = self._resume_waiting()
            for other in back:
                await call_plugin(self.hook.botkit_startup, other, bot=bot)
            if back:
                also = f" Back on with it: {', '.join(back)}."
        elif not enabled and self.is_on(name):
            # Plugins that need this one go off first (their shutdown may still use it), and come
            # back when it does.
            dependants = self._dependants(name)
            for other in dependants:
                await call_plugin(self.hook.botkit_shutdown, other, bot=bot)
                self.suspend(other)
                self.infos[other].note = f"needs plugin {name!r}, which is off"
            await call_plugin(self.hook.botkit_shutdown, name, bot=bot)
            self.suspend(name)
            if dependants:
                also = f" Off with it, as they need it: {', '.join(sorted(dependants))}."
        if not enabled:
            self.infos[name].note = None  # an admin's choice: it does not come back with its needs
        await store_switch(db, name, enabled)
        self.infos[name].stored, self.infos[name].stored_refused = enabled, None
        state = "enabled" if enabled else "disabled"
        return f"Plugin {name} is {state} (stored: it stays {state} after a restart until cleared).{also}"

    def _dependants(self, name: str) -> list[str]:
        """The plugins that are on and need ``name``, directly or through each other, dependants first."""
        found: list[str] = []
        pending = [name]
        while pending:
            for other in self.needed_by(pending.pop()):
                if other not in found:
                    found.insert(0, other)
                    pending.append(other)
        return found

    def _resume_waiting(self) -> list[str]:
        """Put back the plugins that are off only because a plugin they need was; returns their names."""
        back: list[str] = []
        progress = True
        while progress:
            progress = False
            for name, info in sorted(self.infos.items()):
                if info.note and not self.is_on(name) and name in self._suspended:
                    if not self.missing_needs(name):
                        self.resume(name)
                        info.note = None
                        back.append(name)
                        progress = True
        return back

    def apply_stored_switches(self, stored: dict[str, bool]) -> None:
        """At start, before any plugin has started: make the loaded plugins match the stored switches."""
        for name, enabled in sorted(stored.items()):
            if name not in self.infos:
                log.warning("plugin %r has a stored switch but is not installed; ignored", name)
                continue
            info = self.infos[name]
            info.stored = enabled
            if enabled == self.is_on(name):
                continue
            reason = self.switchable(name)
            if reason is not None:
                info.stored_refused = reason
                log.warning("stored switch of plugin %r not applied: %s", name, reason)
                continue
            if enabled:
                error = self._resume_checked(name)
                if error:
                    info.stored_refused = error
                    log.error("plugin %r stays off despite its stored switch: %s", name, error)
                    continue
            else:
                self.suspend(name)
            log.info("plugin %r is %s by a stored switch", name, "on" if enabled else "off")
        self._suspend_unmet()
        self._resume_waiting()

    def why(self, name: str) -> str | None:
        """Why plugin ``name`` is on or off, or ``None`` when nothing but the default decides (on).

        In order: a load error, a needed plugin that is off, a stored switch (and how the
        config would have it), the config (``[plugins.NAME] enabled = false``, ``BOTKIT_LOAD_PLUGINS``).
        """
        info = self.infos[name]
        on = self.is_on(name)
        config = None if info.selected else deselected_reason(name)
        if info.error:
            return info.error
        if info.note and not on:
            return info.note
        if info.stored is not None:
            state = "on" if info.stored else "off"
            if info.stored_refused:
                told = f"stored switch ({state}) not applied: {info.stored_refused}"
            else:
                told = f"stored switch (`botkit plugins clear {name}` lets the config decide)"
            return f"{told}; config: {config or 'on'}"
        return config

    def _resume_checked(self, name: str) -> str | None:
        """Load ``name``; undo it if it turns out to need a restart or a plugin that is off."""
        try:
            self.resume(name)
        except PluginLoadError as error:
            return error.cause
        reason = self.switchable(name)
        missing = self.missing_needs(name)
        if reason is None and missing:
            reason = f"it needs plugin {missing[0]!r}, which is off; enable {missing[0]} first"
        if reason is not None:
            self.suspend(name)
            return reason
        self.infos[name].note = None
        return None

    def _bound(self) -> tuple[Database, BotAPI]:
        if self._db is None or self._bot is None:
            raise RuntimeError("PluginHost.bind(db, bot) must be called before plugins are switched")
        return self._db, self._bot

    def pm_names(self) -> list[str]:
        return [name for name, _ in self.pm.list_name_plugin()]

    def _guarded(self, info: PluginInfo, step: Any) -> None:
        try:
            step()
        except ConfigError as error:
            # The user's config, not the plugin, is wrong: stop (``botkit config check`` goes on to tell the rest).
            self._problem(error)
        except PluginLoadError as error:
            self._failed(info, error)
        except Exception as error:
            self._failed(info, PluginLoadError(info.name, f"{type(error).__name__}: {error}"))

    def _failed(self, info: PluginInfo, error: PluginLoadError) -> None:
        info.error = error.cause
        self.registry.forget(info.name)
        plugin = self.pm.get_plugin(info.name)
        if plugin is not None:
            self.pm.unregister(plugin)
        if self.settings.plugins.on_error == "fail":
            raise error
        log.error('%s; starting without it ([plugins] on_error = "skip")', error)

    def _check_hooks(self, name: str) -> None:
        """A misspelled hook or a wrapper fails loudly, naming the plugin."""
        plugin = self.pm.get_plugin(name)
        for caller in self.pm.get_hookcallers(plugin) or []:
            if any(
                impl.plugin is plugin and (impl.hookwrapper or impl.wrapper)
                for impl in caller.get_hookimpls()
            ):
                raise PluginLoadError(
                    name, f"{caller.name} is a wrapper; botkit calls hooks itself and does not run wrappers"
                )
            if caller.spec is None and any(
                impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls()
            ):
                known = ", ".join(hookspecs.HOOK_NAMES)
                raise PluginLoadError(
                    name, f"implements unknown hook {caller.name!r}; botkit's hooks are: {known}"
                )

    def _collect(self, name: str) -> None:
        """Call the plugin's ``botkit_register_*`` implementations with registrars bound to it."""
        plugin = self.pm.get_plugin(name)
        for hook_name, registrar in _REGISTER_HOOKS.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin is plugin:
                    result = impl.function(register=getattr(self.registry, registrar)(name))
                    if inspect.isawaitable(result):
                        close = getattr(result, "close", None)
                        if close is not None:
                            close()  # never run: do not leave a "never awaited" warning behind
                        raise PluginLoadError(name, f"{hook_name} must be a plain function, not async")

    def _configure(self, name: str) -> None:
        """Validate the ``[plugins.X]`` tables of the settings models plugin ``name`` registered."""
        tables = self.settings.plugins.tables()
        for settings_name, model in self.registry.settings_models.items():
            if self.registry.owner("settings", settings_name) != name:
                continue
            table = {k: v for k, v in tables.get(settings_name, {}).items() if k != "enabled"}
            self.plugin_settings[settings_name] = validate_table(
                model, table, self.settings, ("plugins", settings_name)
            )

    def check_tables(self, settings: Settings) -> None:
        """Check the top-level tables of ``settings`` that are not botkit's own, e.g. ``[finetune]``.

        Each must be named after an installed plugin; a loaded plugin's must be one it claimed
        (``register(name, model, top_level=True)``) and validate against that model. Raises
        ``ConfigError``. Tools read a claimed table with ``botkit.ops.config_table``.
        """
        self._report(lambda: reject_unknown_tables(settings, self.sources))
        for name in settings.top_level_extras():
            if name in self.pm_names() and name not in self.registry.top_level_models:
                self._problem(
                    ConfigError(
                        f"{settings.source_name}: [{name}]: plugin {name!r} has no top-level table; "
                        f"its settings, if any, go in [plugins.{name}]"
                    )
                )
        for name, model in self.registry.top_level_models.items():
            table = (name,)
            self._report(
                lambda model=model, table=table: validate_table(
                    model, plugin_table(settings, table[0]), settings, table
                )
            )

    def _reject_stray_tables(self) -> None:
        self.check_tables(self.settings)
        tables = self.settings.plugins.tables()
        for name, table in tables.items():
            keys = set(table) - {"enabled"} if isinstance(table, dict) else set()
            if keys and name in self.pm_names() and name not in self.registry.settings_models:
                self._problem(
                    ConfigError(
                        f"{self.settings.source_name}: [plugins.{name}]: plugin {name!r} has no settings "
                        f"(found {', '.join(sorted(keys))}); only 'enabled' applies"
                    )
                )

    def _report(self, check: Any) -> None:
        """Run ``check``; a ``ConfigError`` it raises goes to ``_problem``."""
        try:
            check()
        except ConfigError as error:
            self._problem(error)

    def _problem(self, error: ConfigError) -> None:
        """Raise ``error``, or add it to ``problems`` when they are being collected (``botkit config check``)."""
        if self.problems is None:
            raise error
        self.problems += str(error).splitlines()
