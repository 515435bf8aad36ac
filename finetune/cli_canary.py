"""``botkit finetune canary status|start|promote|rollback`` and ``botkit finetune deploy --canary``.

A canary is started, promoted and rolled back by the running bot (over its control
socket, ``{"command": "canary"}``), which switches its conversations at once; its
state lives in the database (``botkit/canary.py``), so ``status`` reads it there,
whether or not a bot runs. With no bot running, ``promote`` and ``rollback`` end the
canary in the database and the bot takes that when it starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from botkit import BotkitError, NoRunningBot
from botkit.ops import (
    PROMOTED,
    ROLLED_BACK,
    Bot,
    Canaries,
    CanaryError,
    Context,
    Settings,
    config_option,
    control_socket_path,
    fail,
    report_lines,
    request_sync,
    run_with_database,
)

if TYPE_CHECKING:
    from .deploy import Deployment, Echo

ACTIONS = {"promote": PROMOTED, "rollback": ROLLED_BACK}
backend_option = click.option(
    "--backend",
    default="default",
    show_default=True,
    help="the backend of the canary: 'default' ([backend]) or a [backends.<name>] name",
)


NO_BOT = 'no running bot answered (none runs with this config, or its [bot] control_socket is "off")'


def ask_bot(settings: Settings, request: dict[str, Any], timeout: float = 30.0) -> list[str] | None:
    """Send a canary request to the running bot; its lines, or None when no bot answers."""
    path = control_socket_path(settings)
    if path is None:
        return None
    try:
        answer = request_sync(path, {"command": "canary", **request}, timeout)
    except NoRunningBot:
        return None
    if not answer["ok"]:
        raise CanaryError(str(answer.get("error")))
    return [str(line) for line in answer.get("notes", answer.get("report", []))]


def start_canary(settings: Settings, backend: str, lora: str, share: float) -> list[str]:
    """Start a canary in the running bot (which knows its active adapter and what it loaded)."""
    lines = ask_bot(settings, {"action": "start", "backend": backend, "lora": lora, "share": share})
    if lines is None:
        raise CanaryError(
            f"{NO_BOT}: a canary is started by the bot that answers with it (it knows the adapter in use and "
            "what it loaded); start the bot, then run this again"
        )
    return lines


@click.group()
def canary() -> None:
    """Canary rollouts of a LoRA adapter: a share of conversations gets the new adapter (docs/safety.md)."""


@canary.command("status")
@config_option
@click.pass_obj
def status(ctx: Context) -> None:
    """Show the running canaries: per arm 👍 / 👎 rates with 95% Wilson intervals, the two-proportion test
    of the 👎 rates, stop rates and moderation events."""

    async def report(bot: Bot) -> list[str]:
        canaries = Canaries(bot.db)
        lines: list[str] = []
        await canaries.refresh()
        for plan in canaries.plans:
            lines.extend(report_lines(await canaries.results(plan)))
        return lines or ["no canary is running"]

    try:
        click.echo("\n".join(run_with_database(ctx, report)))
    except BotkitError as error:
        fail(error)


@canary.command("start")
@config_option
@click.argument("lora", metavar="LORA")
@click.option(
    "--share",
    type=click.FloatRange(0, 100, min_open=True, max_open=True),
    required=True,
    help="percent of conversations that get LORA, e.g. 10",
)
@backend_option
@click.pass_obj
def start(ctx: Context, lora: str, share: float, backend: str) -> None:
    """Answer SHARE percent of conversations (sticky per conversation) with LORA, a name from the backend's loras."""
    try:
        click.echo("\n".join(start_canary(ctx.settings(), backend, lora, share)))
    except BotkitError as error:
        fail(error)


def _ending(action: str) -> click.Command:
    outcome = ACTIONS[action]
    what = (
        "everyone gets the canary's adapter" if outcome == PROMOTED else "everyone gets the control's adapter"
    )

    @config_option
    @backend_option
    @click.option(
        "--reason", default=None, help="why, kept with the canary (default: '<action> by an operator')"
    )
    @click.pass_obj
    def command(ctx: Context, backend: str, reason: str | None) -> None:
        settings = ctx.settings()
        why = reason or f"{action} by an operator"
        try:
            lines = ask_bot(settings, {"action": action, "backend": backend, "reason": why})
            if lines is None:
                plan = run_with_database(ctx, lambda bot: Canaries(bot.db).end(backend, outcome, why))
                lines = [
                    f"{plan.describe()}: {outcome} in the database; {NO_BOT}: a running bot takes it within "
                    "[finetune.canary] check_interval, one started later when it starts"
                ]
                if outcome == PROMOTED:
                    lines.append(
                        f"a bot started later answers with the backend's lora_path: to keep {plan.canary_lora!r} "
                        "after a restart, deploy its file with `botkit finetune deploy`"
                    )
        except BotkitError as error:
            fail(error)
        click.echo("\n".join(lines))

    command.__doc__ = f"End the canary: {what}, without a restart."
    return click.command(action)(command)


canary.add_command(_ending("promote"))
canary.add_command(_ending("rollback"))


def deploy_canary(settings: Settings, deployment: Deployment, share: float, echo: Echo, warn: Echo) -> None:
    """``deploy ADAPTER --canary SHARE``: the checks deploy makes, then a canary of the adapter in the running bot.

    The config is not written: the adapter must already be one of the backend's ``loras``.
    """
    from .deploy import check_deployment  # reads GGUF files: imported when the command runs

    if deployment.adapter is None:
        raise CanaryError(
            "a canary needs an adapter to try: 'none' with --canary is a rollback (canary rollback)"
        )
    _, slot = check_deployment(settings, deployment, echo, warn)
    name = canary_name(getattr(slot.settings, "loras", {}), deployment.adapter, slot.table)
    for line in start_canary(settings, slot.name, name, share):
        echo(line)


def canary_name(slot_loras: dict[str, Path | str], adapter: Path, table: str) -> str:
    """The name under which the backend's ``loras`` hold ``adapter`` (by path); ``CanaryError`` when none does."""
    for name, path in slot_loras.items():
        if Path(path).expanduser().resolve() == adapter.resolve():
            return name
    raise CanaryError(
        f"{adapter}: a canary answers with two adapters side by side, and [{table}] loras does not name this one: "
        f'add it (e.g. loras = {{ new = "{adapter}" }}), /reload the bot, then deploy --canary again'
    )
