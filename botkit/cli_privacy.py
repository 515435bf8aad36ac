"""The ``botkit privacy`` commands: what is stored about a user, their opt-out, and forgetting them.

For operators answering a user's data request: ``show`` tells what ``/mydata`` tells the
user (their messages' text only with ``--text``), ``forget`` does what ``/forgetme
confirm`` does, after asking. The same functions serve the chat commands and the web
console's privacy page (``botkit.storage.privacy``).
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

import click

from botkit.bot import Bot
from botkit.errors import BotkitError
from botkit.ops import Context, config_option, fail, forget_user_beside, run_with_database
from botkit.storage import UserData, count_user_rows, find_user, opt_in, opt_out, user_data

DEFAULT_TEXT_LIMIT = 500  # the newest messages `show --text` prints, as /mydata's default


def _run(ctx: Context, action: Any) -> Any:
    try:
        return run_with_database(ctx, action)
    except BotkitError as error:
        fail(error)


def _when(at: datetime) -> str:
    return f"{at:%Y-%m-%d %H:%M} UTC"


platform_option = click.option(
    "--platform", "-p", required=True, help="the user's platform: slack, discord, console..."
)
user_argument = click.argument("user")


@click.group()
def privacy() -> None:
    """A user's stored data, their opt-out of training, and forgetting them (data requests)."""


def data_lines(data: UserData) -> list[str]:
    """``botkit privacy show``'s lines about a user, their messages' text left out."""
    user = data.user
    name = f" ({user.display_name})" if user.display_name else ""
    opted = f"opted out since {_when(data.opted_out_at)}" if data.opted_out_at else "allowed"
    lines = [
        f"{user.key}{name}: known since {_when(user.created_at)}, last seen {_when(user.last_seen_at)}",
        f"training exports: {opted}",
        f"stored: {data.messages} messages, {data.feedback} feedback entries, "
        f"{data.moderation_events} moderation events",
    ]
    for place in data.places:
        lines.append(
            f"  {place.platform}:{place.channel_id}: {place.messages} messages, the last {_when(place.last_at)}"
        )
    return lines


@privacy.command("show")
@config_option
@platform_option
@user_argument
@click.option("--text", "with_text", is_flag=True, help="also print the text of their newest messages")
@click.option(
    "--limit", type=click.IntRange(min=1), default=DEFAULT_TEXT_LIMIT, show_default=True,
    help="most messages --text prints",
)  # fmt: skip
@click.pass_obj
def privacy_show(ctx: Context, platform: str, user: str, with_text: bool, limit: int) -> None:
    """What is stored about USER (their platform id or display name), as /mydata tells them.

    Counts of their messages, feedback and moderation events, where they wrote, their
    opt-out, and what forgetting them would delete. Their messages' text only with --text.
    """

    async def action(bot: Bot) -> None:
        found = await find_user(bot.db, platform, user)
        data = await user_data(bot.db, found.platform, found.platform_user_id, limit if with_text else 0)
        if data is None:  # forgotten since it was found
            click.echo(f"{found.key}: nothing is stored any more")
            return
        rows = await count_user_rows(bot.db, found.platform, found.platform_user_id)
        for line in data_lines(data):
            click.echo(line)
        click.echo(f"forgetting them deletes: {rows.describe()}")
        if with_text:
            shown = len(data.newest)
            older = f" ({data.messages - shown} older not shown; --limit)" if data.messages > shown else ""
            click.echo(f"their newest {shown} messages{older}:")
            for message in data.newest:
                click.echo(f"[{message.created_at:%Y-%m-%d %H:%M}] #{message.channel_id}: {message.text}")

    _run(ctx, action)


@privacy.command("forget")
@config_option
@platform_option
@user_argument
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@click.pass_obj
def privacy_forget(ctx: Context, platform: str, user: str, yes: bool) -> None:
    """Delete everything stored about USER (their platform id or display name), as /forgetme does.

    Says what goes and asks first (--yes does not). A bot running on this config does the
    deletion itself, so that its caches and pending writes let go of the user too.
    """

    async def action(bot: Bot) -> bool:
        found = await find_user(bot.db, platform, user)
        rows = await count_user_rows(bot.db, found.platform, found.platform_user_id)
        name = f" ({found.display_name})" if found.display_name else ""
        click.echo(f"Forgetting {found.key}{name} deletes {rows.describe()}. It cannot be undone.", err=True)
        if not yes:
            try:
                if not click.confirm("Forget them?", default=False, err=True):
                    return False
            except click.Abort:  # no answer: end of input, Ctrl-C
                click.echo(err=True)
                return False
        deleted, where = await forget_user_beside(bot, found.platform, found.platform_user_id)
        click.echo(f"{found.key}: forgotten by {where}: deleted {deleted.describe()}")
        return True

    if not _run(ctx, action):
        click.echo("botkit: forget cancelled: nothing was deleted (--yes does not ask)", err=True)
        sys.exit(1)


def _switch(ctx: Context, platform: str, user: str, out: bool) -> None:
    async def action(bot: Bot) -> None:
        found = await find_user(bot.db, platform, user)
        if out:
            changed = await opt_out(bot.db, found.platform, found.platform_user_id, via="botkit privacy")
            state = "opted out: their messages are never exported for training"
        else:
            changed = await opt_in(bot.db, found.platform, found.platform_user_id)
            state = "not opted out: their messages may be exported for training"
        click.echo(f"{found.key}: {state}{'' if changed else ' (already so: nothing changed)'}")

    _run(ctx, action)


@privacy.command("optout")
@config_option
@platform_option
@user_argument
@click.pass_obj
def privacy_optout(ctx: Context, platform: str, user: str) -> None:
    """Never export USER's messages for training, as their /optout does."""
    _switch(ctx, platform, user, out=True)


@privacy.command("optin")
@config_option
@platform_option
@user_argument
@click.pass_obj
def privacy_optin(ctx: Context, platform: str, user: str) -> None:
    """Undo USER's opt-out, as their /optin does."""
    _switch(ctx, platform, user, out=False)
