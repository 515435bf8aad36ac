"""The overview's numbers from the database: messages and 👍/👎 per hour and per day, moderation events per day,
and the database's own state.

``botkit overview`` prints them and the web console's home page charts them; both call
``read_overview`` (``botkit.overview_live`` adds what the running bot says). Every count is
taken in the database, so that no row is read into Python: messages by a count per bucket's
range of ``created_at`` (``messages_per_bucket``), votes and moderation events grouped by a
time bucket (``time_buckets``, for SQLite and PostgreSQL) within the window's range, so that
an index on ``created_at`` serves each query. Times are UTC; a bucket
holds ``[start, start + step)``, and the last one holds ``now``.

Rate-limit refusals are not stored anywhere in the database (a refused message never
reaches memory): the running bot's metrics count them since it started
(``botkit.overview_live``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    CompoundSelect,
    Integer,
    case,
    cast,
    extract,
    func,
    literal,
    literal_column,
    select,
    text,
    union_all,
)
from sqlalchemy.sql.elements import ColumnElement

from botkit.storage import Database, FeedbackRecord, MessageRecord, ModerationEventRecord
from botkit.storage.migrations import Migrator

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
DAYS = 7  # the days charted, today included
HOURS = 24  # the hours charted, this one included
# The tables whose rows the overview counts (estimated on PostgreSQL), in the order shown.
COUNTED_TABLES = ("messages", "conversations", "users", "feedback", "moderation_events")


@dataclass(frozen=True, slots=True)
class Window:
    """``count`` buckets of ``step`` from ``start``: the last one holds the moment the window was made for."""

    start: datetime
    step: timedelta
    count: int

    @property
    def end(self) -> datetime:
        return self.start + self.step * self.count

    def starts(self) -> list[datetime]:
        return [self.start + self.step * number for number in range(self.count)]


def hours_of_the_week(now: datetime) -> Window:
    """Hourly buckets from midnight (UTC) six days before ``now``'s day up to ``now``'s hour: the week's
    days are sums of 24 of them, and the last 24 hours are the last 24 of them."""
    now = now.astimezone(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return Window(midnight - DAY * (DAYS - 1), HOUR, (DAYS - 1) * 24 + now.hour + 1)


def days_of_the_week(now: datetime) -> Window:
    """The last ``DAYS`` UTC days, today (up to ``now``) the last."""
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return Window(midnight - DAY * (DAYS - 1), DAY, DAYS)


# SQLite keeps a timestamp as UTC text, "YYYY-MM-DD HH:MM:SS.ffffff": an hour is its first 13
# characters, a day its first 10. Cutting text costs a third less than parsing it as a date.
SQLITE_PREFIX = {HOUR: 13, DAY: 10}


@dataclass(frozen=True, slots=True)
class Buckets:
    """How the database names the bucket of a timestamp column, and which of the window's buckets a name is."""

    key: ColumnElement[Any]  # SQL: the bucket of the column, to GROUP BY
    numbers: dict[Any, int] | None  # the key of each bucket -> its number; None: the key is the number

    def number(self, key: Any) -> int | None:
        return self.numbers.get(key) if self.numbers is not None else int(key)


def time_buckets(db: Database, column: Any, window: Window) -> Buckets:
    """The bucket of ``column`` (a timestamp in ``window``) in SQL, for SQLite and PostgreSQL.

    SQLite: the prefix of the stored text (hours and days). PostgreSQL: the bucket's number,
    from the epoch, with whole numbers spelled out as literals (never bound parameters), so
    that the expression in GROUP BY is the one in SELECT, as PostgreSQL requires.
    """
    if db.is_sqlite:
        length = SQLITE_PREFIX.get(window.step)
        if length is None:
            raise ValueError(f"a window's step is an hour or a day, not {window.step}")
        keys = {start.strftime("%Y-%m-%d %H:%M:%S")[:length]: n for n, start in enumerate(window.starts())}
        return Buckets(func.substr(column, 1, length), keys)
    origin = literal_column(str(int(window.start.timestamp())))
    seconds = literal_column(str(int(window.step.total_seconds())))
    return Buckets(cast(func.floor((extract("epoch", column) - origin) / seconds), Integer), None)


