"""The finetune plugin: adds ``botkit export`` and ``botkit finetune ...`` and claims the ``[finetune]`` table.

Built in (``botkit.plugin_discovery.BUILTIN_PLUGINS``) and switched off like any plugin
(``[plugins.finetune] enabled = false``). The commands are imported only when the CLI
asks for them, so a bot loading its plugins never imports them. A running bot gets the
canary watch (``finetune/canary.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from botkit import StateKey, hookimpl

from .settings import FinetuneSettings

if TYPE_CHECKING:
    from .canary import CanaryWatch

WATCH: StateKey[CanaryWatch] = StateKey("finetune.canary_watch")


@hookimpl
def botkit_register_cli(cli):
    from .cli import export, finetune

    cli.add_command(export)
    cli.add_command(finetune)


@hookimpl
def botkit_register_settings(register):
    register("finetune", FinetuneSettings, top_level=True)


@hookimpl
async def botkit_startup(bot):
    from botkit.ops import config_table

    from .canary import CanaryWatch

    settings = config_table(bot.settings, "finetune", FinetuneSettings)  # read at start: a reload keeps it
    bot.state.set(WATCH, CanaryWatch(bot, settings.canary)).start()


@hookimpl
async def botkit_shutdown(bot):
    watch = bot.state.pop(WATCH)
    if watch is not None:
        await watch.close()
