"""``botkit overview``: the numbers of the web console's home page, as text or JSON (``botkit.overview_live``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime

import click

from botkit.errors import BotkitError
from botkit.ops import Context, config_option, fail, run_with_database
from botkit.overview import ActivityBucket, DatabaseState, ModerationBucket
from botkit.overview_live import LiveState, Overview, SpoolState, human_bytes, human_duration, read_overview
from botkit.storage import utcnow


def parse_moment(value: str | None) -> datetime:
    """``--at``: an ISO date and time (UTC unless it names a zone); now when not given."""
    if value is None:
        return utcnow()
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: give a date and time as YYYY-MM-DDTHH:MM, e.g. 2026-11-20T15:30"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option(
    "--at", "at", metavar="TIME", help="the overview as of TIME (UTC unless a zone is given), not now"
)
@click.pass_obj
def overview(ctx: Context, as_json: bool, at: str | None) -> None:
    """Messages and 👍/👎 per hour (24 h) and per day (7 days), moderation events per day, the database,
    the spool, and the running bot's backends and adapters (its control socket; "not known" without one).

    The same numbers as the web console's home page. Rate-limit refusals are not stored: they
    come from the running bot's metrics ([metrics] enabled), counted since it started.
    """
    now = parse_moment(at)
    try:
        found = run_with_database(ctx, lambda bot: read_overview(bot, now))
    except BotkitError as error:
        fail(error)
    if as_json:
        click.echo(json.dumps(found.as_json(), ensure_ascii=False, indent=2))
    else:
        click.echo("\n".join(overview_lines(found)))


def overview_lines(found: Overview) -> list[str]:
    """The overview as ``botkit overview`` prints it."""
    lines = [f"overview at {found.now.astimezone(UTC):%Y-%m-%d %H:%M} UTC"]
    lines += ["", "last 24 hours (UTC)", *activity_lines(found.hours, "%m-%d %H:00")]
    lines += ["", "last 7 days (UTC)", *activity_lines(found.days, "%Y-%m-%d")]
    lines += ["", "moderation events per day (UTC)", *moderation_lines(found.moderation)]
    if found.live is not None:
        lines += ["", *refusal_lines(found.live)]
    if found.database is not None:
        lines += ["", *database_lines(found.database)]
    if found.spool is not None:
        lines += ["", *spool_lines(found.spool)]
    if found.live is not None:
        lines += ["", *live_lines(found.live)]
    return lines


def activity_lines(buckets: Iterable[ActivityBucket], when: str) -> list[str]:
    lines = [f"  {'':<16}{'messages':>9}{'replies':>9}{'👍':>6}{'👎':>6}{'👎 rate':>9}"]
    for bucket in buckets:
        rate = "-" if bucket.negative_rate is None else f"{bucket.negative_rate:.0%}"
        lines.append(
            f"  {bucket.start.strftime(when):<16}{bucket.messages:>9}{bucket.replies:>9}"
            f"{bucket.positive:>6}{bucket.negative:>6}{rate:>9}"
        )
    return lines


def moderation_lines(days: Iterable[ModerationBucket]) -> list[str]:
    lines = []
    for day in days:
        kinds = ", ".join(
            f"{action} {category} {count}" for (action, category), count in sorted(day.counts.items())
        )
        lines.append(f"  {day.start:%Y-%m-%d}  {day.total}" + (f"  ({kinds})" if kinds else ""))
    return lines


def refusal_lines(live: LiveState) -> list[str]:
    head = "rate-limit refusals: not stored per day (a refused message is not kept)"
    if live.unknown is not None:
        return [f"{head}; since the bot started: not known (no running bot answered: below)"]
    if not live.metrics_on:
        return [f"{head}; since the bot started: not counted ([metrics] enabled = false)"]
    scopes = ", ".join(f"{scope} {count}" for scope, count in live.ratelimit_refusals.items())
    lines = [f"{head}; since the bot started: {live.ratelimit_total}" + (f" ({scopes})" if scopes else "")]
    if live.refused:
        lines.append("  every refusal by reason: " + ", ".join(f"{r} {n}" for r, n in live.refused.items()))
    return lines


def database_lines(state: DatabaseState) -> list[str]:
    revision = ", ".join(state.revisions) or "empty"
    size = human_bytes(state.size_bytes) if state.size_bytes is not None else "size not known"
    rows = ", ".join(f"{table} {count:,}" for table, count in state.rows.items())
    estimated = " (estimated)" if state.rows_estimated else ""
    return [
        f"database: {state.engine}, {state.url}",
        f"  revision {revision} ({'up to date' if state.up_to_date else 'out of date'}), {size}",
        f"  rows{estimated}: {rows}",
    ]


def spool_lines(spool: SpoolState) -> list[str]:
    if not spool.waiting_bytes:
        return [f"spool {spool.folder}: empty (nothing waits for the database)"]
    files = ", ".join(f"{name} {human_bytes(size)}" for name, size in spool.files.items() if size)
    return [f"spool {spool.folder}: {human_bytes(spool.waiting_bytes)} waiting for the database ({files})"]


def live_lines(live: LiveState) -> list[str]:
    if live.unknown is not None:
        return [f"running bot: {live.unknown}"]
    uptime = f", up {human_duration(live.uptime_s)}" if live.uptime_s is not None else ""
    lines = [f"running bot (pid {live.pid}, {live.source}): {'ready' if live.ready else 'NOT READY'}{uptime}"]
    lines += [f"  backend {backend.describe()}" for backend in live.backends]
    lines += [f"  adapter {adapter.name}: {adapter.detail}" for adapter in live.adapters] or [
        "  adapters: none"
    ]
    waiting = live.waiting_by_writer()
    if waiting:
        each = ", ".join(f"{writer} {queued} queued, {spooled} spooled" for writer, (queued, spooled) in waiting.items())
        lines.append(f"  records waiting for the database: {each}")
    return lines