@dataclass(slots=True)
class ActivityBucket:
    """What one hour or day held: users' messages, the bot's replies, and the 👍 / 👎 given then."""

    start: datetime
    messages: int = 0
    replies: int = 0
    positive: int = 0
    negative: int = 0

    @property
    def votes(self) -> int:
        return self.positive + self.negative

    @property
    def negative_rate(self) -> float | None:
        """👎 among the 👍 and 👎 (as ``botkit finetune canary status`` counts them); None without votes."""
        return self.negative / self.votes if self.votes else None

    def as_json(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "messages": self.messages,
            "replies": self.replies,
            "positive": self.positive,
            "negative": self.negative,
            "negative_rate": self.negative_rate,
        }


def messages_per_bucket(window: Window) -> CompoundSelect:
    """One statement: for each bucket of ``window``, its number, its messages and the bot's replies among them.

    A count per bucket's range of ``created_at``, rather than one GROUP BY on a bucket
    expression: each reads its stretch of ``ix_messages_created_at_role`` and nothing else,
    where the GROUP BY sorted every row of the window (at 1M messages in a week, about 60 ms
    against 400 ms on SQLite).
    """
    assistant = case((MessageRecord.role == "assistant", 1), else_=0)
    return union_all(
        *(
            select(literal(number), func.count(), func.sum(assistant)).where(
                MessageRecord.created_at >= start, MessageRecord.created_at < start + window.step
            )
            for number, start in enumerate(window.starts())
        )
    )


async def activity(db: Database, window: Window) -> list[ActivityBucket]:
    """Messages (by role) and votes (👍: a reaction scored above 0, 👎: at or below) in each bucket of ``window``.

    A message counts in the bucket it was stored in, a vote in the one it was given in.
    Reads ``ix_messages_created_at_role`` alone (and an index on ``feedback.created_at`` where there is one).
    """
    buckets = [ActivityBucket(start) for start in window.starts()]
    vote_bucket = time_buckets(db, FeedbackRecord.created_at, window)
    positive = FeedbackRecord.score > 0
    async with db.session() as session:
        messages = await session.execute(messages_per_bucket(window))
        votes = await session.execute(
            select(vote_bucket.key, positive, func.count())
            .where(
                FeedbackRecord.created_at >= window.start,
                FeedbackRecord.created_at < window.end,
                FeedbackRecord.kind == "reaction",
                FeedbackRecord.score.is_not(None),
            )
            .group_by(vote_bucket.key, positive)
        )
        for number, count, replies in messages.all():
            buckets[number].messages += count - (replies or 0)
            buckets[number].replies += replies or 0
        for key, good, count in votes.all():
            number = vote_bucket.number(key)
            if number is not None and 0 <= number < window.count:
                if good:
                    buckets[number].positive += count
                else:
                    buckets[number].negative += count
    return buckets


def by_day(hours: list[ActivityBucket]) -> list[ActivityBucket]:
    """Hourly buckets from a midnight (``hours_of_the_week``) summed into days (the last one may be partial)."""
    days = []
    for first in range(0, len(hours), 24):
        day = ActivityBucket(hours[first].start)
        for hour in hours[first : first + 24]:
            day.messages += hour.messages
            day.replies += hour.replies
            day.positive += hour.positive
            day.negative += hour.negative
        days.append(day)
    return days


@dataclass(slots=True)
class ModerationBucket:
    """The moderation events of one day, by (action, category)."""

    start: datetime
    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def by_action(self) -> dict[str, int]:
        actions: dict[str, int] = defaultdict(int)
        for (action, _), count in self.counts.items():
            actions[action] += count
        return dict(sorted(actions.items()))

    def as_json(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "total": self.total,
            "events": [
                {"action": action, "category": category, "count": count}
                for (action, category), count in sorted(self.counts.items())
            ],
        }


