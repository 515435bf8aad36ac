"""The finetune plugin: adds ``botkit export`` and ``botkit finetune ...`` and claims the ``[finetune]`` table.

Built in (``botkit.plugin_discovery.BUILTIN_PLUGINS``) and switched off like any plugin
(``[plugins.finetune] enabled = false``). The commands are imported only when the CLI
asks for them, so a bot loading its plugins never imports them.
"""

from __future__ import annotations

from botkit import hookimpl

from .settings import FinetuneSettings


@hookimpl
def botkit_register_cli(cli):
    from .cli import export, finetune

    cli.add_command(export)
    cli.add_command(finetune)


@hookimpl
def botkit_register_settings(register):
    register("finetune", FinetuneSettings, top_level=True)
