"""Admin commands, the same on every platform: plugins, reload, config, status, LoRA adapters.

Every command here is admin-only: anyone else is refused and the attempt is
logged (the core does both). Switching a plugin is stored in the database and
survives restarts until ``/clear NAME``.
"""

from __future__ import annotations

import logging
import time

from botkit import Command, CommandContext, hookimpl
from botkit.backend_set import DEFAULT as DEFAULT_BACKEND
from botkit.errors import ConfigError, LoraError
from botkit.settings import to_toml
from botkit.switches import clear, read_overrides, set_enabled
from botkit.types import NO_LORA

log = logging.getLogger("botkit.plugins.admin")

# This plugin cannot be switched off at run time: admins would lock themselves out.
BOTKIT_REQUIRED = True

_started: dict[int, float] = {}


async def list_plugins(ctx: CommandContext) -> str:
    host = ctx.bot.host
    overrides = await read_overrides(ctx.bot.db)
    lines = ["Plugins:"]
    for name, info in sorted(host.infos.items()):
        state = "on" if host.pm.get_plugin(name) is not None else "off"
        notes = []
        if info.error:
            notes.append(f"failed: {info.error}")
        if name in overrides:
            notes.append("switched by an admin")
        if host.switchable(name):
            notes.append("fixed")
        suffix = f" ({'; '.join(notes)})" if notes else ""
        lines.append(f"{name}: {state} - {info.origin}{suffix}")
    return "\n".join(lines)


def plugin_name(ctx: CommandContext) -> str | None:
    name = ctx.args.strip()
    return name if name and " " not in name else None


async def enable(ctx: CommandContext) -> str:
    name = plugin_name(ctx)
    if name is None:
        return f"Usage: {ctx.bot.settings.bot.command_prefix}enable NAME"
    return await set_enabled(ctx.bot, name, True)


async def disable(ctx: CommandContext) -> str:
    name = plugin_name(ctx)
    if name is None:
        return f"Usage: {ctx.bot.settings.bot.command_prefix}disable NAME"
    return await set_enabled(ctx.bot, name, False)


async def clear_override(ctx: CommandContext) -> str:
    name = plugin_name(ctx)
    if name is None:
        return f"Usage: {ctx.bot.settings.bot.command_prefix}clear NAME"
    return await clear(ctx.bot, name)


async def reload(ctx: CommandContext) -> str:
    try:
        notes = await ctx.bot.reload_settings()
    except ConfigError as error:
        return f"Config not reloaded, nothing changed:\n{error}"
    return "\n".join(notes)


async def show_config(ctx: CommandContext) -> str:
    return to_toml(ctx.bot.effective_config())


async def status(ctx: CommandContext) -> str:
    bot = ctx.bot
    uptime = time.monotonic() - _started.get(id(bot), time.monotonic())
    loaded = sum(1 for name in bot.host.infos if bot.host.pm.get_plugin(name) is not None)
    lines = []
    for slot in bot.backends.values():
        summary, queue = slot.summary(), slot.queue
        adapter = f", adapter {summary['adapter']}" if summary["adapter"] else ""
        lines += [
            f"Backend {slot.name}: {summary['type']}, model {summary['model']}{adapter}, "
            f"context {summary['context_window']:,} tokens",
            f"  queue: {queue.running} generating, {queue.waiting} waiting "
            f"(at most {queue.concurrency} at once, {queue.limit} waiting)",
        ]
    return "\n".join(
        [
            *lines,
            f"Conversations being handled: {len(bot.pipeline.lanes)}",
            f"Plugins on: {loaded} of {len(bot.host.infos)}",
            f"Database: {bot.db.display_url}",
            f"Up for {uptime / 60:.0f} min",
        ]
    )


async def lora(ctx: CommandContext) -> str:
    """``/lora``: list; ``/lora NAME|PATH|none``; ``/lora BACKEND NAME|PATH|none``."""
    bot = ctx.bot
    words = ctx.args.split()
    if not words:
        lines = ["LoRA adapters (active one marked *):"]
        for slot in bot.backends.values():
            backend = slot.backend
            names = [f"*{n}" if n == backend.active_lora else n for n in sorted(backend.loras)]
            if backend.active_lora and backend.active_lora not in backend.loras:
                names.append(f"*{backend.active_lora}")
            lines.append(f"{slot.name}: {', '.join(names) if names else 'none loaded'}")
        prefix = bot.settings.bot.command_prefix
        lines.append(f"Switch with {prefix}lora [BACKEND] NAME|PATH|none (until restart).")
        return "\n".join(lines)
    if len(words) > 2:
        return f"Usage: {bot.settings.bot.command_prefix}lora [BACKEND] NAME|PATH|none"
    backend_name, spec = (words[0], words[1]) if len(words) == 2 else (DEFAULT_BACKEND, words[0])
    try:
        note = await bot.switch_lora(backend_name, None if spec == NO_LORA else spec)
    except LoraError as error:
        return f"LoRA adapter not switched: {error}"
    log.warning("admin %s switched backend %s to LoRA adapter %s", ctx.message.user_key, backend_name, spec)
    return note


@hookimpl
def botkit_register_commands(register):
    register(Command("plugins", "list the plugins and whether they are on", list_plugins, admin_only=True))
    register(Command("enable", "switch a plugin on (stored)", enable, usage="NAME", admin_only=True))
    register(Command("disable", "switch a plugin off (stored)", disable, usage="NAME", admin_only=True))
    register(
        Command(
            "clear",
            "forget a stored switch; config decides again",
            clear_override,
            usage="NAME",
            admin_only=True,
        )
    )
    register(Command("reload", "re-read the config file without restarting", reload, admin_only=True))
    register(Command("config", "show the effective config (secrets masked)", show_config, admin_only=True))
    register(Command("status", "show the backends and their queues", status, admin_only=True))
    register(
        Command(
            "lora",
            "list LoRA adapters, or switch one without restarting",
            lora,
            usage="[BACKEND] NAME|PATH|none",
            admin_only=True,
        )
    )
    register(
        Command(
            "adapter",
            "old name of /lora, kept until the next release",
            lora,
            usage="[BACKEND] NAME|PATH|none",
            admin_only=True,
        )
    )


@hookimpl
def botkit_startup(bot):
    _started[id(bot)] = time.monotonic()
