"""The ``botkit db`` commands: upgrade, downgrade, current, history and backup of the bot's database."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from botkit.bot import Bot
from botkit.db_guard import bots_using
from botkit.errors import BotkitError, DatabaseInUse
from botkit.ops import Context, config_option, fail, run_with_database
from botkit.storage import Database
from botkit.storage.backup import backup_sqlite, pg_dump_command, timestamped_path


@click.group()
def db() -> None:
    """Manage the database: migrations and backups."""


def with_migrator(ctx: Context, action: Any) -> Any:
    """Run ``action(bot)`` with the database connected (no model is loaded, no schema check)."""
    try:
        return run_with_database(ctx, action, check_schema=False)
    except BotkitError as error:
        fail(error)


force_option = click.option(
    "--force", is_flag=True, help="change the schema even though a running bot uses the database"
)


async def refuse_while_bots_run(bot: Bot, force: bool, change: str) -> None:
    """Raise ``DatabaseInUse`` when a running bot uses the database (``botkit.db_guard``), unless ``force``."""
    found = await bots_using(bot.db, bot.settings)
    if not found:
        return
    if force:
        click.echo(f"botkit: warning: {'; '.join(found)}; going on (--force)", err=True)
        return
    raise DatabaseInUse(
        f"not {change} {bot.db.display_url}: a running bot uses it: {'; '.join(found)}. A bot whose "
        "schema changes under it fails or writes wrong rows: stop it (every replica) first, or pass "
        "--force to go on anyway"
    )


@db.command("upgrade")
@config_option
@click.argument("revision", default="heads")
@force_option
@click.pass_obj
def db_upgrade(ctx: Context, revision: str, force: bool) -> None:
    """Apply migrations up to REVISION (default: the newest of every branch).

    Refused while a running bot uses the database (--force goes on).
    """

    async def action(bot: Bot) -> None:
        await refuse_while_bots_run(bot, force, "upgrading")
        before = await bot.migrator.current()
        await bot.migrator.upgrade(revision)
        after = await bot.migrator.current()
        click.echo(f"{bot.db.display_url}: {describe_revisions(before)} -> {describe_revisions(after)}")

    with_migrator(ctx, action)


def relative_revision(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Let '-1' through as a revision (the command ignores unknown options for it); a typo such as
    '--yse' is still an unknown option."""
    if value.startswith("-") and not value[1:].isdigit():
        raise click.NoSuchOption(value, ctx=ctx)
    return value


# ignore_unknown_options: click would read '-1' as an option and refuse it.
@db.command("downgrade", context_settings={"ignore_unknown_options": True})
@config_option
@click.argument("revision", callback=relative_revision)
@force_option
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@click.pass_obj
def db_downgrade(ctx: Context, revision: str, force: bool, yes: bool) -> None:
    """Undo migrations down to REVISION ('-1' for one step, 'base' for an empty database).

    A downgrade drops tables or columns with their data: it asks first (--yes does not),
    and backs up a SQLite database next to its file (PostgreSQL: run pg_dump first).
    Refused while a running bot uses the database (--force goes on).
    """

    async def action(bot: Bot) -> bool:
        await refuse_while_bots_run(bot, force, "downgrading")
        before = await bot.migrator.current()
        if not before:
            click.echo(f"{bot.db.display_url}: empty: nothing to downgrade")
            return True
        backup = timestamped_path(bot.db, "before-downgrade") if bot.db.is_sqlite else None
        if not confirm_downgrade(bot.db, before, revision, backup, yes):
            return False
        if backup is not None:
            size = backup_sqlite(bot.db, backup)
            click.echo(f"backed up {bot.db.display_url} to {backup} ({size:,} bytes)")
        await bot.migrator.downgrade(revision)
        after = await bot.migrator.current()
        click.echo(f"{bot.db.display_url}: {describe_revisions(before)} -> {describe_revisions(after)}")
        return True

    if not with_migrator(ctx, action):
        click.echo("botkit: downgrade cancelled: nothing changed (--yes does not ask)", err=True)
        sys.exit(1)


def confirm_downgrade(db: Database, before: set[str], revision: str, backup: Path | None, yes: bool) -> bool:
    """Say what the downgrade loses and what is kept; ask unless ``yes``. False: not confirmed."""
    if revision == "base" or revision.endswith("@base"):
        loses = "drops every table of " + ("its branch" if "@" in revision else "botkit and its plugins")
    else:
        loses = "undoes migrations, which may drop tables and columns"
    if backup is not None:
        kept = f"a backup is made first: {backup}"
    else:
        kept = f"no backup is made of a PostgreSQL database: make one first, e.g. {pg_dump_command(db)}"
    click.echo(
        f"Downgrading {db.display_url} from {describe_revisions(before)} to {revision} {loses}, "
        f"with the data in them; {kept}",
        err=True,
    )
    if yes:
        return True
    try:
        return click.confirm("Downgrade?", default=False, err=True)
    except click.Abort:  # no answer: end of input, Ctrl-C
        click.echo(err=True)
        return False


@db.command("current")
@config_option
@click.pass_obj
def db_current(ctx: Context) -> None:
    """Show the database's revision and whether it is up to date."""

    async def action(bot: Bot) -> None:
        current, heads = await bot.migrator.current(), bot.migrator.heads()
        state = (
            "up to date"
            if bot.migrator.up_to_date(current)
            else f"out of date (newest: {describe_revisions(heads)})"
        )
        click.echo(f"{bot.db.display_url}: {describe_revisions(current)} ({state})")

    with_migrator(ctx, action)


@db.command("history")
@config_option
@click.pass_obj
def db_history(ctx: Context) -> None:
    """List every known migration, newest first."""
    try:
        bot = Bot.load(ctx.settings())
    except BotkitError as error:
        fail(error)
    click.echo(bot.migrator.history().rstrip())


@db.command("backup")
@config_option
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--overwrite", is_flag=True, help="replace PATH if it exists")
@click.pass_obj
def db_backup(ctx: Context, path: Path, overwrite: bool) -> None:
    """Copy the SQLite database to PATH while the bot may be running (online backup).

    For PostgreSQL use pg_dump (see docs/storage.md).
    """
    try:
        bot = Bot.load(ctx.settings())
        copied = backup_sqlite(bot.db, path, overwrite=overwrite)
    except BotkitError as error:
        fail(error)
    click.echo(f"backed up {bot.db.display_url} to {path} ({copied:,} bytes)")


def describe_revisions(revisions: set[str]) -> str:
    return ", ".join(sorted(revisions)) or "empty"
