"""The plugins page: every plugin, whether it runs and why, its settings (secrets masked), and its switch.

The switch is the one ``/enable`` and ``/disable`` store. Inside ``botkit run``
(``[web] enabled``) it goes through ``bot.plugins``, as those commands do, and acts at
once; the console of ``botkit web`` stores it as ``botkit plugins enable|disable`` does,
and the bot on the same database applies it at its next start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from botkit import BotkitError, PluginStatus, to_toml
from botkit.ops import apply_stored_switches, store_plugin_switch

from .app import Console, form_of


@dataclass(frozen=True, slots=True)
class PluginRow:
    status: PluginStatus
    runs: bool  # on, and for an adapter plugin: one of its adapters runs
    why: list[str]  # what decides its state
    settings: str  # its table as TOML, secrets masked


def describe(status: PluginStatus, settings: dict[str, Any]) -> PluginRow:
    why = []
    if status.error:
        why.append(f"failed to load: {status.error}")
    if status.note and not status.on:
        why.append(status.note)
    why.append("switched by an admin (stored)" if status.switched else "config.toml")
    if status.fixed:
        why.append(f"fixed: {status.fixed}")
    runs = status.on
    if status.adapters:
        runs = runs and any(state.endswith(": running") for state in status.adapters)
        why.extend(f"adapter {state}" for state in status.adapters)
    table = {key: value for key, value in settings.items() if key != "enabled"}
    return PluginRow(status, runs, why, to_toml(table).strip("\n") if table else "")


def add_plugin_pages(console: Console) -> None:
    async def listing(request: Request, status: int = 200, problem: str | None = None) -> Response:
        if not console.live:
            await apply_stored_switches(console.bot)  # type: ignore[arg-type]  # a loaded ops.Bot
        tables = console.bot.effective_config()["plugins"]
        rows = [describe(plugin, tables.get(plugin.name, {})) for plugin in await console.bot.plugins.list()]
        return console.render(
            request, "plugins.html", status=status, rows=rows, live=console.live, problem=problem,
            done=request.query_params.get("done"),
        )

    async def switch(request: Request) -> Response:
        name = request.path_params["name"]
        wanted = str(form_of(request).get("switch", ""))
        if wanted not in ("enable", "disable", "clear"):
            return await listing(request, 400, f"switch {wanted!r}: enable, disable or clear")
        if console.live:
            switches = console.bot.plugins
            done = await {"enable": switches.enable, "disable": switches.disable, "clear": switches.clear}[wanted](name)
        else:
            try:
                await store_plugin_switch(console.bot, name, {"enable": True, "disable": False}.get(wanted))  # type: ignore[arg-type]
            except BotkitError as error:
                return await listing(request, 400, str(error))
            done = f"{name}: {wanted} stored; the bot applies it at its next start (in chat, /{wanted} acts at once)"
        await console.act(request, f"plugin.{wanted}", name)
        return RedirectResponse(f"/plugins?{urlencode({'done': done})}", status_code=303)

    console.page("/plugins", listing, "admin")
    console.page("/plugins/{name}/switch", switch, "admin", methods=("POST",))
