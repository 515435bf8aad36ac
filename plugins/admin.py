"""Admin commands, the same on every platform: plugins, reload, config, status, LoRA adapters, canaries.

Every command here is admin-only: anyone else is refused and the attempt is
logged (the core does both). Switching a plugin is stored in the database and
survives restarts until ``/clear NAME``.
"""

from __future__ import annotations

import logging

from botkit import NO_LORA, BotkitError, Command, CommandContext, ConfigError, LoraError, hookimpl, to_toml

log = logging.getLogger("botkit.plugins.admin")

DEFAULT_BACKEND = "default"  # the [backend] table's name among the backends


async def list_plugins(ctx: CommandContext) -> str:
    lines = ["Plugins:"]
    for plugin in await ctx.bot.plugins.list():
        notes = []
        if plugin.error:
            notes.append(f"failed: {plugin.error}")
        if plugin.note and not plugin.on:
            notes.append(plugin.note)
        if plugin.switched:
            notes.append("switched by an admin")
        if plugin.fixed:
            notes.append("fixed")
        on = plugin.on
        if plugin.adapters:
            # An adapter plugin is loaded whenever it is installed; what matters is whether its adapter runs.
            on = on and any(state.endswith(": running") for state in plugin.adapters)
            notes.extend(f"adapter {state}" for state in plugin.adapters)
        suffix = f" ({'; '.join(notes)})" if notes else ""
        lines.append(f"{plugin.name}: {'on' if on else 'off'} - {plugin.origin}{suffix}")
    return "\n".join(lines)


def plugin_name(ctx: CommandContext) -> str | None:
    name = ctx.args.strip()
    return name if name and " " not in name else None


async def enable(ctx: CommandContext) -> str:
    name = plugin_name(ctx)
    if name is None:
        return f"Usage: {ctx.bot.settings.bot.command_prefix}enable NAME"
    return await ctx.bot.plugins.enable(name)


async def disable(ctx: CommandContext) -> str:
    name = plugin_name(ctx)
    if name is None:
        return f"Usage: {ctx.bot.settings.bot.command_prefix}disable NAME"
    return await ctx.bot.plugins.disable(name)


async def clear_switch(ctx: CommandContext) -> str:
    name = plugin_name(ctx)
    if name is None:
        return f"Usage: {ctx.bot.settings.bot.command_prefix}clear NAME"
    return await ctx.bot.plugins.clear(name)


async def reload(ctx: CommandContext) -> str:
    try:
        notes = await ctx.bot.reload_settings()
    except ConfigError as error:
        return f"Config not reloaded, nothing changed:\n{error}"
    return "\n".join(notes)


async def show_config(ctx: CommandContext) -> str:
    return to_toml(ctx.bot.effective_config())


async def status(ctx: CommandContext) -> str:
    status = ctx.bot.status()
    return "\n".join(
        [
            "Backends:",
            *(backend.describe() for backend in status.backends),
            f"Conversations being handled: {status.conversations}",
            f"Plugins on: {status.plugins_on} of {status.plugins_total}",
            f"Database: {status.database}",
            f"Up for {status.uptime_s / 60:.0f} min",
        ]
    )


async def lora(ctx: CommandContext) -> str:
    """``/lora``: list; ``/lora NAME|PATH|none``; ``/lora BACKEND NAME|PATH|none``."""
    bot = ctx.bot
    words = ctx.args.split()
    if not words:
        lines = ["LoRA adapters (active one marked *):"]
        for backend in bot.status().backends:
            names = [f"*{n}" if n == backend.lora else n for n in backend.loras]
            if backend.lora and backend.lora not in backend.loras:
                names.append(f"*{backend.lora}")
            lines.append(f"{backend.name}: {', '.join(names) if names else 'none loaded'}")
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


CANARY_ENDINGS = {"promote": "promoted", "rollback": "rolled_back"}  # botkit.canary's outcomes


async def canary(ctx: CommandContext) -> str:
    """``/canary``: the running canaries' results; ``/canary promote|rollback [BACKEND]`` ends one."""
    bot = ctx.bot
    words = ctx.args.split()
    if not words:
        return "\n".join(await bot.canary_report())
    if len(words) > 2 or words[0] not in CANARY_ENDINGS:
        return f"Usage: {bot.settings.bot.command_prefix}canary [promote|rollback [BACKEND]]"
    backend = words[1] if len(words) == 2 else DEFAULT_BACKEND
    reason = f"{words[0]} by admin {ctx.message.user_key}"
    try:
        note = await bot.end_canary(backend, CANARY_ENDINGS[words[0]], reason)
    except BotkitError as error:
        return f"Canary not ended: {error}"
    log.warning("admin %s: canary of backend %s: %s", ctx.message.user_key, backend, words[0])
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
            clear_switch,
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
            "canary",
            "show the canary rollout's results per arm, or promote / roll it back",
            canary,
            usage="[promote|rollback [BACKEND]]",
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
def botkit_register_plugin(register):
    # Switching this plugin off at run time would lock the admins out.
    register(required=True)
