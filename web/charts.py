"""The overview's bar charts, laid out on the server: each bar's rectangles, tooltips and axis labels, and the same
numbers as a table, for ``templates/chart.html`` to draw as inline SVG (no script, no inline style: CSP).

A chart is a row of bars, each a stack of segments (votes up under down; moderation actions),
coloured by CSS class. ``overview_charts`` makes the home page's charts from an
``Overview`` (``botkit.ops.read_overview``): the numbers are those ``botkit overview`` prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

WIDTH = 600  # the SVG's coordinate system; CSS scales it to the page
HEIGHT = 170
LEFT = 44  # room for the y axis' labels
BOTTOM = 22  # room for the x axis' labels
TOP = 8
PLOT_HEIGHT = HEIGHT - TOP - BOTTOM
BAR_SHARE = 0.72  # of each bar's slot; the rest is the gap
MODERATION_ACTIONS = ("block", "redact", "flag")  # each has a colour; any other action is drawn as "other"


@dataclass(frozen=True, slots=True)
class Rect:
    x: float
    y: float
    width: float
    height: float
    css: str


@dataclass(frozen=True, slots=True)
class Bar:
    title: str  # its tooltip: when, and every number of it
    label: str  # under the axis; "" to leave this bar unlabelled
    label_x: float
    slot_x: float  # the bar's whole slot, which takes the pointer (a bar of 0 has a tooltip too)
    slot_width: float
    rects: tuple[Rect, ...]


@dataclass(frozen=True, slots=True)
class Chart:
    key: str  # for ids
    caption: str
    summary: str  # the numbers in one sentence: the SVG's accessible description
    bars: tuple[Bar, ...]
    top: int  # the y axis' top value
    legend: tuple[tuple[str, str], ...]  # (css class, name)
    columns: tuple[str, ...]  # the table's headings
    rows: tuple[tuple[str, ...], ...]  # the table: the same numbers as the bars
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    plot_top: int = TOP
    plot_bottom: int = TOP + PLOT_HEIGHT


def axis_top(value: int) -> int:
    """The y axis' top: ``value`` rounded up to 1, 2 or 5 times a power of ten (at least 1)."""
    step = 1
    while True:
        for multiple in (1, 2, 5):
            if value <= multiple * step:
                return multiple * step
        step *= 10


def bar_chart(
    key: str,
    caption: str,
    summary: str,
    bars: Sequence[tuple[str, str, Sequence[tuple[int, str]]]],
    legend: Sequence[tuple[str, str]],
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
) -> Chart:
    """Lay out ``bars``, each ``(label, title, [(value, css class), ...])`` stacked from the bottom."""
    top = axis_top(max((sum(value for value, _ in segments) for _, _, segments in bars), default=0))
    slot = (WIDTH - LEFT) / max(len(bars), 1)
    width = slot * BAR_SHARE
    laid = []
    for number, (label, title, segments) in enumerate(bars):
        x = LEFT + number * slot + (slot - width) / 2
        base = TOP + PLOT_HEIGHT
        rects = []
        for value, css in segments:
            if value <= 0:
                continue
            height = PLOT_HEIGHT * value / top
            base -= height
            rects.append(Rect(round(x, 1), round(base, 1), round(width, 1), round(height, 1), css))
        slot_x = round(LEFT + number * slot, 1)
        laid.append(Bar(title, label, round(x + width / 2, 1), slot_x, round(slot, 1), tuple(rects)))
    return Chart(
        key,
        caption,
        summary,
        tuple(laid),
        top,
        tuple(legend),
        tuple(columns),
        tuple(tuple(row) for row in rows),
    )


def _rate(positive: int, negative: int) -> str:
    votes = positive + negative
    return f"{negative / votes:.0%}" if votes else "-"