async def moderation_per_day(db: Database, window: Window) -> list[ModerationBucket]:
    """Moderation events (input and output) in each bucket of ``window``, by action and category.

    Reads a range of ``moderation_events.created_at`` (served by an index on it where there is one).
    """
    buckets = [ModerationBucket(start) for start in window.starts()]
    day = time_buckets(db, ModerationEventRecord.created_at, window)
    async with db.session() as session:
        rows = await session.execute(
            select(day.key, ModerationEventRecord.action, ModerationEventRecord.category, func.count())
            .where(
                ModerationEventRecord.created_at >= window.start,
                ModerationEventRecord.created_at < window.end,
            )
            .group_by(day.key, ModerationEventRecord.action, ModerationEventRecord.category)
        )
        for key, action, category, count in rows.all():
            number = day.number(key)
            if number is not None and 0 <= number < window.count:
                buckets[number].counts[(action, category)] = count
    return buckets


@dataclass(frozen=True, slots=True)
class DatabaseState:
    """Which database, its schema revision, its size and its main tables' rows."""

    engine: str  # "sqlite" or "postgresql"
    url: str  # password masked
    revisions: tuple[str, ...]
    up_to_date: bool
    size_bytes: int | None  # None: not known (an in-memory SQLite database)
    rows: dict[str, int]
    rows_estimated: bool  # PostgreSQL's planner estimates (pg_class.reltuples), not counts

    def as_json(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "url": self.url,
            "revisions": list(self.revisions),
            "up_to_date": self.up_to_date,
            "size_bytes": self.size_bytes,
            "rows": self.rows,
            "rows_estimated": self.rows_estimated,
        }


async def database_state(db: Database, migrator: Migrator) -> DatabaseState:
    """The database's engine, revision, size and row counts: each cheap at any size.

    SQLite: the file's size (with its write-ahead log) and exact counts. PostgreSQL:
    ``pg_database_size`` and the planner's row estimates, kept by autovacuum's ANALYZE; a
    table never analysed yet (estimate -1) is counted.
    """
    current = await migrator.current()
    async with db.session() as session:
        if db.is_sqlite:
            rows = {
                table: int(await session.scalar(text(f"SELECT count(*) FROM {table}")) or 0)
                for table in COUNTED_TABLES
            }
            estimated = False
        else:
            found = await session.execute(
                text(
                    "SELECT c.relname, c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND c.relname = ANY(:names)"
                ),
                {"names": list(COUNTED_TABLES)},
            )
            estimates = {name: int(tuples) for name, tuples in found.all()}
            rows = {}
            for table in COUNTED_TABLES:
                estimate = estimates.get(table, -1)
                if estimate < 0:
                    estimate = int(await session.scalar(text(f"SELECT count(*) FROM {table}")) or 0)
                rows[table] = estimate
            estimated = True
        size = (
            None
            if db.is_sqlite
            else await session.scalar(text("SELECT pg_database_size(current_database())"))
        )
    if db.is_sqlite:
        size = sqlite_size(db)
    return DatabaseState(
        engine=db.url.get_backend_name(),
        url=db.display_url,
        revisions=tuple(sorted(current)),
        up_to_date=migrator.up_to_date(current),
        size_bytes=int(size) if size is not None else None,
        rows=rows,
        rows_estimated=estimated,
    )


def sqlite_size(db: Database) -> int | None:
    """Bytes of the SQLite file and its write-ahead log; None for an in-memory database."""
    path = db.sqlite_path
    if path is None or str(path) == ":memory:":
        return None
    total = 0
    for part in (path, path.with_name(path.name + "-wal")):
        try:
            total += part.stat().st_size
        except FileNotFoundError:
            pass
    return total
