"""The bot's commands as Discord slash commands (discord.py app commands), and ``/ask`` for questions.

Each command in ``bot.commands`` becomes a slash command of the same
name; one that takes arguments (its ``usage``) gets an optional ``text``
option. Running it is the same as typing ``/name text`` in a message: the
adapter hands that text to the core, which runs the command with the same
rules as everywhere (admins, gates). Answers to admin-only commands are
ephemeral (only the admin sees them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from botkit.adapters.discord import DiscordAdapter

# Discord's limit on a command's (and an option's) description.
DESCRIPTION_LIMIT = 100

SlashHandler = Callable[[Any, str, bool], Awaitable[None]]


def _describe(text: str) -> str:
    text = " ".join(text.split()) or "-"
    return text if len(text) <= DESCRIPTION_LIMIT else text[: DESCRIPTION_LIMIT - 1] + "…"


def _command(
    name: str, description: str, option: tuple[str, str, bool] | None, run: Callable[[Any, str], Any]
):
    """An app command whose callback hands (interaction, the option's text) to ``run``."""
    import discord
    from discord import app_commands

    if option is None:

        async def callback(interaction):
            await run(interaction, "")

        callback.__annotations__ = {"interaction": discord.Interaction}
    elif option[2]:

        async def callback(interaction, question):
            await run(interaction, question)

        callback.__annotations__ = {"interaction": discord.Interaction, "question": str}
    else:

        async def callback(interaction, text=None):
            await run(interaction, text or "")

        callback.__annotations__ = {"interaction": discord.Interaction, "text": Optional[str]}  # noqa: UP045
    if option is not None:
        callback = app_commands.describe(**{option[0]: _describe(option[1])})(callback)
    return app_commands.Command(name=name, description=_describe(description), callback=callback)


def build_command_tree(adapter: DiscordAdapter, client: Any) -> Any:
    """A ``CommandTree`` on ``client`` with ``/ask`` and every bot command, in the configured guilds or global."""
    import discord
    from discord import app_commands

    tree = app_commands.CommandTree(client)
    guilds = [discord.Object(id=guild_id) for guild_id in adapter.settings.command_guilds] or None
    prefix = adapter.bot.settings.bot.command_prefix
    registered = adapter.bot.commands
    ask = adapter.settings.ask_command

    def add(command: Any) -> None:
        if guilds:
            tree.add_command(command, guilds=guilds)
        else:
            tree.add_command(command)

    if ask not in registered:
        add(
            _command(
                ask,
                "ask the model a question",
                ("question", "your question", True),
                lambda interaction, text: adapter.on_slash(interaction, text, ephemeral=False),
            )
        )
    for name in sorted(registered):
        command = registered[name]
        option = ("text", command.usage, False) if command.usage else None

        def run(interaction: Any, text: str, name: str = name, ephemeral: bool = command.admin_only) -> Any:
            return adapter.on_slash(interaction, f"{prefix}{name} {text}".strip(), ephemeral=ephemeral)

        add(_command(name, command.help, option, run))
    return tree