def activity_charts(key: str, buckets: Sequence[Any], hourly: bool) -> list[Chart]:
    """The messages chart and the votes chart (👍 up, 👎 down) of ``ActivityBucket``s (hours or days).

    Votes are words on the page: a browser without an emoji font would draw 👍 and 👎 as boxes."""
    span = "last 24 hours" if hourly else "last 7 days"
    unit = "hour" if hourly else "day"

    def when(bucket: Any) -> str:
        return f"{bucket.start:%m-%d %H:00}" if hourly else f"{bucket.start:%a %Y-%m-%d}"

    def label(number: int, bucket: Any) -> str:
        if hourly:
            return f"{bucket.start:%H}" if number % 3 == 0 else ""
        return f"{bucket.start:%a %d}"

    messages = sum(bucket.messages for bucket in buckets)
    replies = sum(bucket.replies for bucket in buckets)
    positive = sum(bucket.positive for bucket in buckets)
    negative = sum(bucket.negative for bucket in buckets)
    message_chart = bar_chart(
        f"{key}-messages",
        f"Messages per {unit}, {span} (UTC)",
        f"{messages} messages from users and {replies} replies in the {span}.",
        [
            (
                label(number, bucket),
                f"{when(bucket)} UTC: {bucket.messages} messages, {bucket.replies} replies",
                [(bucket.messages, "bar-messages")],
            )
            for number, bucket in enumerate(buckets)
        ],
        [("bar-messages", "messages from users")],
        ("UTC", "messages", "replies"),
        [(when(bucket), str(bucket.messages), str(bucket.replies)) for bucket in buckets],
    )
    vote_chart = bar_chart(
        f"{key}-votes",
        f"Votes per {unit}, {span} (UTC)",
        f"{positive} up and {negative} down in the {span} ({_rate(positive, negative)} down).",
        [
            (
                label(number, bucket),
                f"{when(bucket)} UTC: {bucket.positive} up, {bucket.negative} down "
                f"({_rate(bucket.positive, bucket.negative)} down)",
                [(bucket.positive, "bar-positive"), (bucket.negative, "bar-negative")],
            )
            for number, bucket in enumerate(buckets)
        ],
        [("bar-positive", "up"), ("bar-negative", "down")],
        ("UTC", "up", "down", "down rate"),
        [
            (
                when(bucket),
                str(bucket.positive),
                str(bucket.negative),
                _rate(bucket.positive, bucket.negative),
            )
            for bucket in buckets
        ],
    )
    return [message_chart, vote_chart]


def moderation_chart(days: Sequence[Any]) -> Chart:
    """Moderation events per day (``ModerationBucket``s), stacked by action; the categories in each tooltip."""

    def action_class(action: str) -> str:
        return f"bar-{action}" if action in MODERATION_ACTIONS else "bar-other"

    def details(day: Any) -> str:
        return ", ".join(
            f"{action} {category} {count}" for (action, category), count in sorted(day.counts.items())
        )

    bars = []
    for day in days:
        by_class: dict[str, int] = {}
        for action, count in day.by_action().items():
            css = action_class(action)
            by_class[css] = by_class.get(css, 0) + count
        segments = [(by_class.get(f"bar-{a}", 0), f"bar-{a}") for a in (*MODERATION_ACTIONS, "other")]
        title = f"{day.start:%a %Y-%m-%d} UTC: {day.total} events" + (
            f" ({details(day)})" if day.total else ""
        )
        bars.append((f"{day.start:%a %d}", title, segments))
    total = sum(day.total for day in days)
    return bar_chart(
        "moderation",
        "Moderation events per day, last 7 days (UTC)",
        f"{total} moderation events in the last 7 days.",
        bars,
        [(f"bar-{action}", action) for action in (*MODERATION_ACTIONS, "other")],
        ("UTC", "events", "by action and category"),
        [(f"{day.start:%a %Y-%m-%d}", str(day.total), details(day) or "-") for day in days],
    )


def overview_charts(overview: Any) -> list[Chart]:
    """The home page's charts of an ``Overview``: messages and votes per hour and per day, moderation per day."""
    return [
        *activity_charts("hours", overview.hours, hourly=True),
        *activity_charts("days", overview.days, hourly=False),
        moderation_chart(overview.moderation),
    ]
