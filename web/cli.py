"""``botkit web`` (serve the console) and ``botkit web user add|list|remove`` (its accounts)."""

from __future__ import annotations

import os
from typing import Any

import click

from botkit import BotkitError, ConfigError
from botkit.ops import Context, config_option, config_table, fail, run_with_database

from . import missing_web_stack
from .settings import ROLES, WebSettings, check_listen

PASSWORD_ENV = "BOTKIT_WEB_PASSWORD"


def _require_web_stack() -> None:
    missing = missing_web_stack()
    if missing:
        fail(ConfigError(missing))


def _run(ctx: Context, action: Any) -> Any:
    try:
        return run_with_database(ctx, action)
    except BotkitError as error:
        fail(error)


@click.group(invoke_without_command=True)
@config_option
@click.option("--listen", help="HOST:PORT to listen on, instead of [web] listen (default 127.0.0.1:8765)")
@click.pass_context
def web(click_ctx: click.Context, listen: str | None) -> None:
    """Serve the web console until stopped (Ctrl-C or SIGTERM); log in with an account of `botkit web user add`."""
    if click_ctx.invoked_subcommand is not None:
        return
    _require_web_stack()
    ctx: Context = click_ctx.ensure_object(Context)
    try:
        settings = config_table(ctx.settings(), "web", WebSettings)
        if listen is not None:
            try:
                settings = settings.model_copy(update={"listen": check_listen(listen)})
            except ValueError as error:
                raise ConfigError(f"--listen {listen!r}: {error}") from None
    except BotkitError as error:
        fail(error)
    from .server import bind, console_server, exposure_warning

    warning = exposure_warning(settings)
    if warning:
        click.echo(f"botkit: warning: {warning}", err=True)

    async def serve(bot: Any) -> None:
        listening = bind(settings)
        server = console_server(bot, settings, live=False)
        server.stop_on_signals()
        click.echo(f"botkit web console on {'https' if settings.https else 'http'}://{settings.listen}/", err=True)
        await server.serve(sockets=[listening])

    try:
        _run(ctx, serve)
    except KeyboardInterrupt:
        pass


@web.group()
def user() -> None:
    """The console's accounts: admins see everything; reviewers see conversations and the review queue."""


@user.command("add")
@config_option
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True, help="what the account may see")
@click.pass_obj
def user_add(ctx: Context, name: str, role: str) -> None:
    """Add account NAME. The password is asked for, or read from $BOTKIT_WEB_PASSWORD (never from the config)."""
    _require_web_stack()
    from .accounts import add_account, check_new_account

    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        password = click.prompt(f"Password for {name}", hide_input=True, confirmation_prompt=True)
    try:
        check_new_account(name, role, password)  # before connecting: a typo costs no migration
    except BotkitError as error:
        fail(error)
    _run(ctx, lambda bot: add_account(bot.db, name, role, password))
    click.echo(f"account {name} added ({role})")


@user.command("list")
@config_option
@click.pass_obj
def user_list(ctx: Context) -> None:
    """List the accounts and their roles."""
    _require_web_stack()
    from .accounts import list_accounts

    accounts = _run(ctx, lambda bot: list_accounts(bot.db))
    if not accounts:
        click.echo("no accounts: add one with `botkit web user add NAME --role admin`")
    for name, role in accounts:
        click.echo(f"{name}  {role}")


@user.command("remove")
@config_option
@click.argument("name")
@click.pass_obj
def user_remove(ctx: Context, name: str) -> None:
    """Remove account NAME; its logins end at once."""
    _require_web_stack()
    from .accounts import remove_account

    _run(ctx, lambda bot: remove_account(bot.db, name))
    click.echo(f"account {name} removed")


