"""The whole overview: the database's numbers (``botkit.overview``), what the running bot says, and the spool on disk.

``read_overview`` is what ``botkit overview`` prints and the web console's home page
shows. The running bot is asked where it is: in this process (the console inside
``botkit run``), else through its control socket (``botkit web`` beside it, ``botkit
overview``); when neither answers, its state is "not known" and says why, never guessed.
Its metrics, when ``[metrics]`` is on, add what no table keeps: rate-limit refusals and
the write-behind writers' queues, counted since the bot started.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from botkit.api import BackendStatus
from botkit.backend_set import status_from_summary
from botkit.control import control_socket_path, request, status_answer
from botkit.errors import BotkitError, NoRunningBot
from botkit.overview import (
    HOURS,
    ActivityBucket,
    DatabaseState,
    ModerationBucket,
    activity,
    by_day,
    database_state,
    days_of_the_week,
    hours_of_the_week,
    moderation_per_day,
)
from botkit.storage import StorageSettings

if TYPE_CHECKING:
    from botkit.bot import Bot

NOT_KNOWN = "not known: no running bot reachable"
ASK_TIMEOUT = 2.0  # seconds the running bot has to answer each question: a page must not hang on it


@dataclass(frozen=True, slots=True)
class AdapterState:
    name: str
    connected: bool
    detail: str  # "connected", "not connected", "not started yet"


@dataclass(frozen=True, slots=True)
class LiveState:
    """What the running bot says of itself; ``unknown`` (then nothing else) when no bot answered."""

    source: str  # "this process" or "control socket <path>"
    unknown: str | None = None
    pid: int | None = None
    ready: bool | None = None
    uptime_s: float | None = None
    backends: tuple[BackendStatus, ...] = ()
    adapters: tuple[AdapterState, ...] = ()
    metrics_on: bool = False  # the counters below are known ([metrics] enabled)
    refused: dict[str, int] = field(default_factory=dict)  # messages refused since start, by reason
    ratelimit_refusals: dict[str, int] = field(default_factory=dict)  # by the limit's scope
    write_queues: dict[str, int] = field(default_factory=dict)  # records waiting, by writer
    spooled: dict[str, int] = field(default_factory=dict)  # records in the on-disk spool, by writer

    @property
    def ratelimit_total(self) -> int:
        return sum(self.ratelimit_refusals.values())

    def waiting_by_writer(self) -> dict[str, tuple[int, int]]:
        """Each write-behind writer's records (queued in memory, in the on-disk spool), from the metrics."""
        writers = sorted(set(self.write_queues) | set(self.spooled))
        return {writer: (self.write_queues.get(writer, 0), self.spooled.get(writer, 0)) for writer in writers}

    def as_json(self) -> dict[str, Any]:
        if self.unknown is not None:
            return {"source": self.source, "unknown": self.unknown}
        return {
            "source": self.source,
            "pid": self.pid,
            "ready": self.ready,
            "uptime_s": self.uptime_s,
            "backends": [
                {
                    "name": backend.name,
                    "type": backend.type,
                    "model": backend.model,
                    "lora": backend.lora,
                    "generating": backend.generating,
                    "waiting": backend.waiting,
                    "concurrency": backend.concurrency,
                    "queue_limit": backend.queue_limit,
                    "slots": backend.engine.slots if backend.engine else None,
                    "slots_in_use": backend.engine.slots_in_use if backend.engine else None,
                }
                for backend in self.backends
            ],
            "adapters": [
                {"name": adapter.name, "connected": adapter.connected, "detail": adapter.detail}
                for adapter in self.adapters
            ],
            "metrics": {
                "refused": self.refused,
                "ratelimit_refusals": self.ratelimit_refusals,
                "write_queues": self.write_queues,
                "spooled": self.spooled,
            }
            if self.metrics_on
            else None,
        }


def live_from_answers(source: str, status: Mapping[str, Any], metrics: str | None) -> LiveState:
    """``LiveState`` from a ``status`` answer (``botkit.control``) and the Prometheus text of its metrics."""
    try:
        backends = tuple(status_from_summary(name, summary) for name, summary in status["backends"].items())
        checks = status["readiness"]["checks"]
        ready = bool(status["readiness"]["ready"])
    except (KeyError, TypeError, AttributeError) as error:
        return LiveState(
            source, unknown=f"not known: the running bot's status lacks {error} (an older botkit?)"
        )
    adapters = tuple(
        AdapterState(name.removeprefix("adapter:"), bool(check["ok"]), str(check["detail"]))
        for name, check in checks.items()
        if name.startswith("adapter:")
    )
    uptime = status.get("uptime_s")
    live = LiveState(
        source,
        pid=status.get("pid"),
        ready=ready,
        uptime_s=float(uptime) if isinstance(uptime, int | float) else None,
        backends=backends,
        adapters=adapters,
    )
    if metrics is None:
        return live
    try:
        samples = metric_samples(metrics)
    except ValueError:  # not the Prometheus text format: say nothing rather than something wrong
        return live
    return replace(
        live,
        metrics_on=True,
        refused=summed(samples, "botkit_messages_refused_total", "reason"),
        ratelimit_refusals=summed(samples, "botkit_ratelimit_refusals_total", "scope"),
        write_queues=summed(samples, "botkit_write_queue_length", "writer"),
        spooled=summed(samples, "botkit_spool_records", "writer"),
    )


