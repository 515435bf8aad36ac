"""The Exports and runs page: past exports with their dataset cards, training runs and their metrics, the
adapter in use, and deploy / rollback (admins).

The listing is ``botkit finetune runs`` and ``exports``'s (``botkit.finetune.catalog``).
Deploy and rollback are ``botkit finetune deploy`` and ``rollback``: their confirmation
page shows the checks deploy makes (``check_deployment``: the backend, the adapter against
its model, the licence, the red-team gate) and the button calls ``deploy`` itself, so the
config file is written and the bot running with it is asked over its control socket to
reload, as the CLI does, with the CLI's words. Inside ``botkit run`` that bot is this one,
asked in-process when its control socket is off (``in_process``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from botkit import BotkitError
from botkit.finetune.catalog import Catalogue, RunEntry, catalogue
from botkit.finetune.deploy import Deployment, adapter_argument, check_deployment, deploy, plan_rollback
from botkit.finetune.gate import GateRefused, gate_summary
from botkit.finetune.licence import LicenceRefused
from botkit.finetune.settings import FinetuneSettings
from botkit.ops import Ask, Settings, config_table, control_socket_path, in_process, load_settings

from .app import Console, form_of


@dataclass
class Said:
    """What deploy printed (``echo``) and warned (``warn``), in order, for the page."""

    lines: list[tuple[str, str]] = field(default_factory=list)  # ("info" | "warning", line)

    def echo(self, line: str) -> None:
        self.lines.extend(("info", part) for part in line.splitlines())

    def warn(self, line: str) -> None:
        self.lines.extend(("warning", part) for part in line.splitlines())


def overrides(values: Any) -> dict[str, bool]:
    """The flags an admin ticked on the confirmation page: deploy's --force and --accept-license."""
    return {"force": values.get("force") == "on", "accept_license": values.get("accept_license") == "on"}


def add_runs_pages(console: Console) -> None:
    def settings() -> Settings:
        # Read again each time: a deploy (here or from the CLI) changed the file since the console started.
        current = console.bot.settings
        return load_settings(current.source_path) if current.source_path else current

    def running(current: Settings) -> Ask | None:
        """Inside ``botkit run`` with its control socket off, this bot answers in-process; else its socket."""
        if console.live and control_socket_path(current) is None:
            return in_process(console.bot, asyncio.get_running_loop())  # type: ignore[arg-type]
        return None

    async def listing(request: Request) -> Response:
        try:
            current = settings()
            asked = running(current)
            found: Catalogue | None = await asyncio.to_thread(lambda: catalogue(current, running=asked))
            problem = None
        except BotkitError as error:
            found, problem = None, str(error)
        return console.render(
            request, "runs.html", status=200 if found else 500, found=found, problem=problem,
            done=request.query_params.get("done"),
        )  # fmt: skip

    def listed_run(values: Any) -> tuple[Settings, RunEntry]:
        """The run the form names, if the catalogue lists it: the page deploys only what it showed."""
        current = settings()
        wanted = str(values.get("run", ""))
        for run in catalogue(current, ask_bot=False).runs:
            if str(run.folder) == wanted:
                return current, run
        raise BotkitError(f"{wanted or 'no run'}: not a run of the listed folders ([finetune] folders)")

    def run_deployment(values: Any) -> tuple[Settings, Deployment, str]:
        current, run = listed_run(values)
        backend = str(values.get("backend") or run.backend or "default")
        deployment = Deployment(backend, adapter_argument(str(run.folder)), **overrides(values))
        return current, deployment, str(run.folder)

    def rollback_deployment(values: Any) -> tuple[Settings, Deployment, str]:
        current = settings()
        target, deployment = plan_rollback(current, str(values.get("backend", "default")), **overrides(values))
        return current, deployment, target.describe()

    async def confirm(request: Request, plan: Any, action: str) -> Response:
        said, refusal, status = Said(), None, 200
        values = request.query_params
        try:
            current, deployment, what = await asyncio.to_thread(plan, values)
            await asyncio.to_thread(check_deployment, current, deployment, said.echo, said.warn)
        except (GateRefused, LicenceRefused) as error:
            refusal = error
        except BotkitError as error:
            return console.render(request, "runs_result.html", status=400, action=action, said=said, problem=str(error))
        gate = config_table(current, "finetune", FinetuneSettings).gate
        return console.render(
            request, "runs_confirm.html", status=status, action=action, what=what, deployment=deployment,
            said=said, refusal=refusal, gate=isinstance(refusal, GateRefused),
            licence=isinstance(refusal, LicenceRefused), run=values.get("run", ""),
            rules=gate_summary(deployment.adapter, gate) if deployment.adapter else None,
        )  # fmt: skip

    async def act(request: Request, plan: Any, action: str) -> Response:
        said, values = Said(), form_of(request)
        try:
            current, deployment, what = await asyncio.to_thread(plan, values)
        except BotkitError as error:
            return console.render(request, "runs_result.html", status=400, action=action, said=said, problem=str(error))
        forced = "".join(f" --{flag.replace('_', '-')}" for flag, on in overrides(values).items() if on)
        target = f"{deployment.backend}: {deployment.expected_adapter or 'none'}{forced}"
        try:
            await asyncio.to_thread(deploy, current, deployment, said.echo, said.warn, running(current))
        except BotkitError as error:
            await console.act(request, f"finetune.{action}.failed", target)
            return console.render(
                request, "runs_result.html", status=400, action=action, said=said, problem=str(error), what=what
            )
        await console.act(request, f"finetune.{action}", target)
        return console.render(request, "runs_result.html", action=action, said=said, problem=None, what=what)

    async def deploy_confirm(request: Request) -> Response:
        return await confirm(request, run_deployment, "deploy")

    async def deploy_run(request: Request) -> Response:
        return await act(request, run_deployment, "deploy")

    async def rollback_confirm(request: Request) -> Response:
        return await confirm(request, rollback_deployment, "rollback")

    async def rollback_run(request: Request) -> Response:
        return await act(request, rollback_deployment, "rollback")

    console.page("/runs", listing, "admin")
    console.page("/runs/deploy", deploy_confirm, "admin")
    console.page("/runs/deploy", deploy_run, "admin", methods=("POST",))
    console.page("/runs/rollback", rollback_confirm, "admin")
    console.page("/runs/rollback", rollback_run, "admin", methods=("POST",))

