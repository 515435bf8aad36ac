"""The web plugin: adds ``botkit web``, claims ``[web]``, and serves the console inside ``botkit run`` when enabled.

Built in and switched off like any plugin (``[plugins.web] enabled = false``). Starlette
and uvicorn (``pip install 'botkit[web]'``) are imported only when the console is served.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from botkit import BotAPI, ConfigError, StateKey, hookimpl
from botkit.ops import config_table

from .settings import WebSettings

if TYPE_CHECKING:
    from .server import ConsoleServer

log = logging.getLogger("botkit.web")
SERVING: StateKey[tuple[ConsoleServer, asyncio.Task[None]]] = StateKey("web.server")


@hookimpl
def botkit_register_cli(cli):
    from .cli import web

    cli.add_command(web)


@hookimpl
def botkit_register_settings(register):
    register("web", WebSettings, top_level=True)


@hookimpl
def botkit_register_plugin(register):
    # Never switched off at run time: its own plugins page would wait on itself to stop, and an admin
    # could lock everyone out of the console. `[plugins.web] enabled = false` leaves it out.
    register(required=True)


@hookimpl
async def botkit_startup(bot: BotAPI) -> None:
    settings = config_table(bot.settings, "web", WebSettings)
    if not settings.enabled or bot.state.get(SERVING) is not None:
        return
    from . import missing_web_stack

    missing = missing_web_stack()
    if missing:
        raise ConfigError(f"[web] enabled = true: {missing}")
    from .server import bind, console_server, exposure_warning

    warning = exposure_warning(settings)
    if warning:
        log.warning(warning)
    listening = bind(settings)
    server = console_server(bot, settings, live=True)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[listening]))
    bot.state.set(SERVING, (server, task))
    log.info("web console on %s://%s", "https" if settings.https else "http", settings.listen)


@hookimpl
async def botkit_shutdown(bot: BotAPI) -> None:
    serving = bot.state.pop(SERVING)
    if serving is None:
        return
    server, task = serving
    server.request_stop()
    await task
