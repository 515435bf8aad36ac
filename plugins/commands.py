"""The basic chat commands: /help lists what a user can type, /stop stops their reply."""

from __future__ import annotations

from botkit import Command, CommandContext, hookimpl


async def show_help(ctx: CommandContext) -> str:
    prefix = ctx.bot.settings.bot.command_prefix
    is_admin = await ctx.bot.is_admin(ctx.message.author, ctx.message)
    lines = ["Commands:"]
    for command in sorted(ctx.bot.commands.values(), key=lambda c: c.name):
        if command.admin_only and not is_admin:
            continue
        usage = f" {command.usage}" if command.usage else ""
        marker = " (admin)" if command.admin_only else ""
        lines.append(f"{prefix}{command.name}{usage} - {command.help}{marker}")
    lines.append("Anything else is a message for the model.")
    return "\n".join(lines)


async def stop_reply(ctx: CommandContext) -> str:
    stopped = ctx.bot.stop_generations(ctx.message)
    if not stopped:
        return "There is no reply of yours to stop."
    return "Stopped." if stopped == 1 else f"Stopped {stopped} replies."


@hookimpl
def botkit_register_commands(register):
    register(Command("help", "show the commands you can use", show_help))
    register(Command("stop", "stop the reply being written for you", stop_reply, immediate=True))