def metric_samples(exposition: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of a Prometheus text exposition: its labels and value, by sample name."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            samples[sample.name].append((dict(sample.labels), sample.value))
    return samples


def summed(
    samples: Mapping[str, list[tuple[dict[str, str], float]]], name: str, label: str
) -> dict[str, int]:
    """The samples of ``name`` summed by the value of ``label`` (other labels, e.g. platform, added up)."""
    totals: dict[str, int] = defaultdict(int)
    for labels, value in samples.get(name, ()):
        totals[labels.get(label, "")] += int(value)
    return dict(sorted(totals.items()))


async def live_state(bot: Bot, in_process: bool) -> LiveState:
    """What the running bot says: ``bot`` itself when ``in_process`` (it is the running bot), else the bot
    its config's control socket reaches, else ``unknown`` saying why none could be asked."""
    if in_process:
        try:
            metrics: str | None = bot.metrics.exposition()[0].decode("utf-8")
        except LookupError:  # [metrics] is off
            metrics = None
        return live_from_answers("this process", await status_answer(bot, sorted(bot.adapters)), metrics)
    try:
        path = control_socket_path(bot.settings)
    except BotkitError as error:
        return LiveState("control socket", unknown=f"{NOT_KNOWN} ({error})")
    if path is None:
        return LiveState("control socket", unknown=f"{NOT_KNOWN} ([bot] control_socket is off)")
    source = f"control socket {path}"
    try:
        status = await request(path, {"command": "status"}, timeout=ASK_TIMEOUT)
        if not status["ok"]:
            return LiveState(
                source, unknown=f"not known: the running bot's status failed: {status.get('error')}"
            )
        metrics_answer = await request(path, {"command": "metrics"}, timeout=ASK_TIMEOUT)
    except NoRunningBot:
        return LiveState(source, unknown=f"{NOT_KNOWN} (none answers on {path})")
    except BotkitError as error:
        return LiveState(source, unknown=f"{NOT_KNOWN} ({error})")
    metrics = metrics_answer.get("metrics") if metrics_answer.get("ok") else None
    return live_from_answers(source, status, metrics if isinstance(metrics, str) else None)


@dataclass(frozen=True, slots=True)
class SpoolState:
    """The write-behind journals on disk (``<data_dir>/spool/*.jsonl``): a file is emptied once all it held is
    written, so bytes in one are records still waiting for the database (or left by a bot that stopped)."""

    folder: str
    files: dict[str, int]  # file name -> bytes

    @property
    def waiting_bytes(self) -> int:
        return sum(self.files.values())

    def as_json(self) -> dict[str, Any]:
        return {"folder": self.folder, "files": self.files, "waiting_bytes": self.waiting_bytes}


def spool_state(storage: StorageSettings) -> SpoolState:
    folder = storage.spool_dir
    files = {}
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else ():
        try:
            files[path.name] = path.stat().st_size
        except FileNotFoundError:  # emptied and removed since it was listed
            continue
    return SpoolState(str(folder), files)


@dataclass(frozen=True, slots=True)
class Overview:
    """Everything the overview shows. ``database``, ``spool`` and ``live`` are None when not asked for
    (the console's reviewers see the activity only)."""

    now: datetime
    hours: list[ActivityBucket]  # the last HOURS hours, this one last
    days: list[ActivityBucket]  # the last DAYS days (UTC), today last
    moderation: list[ModerationBucket]  # per day, as ``days``
    database: DatabaseState | None = None
    spool: SpoolState | None = None
    live: LiveState | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "hours": [bucket.as_json() for bucket in self.hours],
            "days": [bucket.as_json() for bucket in self.days],
            "moderation": [bucket.as_json() for bucket in self.moderation],
            "ratelimit_refusals_per_day": None,  # not stored: see live.metrics, counted since the bot started
            "database": self.database.as_json() if self.database else None,
            "spool": self.spool.as_json() if self.spool else None,
            "live": self.live.as_json() if self.live else None,
        }


async def read_overview(
    bot: Bot, now: datetime, in_process: bool = False, operations: bool = True
) -> Overview:
    """The overview of ``bot``'s database (connected) at ``now``.

    ``in_process``: ``bot`` is the running bot; otherwise the running bot is asked through
    its control socket. ``operations``: also the database's state, the spool and the running
    bot (what admins see); without it only the activity charts' numbers.
    """
    hours = await activity(bot.db, hours_of_the_week(now))
    moderation = await moderation_per_day(bot.db, days_of_the_week(now))
    overview = Overview(now, hours[-HOURS:], by_day(hours), moderation)
    if not operations:
        return overview
    return replace(
        overview,
        database=await database_state(bot.db, bot.migrator),
        spool=spool_state(bot.settings.storage),
        live=await live_state(bot, in_process),
    )


def human_bytes(size: int) -> str:
    """``1,234 bytes``, ``5.2 MB``: a size as the overview shows it."""
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:,.0f} {unit}" if unit == "bytes" else f"{value:,.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """``12 min``, ``5 h 3 min``, ``3 days 4 h``: an uptime as the overview shows it."""
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} days {hours % 24} h"
