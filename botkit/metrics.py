"""What one bot counts for Prometheus: its own registry, and instruments that cost nothing when metrics are off.

``bot.metrics`` is a ``Metrics``. With ``[metrics] enabled = false`` (the default) it is
the base class: every instrument it hands out is ``NO_INSTRUMENT``, which counts nothing,
and prometheus-client is never imported. With metrics on it is ``PrometheusMetrics``, a
``CollectorRegistry`` of the bot's own (never the process-global one, so that two bots in
one process keep apart). The core and plugins ask for instruments the same way::

    decisions = bot.metrics.counter(
        "botkit_moderation_decisions_total", "Moderation decisions.", ("direction", "category", "action")
    )
    decisions.labels(direction="in", category="email", action="block").inc()

Asking again for a name with the same kind and labels gives the same instrument (a plugin
restarted by a reload counts on); a different kind or labels is a ``ValueError``. Label
values must be bounded: a plugin's name, a category, a status; never a user id, a message
text or (unless ``[metrics] per_channel``) a channel id.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from botkit.metric_series import Family

if TYPE_CHECKING:
    from botkit.bot import Bot
    from botkit.settings import MetricsSettings
    from botkit.types import Message, Reply

# Seconds: from a few milliseconds (a queue that is free, a database write) to minutes (a long reply).
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Instrument(Protocol):
    """A counter, gauge or histogram, or one labelled child of it (prometheus-client's interface)."""

    def labels(self, *values: str, **labels: str) -> Instrument: ...

    def inc(self, amount: float = 1) -> None: ...

    def set(self, value: float) -> None: ...

    def set_function(self, function: Callable[[], float]) -> None: ...

    def observe(self, value: float) -> None: ...


class NoInstrument:
    """Counts nothing: what every instrument is while metrics are off."""

    def labels(self, *values: str, **labels: str) -> NoInstrument:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def set_function(self, function: Callable[[], float]) -> None:
        pass

    def observe(self, value: float) -> None:
        pass


NO_INSTRUMENT = NoInstrument()


class Metrics:
    """The metrics of a bot with ``[metrics] enabled = false``: instruments that count nothing."""

    enabled = False
    url: str | None = None  # where the metrics listener serves them, once it listens (``botkit run``)

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Instrument:
        """A counter (``name`` ends in ``_total``): something that happened, counted since start."""
        return NO_INSTRUMENT

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Instrument:
        """A gauge: a value now, which may go down."""
        return NO_INSTRUMENT

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = SECONDS,
    ) -> Instrument:
        """A histogram (``name`` ends in a unit, ``_seconds``): how long things took, in buckets."""
        return NO_INSTRUMENT

    def add_collector(self, collect: Callable[[], Iterable[Any]]) -> None:
        """Have ``collect()`` give metric families at each scrape (values read from the bot then)."""

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """Every metric as the scraper asked (``accept``: its Accept header): the body and its content type."""
        raise LookupError("metrics are off: set [metrics] enabled = true and restart the bot")

    def start(self) -> None:
        """Begin what counts in the background (errors logged)."""

    def stop(self) -> None:
        """End what ``start`` began."""


def open_metrics(settings: MetricsSettings, version: str) -> Metrics:
    """The metrics a bot with ``settings`` keeps; prometheus-client is imported only when they are on."""
    if not settings.enabled:
        return Metrics()
    return PrometheusMetrics(version)


class PrometheusMetrics(Metrics):
    """Metrics in a ``CollectorRegistry`` of this bot's own."""

    enabled = True

    def __init__(self, version: str) -> None:
        from prometheus_client import CollectorRegistry, Info

        self.registry = CollectorRegistry()
        self._made: dict[str, Family] = {}
        build = Info("botkit_build", "The botkit and Python versions running.", registry=self.registry)
        build.info({"version": version, "python": ".".join(map(str, sys.version_info[:3]))})
        self.registry.register(_Collector(self._families))
        self._errors = ErrorCounter(
            self.counter(
                "botkit_errors_total",
                "Errors logged, by logger and exception type ('none' for an error without one).",
                ("logger", "type"),
            )
        )

    def _instrument(
        self, kind: str, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float] = ()
    ) -> Family:
        labels = tuple(labels)
        made = self._made.get(name)
        if made is not None:
            if (made.kind, made.labelnames) != (kind, labels):
                raise ValueError(
                    f"metric {name!r} is already a {made.kind} with labels {made.labelnames}; "
                    f"asked for a {kind} with {labels}"
                )
            return made
        family = self._made[name] = Family(kind, name, documentation, labels, buckets)
        return family

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Instrument:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r}: a counter's name ends in _total")
        return self._instrument("counter", name, documentation, labels)

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Instrument:
        return self._instrument("gauge", name, documentation, labels)

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = SECONDS,
    ) -> Instrument:
        return self._instrument("histogram", name, documentation, labels, buckets)

    def _families(self) -> Iterator[Any]:
        for family in list(self._made.values()):
            yield family.collect()

    def add_collector(self, collect: Callable[[], Iterable[Any]]) -> None:
        self.registry.register(_Collector(collect))

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        from prometheus_client.exposition import choose_encoder

        # prometheus-client's own negotiation: OpenMetrics when asked for, else the classic text format.
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type

    def start(self) -> None:
        logging.getLogger("botkit").addHandler(self._errors)

    def stop(self) -> None:
        logging.getLogger("botkit").removeHandler(self._errors)


class _Collector:
    """A collector registered with a registry: ``collect`` reads the bot's state at each scrape."""

    def __init__(self, collect: Callable[[], Iterable[Any]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Any]:
        yield from self._collect()


class ErrorCounter(logging.Handler):
    """Counts the botkit loggers' errors by logger and exception type: every error path, through the log.

    Loggers are process-wide: with two bots in one process, each counts both bots' errors.
    """

    def __init__(self, errors: Instrument) -> None:
        super().__init__(level=logging.ERROR)
        self._errors = errors

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[0] if record.exc_info else None
        self._errors.labels(logger=record.name, type=error.__name__ if error else "none").inc()


class MessageMetrics:
    """The core's instruments: messages received, refused, answered; the queue; generation; replies' tokens.

    The pipeline reports to it. Message metrics are labelled by platform (and channel with
    ``[metrics] per_channel``); generation metrics by backend (its config name).
    """

    def __init__(self, metrics: Metrics, per_channel: bool) -> None:
        self.per_channel = per_channel
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # The series of every message, kept by what picks them: fewer lookups and calls a message.
        self._received_by: dict[Any, Any] = {}
        self._waited_by: dict[str, Any] = {}
        self._answered_by: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        where = ("platform", "channel") if per_channel else ("platform",)
        self._received = metrics.counter(
            "botkit_messages_received_total", "Messages handed to the bot by an adapter.", where
        )
        self._refused = metrics.counter(
            "botkit_messages_refused_total",
            "Messages not answered: the gate plugin that refused them (access, ratelimit, moderation...) "
            "or too_long, unreadable, context_full, queue_full.",
            (*where, "reason"),
        )
        self._commands = metrics.counter(
            "botkit_commands_total",
            "Commands run (unknown: a command no plugin registered).",
            (*where, "command"),
        )
        self._answered = metrics.counter(
            "botkit_messages_answered_total",
            "Messages answered by a model, by how the reply ended (completed, stopped, timed_out, failed, blocked).",
            (*where, "status"),
        )
        self._queue_wait = metrics.histogram(
            "botkit_queue_wait_seconds", "Time a request waited for a free generation slot.", ("backend",)
        )
        self._first_token = metrics.histogram(
            "botkit_time_to_first_token_seconds",
            "Time from a request's turn at the model to its first streamed token.",
            ("backend",),
        )
        self._duration = metrics.histogram(
            "botkit_generation_duration_seconds",
            "Time from a request's turn at the model to its final text.",
            ("backend",),
        )
        self._tokens = metrics.counter(
            "botkit_tokens_generated_total", "Tokens the model generated.", ("backend",)
        )
        self._prompt_tokens = metrics.counter(
            "botkit_prompt_tokens_total", "Tokens of the prompts given to the model.", ("backend",)
        )
        # A series of its own rather than an arm label on the others: dashboards built on them stay valid.
        self._canary_replies = metrics.counter(
            "botkit_canary_replies_total",
            "Replies generated while a canary ran on their backend, by arm (control, canary) and status.",
            ("backend", "arm", "status"),
        )

    def _where(self, message: Message) -> tuple[str, ...]:
        if self.per_channel:
            return (message.platform, message.channel_id)
        return (message.platform,)

    def _child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, kept: prometheus-client checks and locks at each ``labels`` call,
        and a message touches a handful of the same few series."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def received(self, message: Message) -> None:
        where = (message.platform, message.channel_id) if self.per_channel else message.platform
        series = self._received_by.get(where)
        if series is None:
            series = self._received_by[where] = self._received.labels(*self._where(message))
        series.inc()

    def refused(self, message: Message, reason: str) -> None:
        self._child(self._refused, *self._where(message), reason).inc()

    def command(self, message: Message, name: str | None) -> None:
        self._child(self._commands, *self._where(message), name or "unknown").inc()

    def waited(self, backend: str, seconds: float) -> None:
        series = self._waited_by.get(backend)
        if series is None:
            series = self._waited_by[backend] = self._queue_wait.labels(backend)
        series.observe(seconds)

    def answered(self, message: Message, backend: str, reply: Reply) -> None:
        status = reply.status
        key = (message.platform, message.channel_id if self.per_channel else "", backend, status)
        series = self._answered_by.get(key)
        if series is None:
            series = self._answered_by[key] = (
                self._answered.labels(*self._where(message), status.value),
                self._first_token.labels(backend),
                self._duration.labels(backend),
                self._tokens.labels(backend),
                self._prompt_tokens.labels(backend),
            )
        answered, first_token, duration, tokens, prompt_tokens = series
        answered.inc()
        if reply.first_token_s is not None:
            first_token.observe(reply.first_token_s)
        if reply.latency_s:
            duration.observe(reply.latency_s)
        tokens.inc(reply.completion_tokens)
        prompt_tokens.inc(reply.prompt_tokens or 0)
        if reply.arm is not None:
            self._child(self._canary_replies, backend, reply.arm, status.value).inc()


def bot_state_families(bot: Bot) -> Iterator[Any]:
    """The metrics read from the bot at each scrape: backends, queues, engines, retries, conversations, readiness."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    backend = GaugeMetricFamily(
        "botkit_backend_info",
        "Each backend: its type, model and the LoRA adapter in use ('' for none).",
        labels=("backend", "type", "model", "lora"),
    )
    waiting = GaugeMetricFamily("botkit_queue_length", "Requests waiting for the model.", labels=("backend",))
    running = GaugeMetricFamily("botkit_generations_running", "Generations running now.", labels=("backend",))
    slots = GaugeMetricFamily(
        "botkit_engine_sequences", "Sequences the engine can generate at once.", labels=("backend",)
    )
    in_use = GaugeMetricFamily(
        "botkit_engine_sequences_in_use", "Sequences generating now.", labels=("backend",)
    )
    kv = GaugeMetricFamily(
        "botkit_kv_cache_bytes", "Memory held by saved conversation KV caches.", labels=("backend",)
    )
    kv_limit = GaugeMetricFamily(
        "botkit_kv_cache_limit_bytes",
        "The KV cache memory limit ([backend] kv_cache_mb).",
        labels=("backend",),
    )
    evictions = CounterMetricFamily(
        "botkit_kv_cache_evictions", "Saved KV caches dropped for lack of room.", labels=("backend",)
    )
    retries = CounterMetricFamily(
        "botkit_backend_retries",
        "Requests to a backend's server tried again, by reason (rate_limited, server_error, connection, timeout).",
        labels=("backend", "reason"),
    )
    for name, slot in bot.backends.items():
        for reason, count in sorted(slot.backend.retried.items()):
            retries.add_metric((name, reason), count)
    status = bot.status()
    for state in status.backends:
        backend.add_metric((state.name, state.type, state.model, state.lora or ""), 1)
        waiting.add_metric((state.name,), state.waiting)
        running.add_metric((state.name,), state.generating)
        engine = state.engine
        if engine is not None:
            slots.add_metric((state.name,), engine.slots)
            in_use.add_metric((state.name,), engine.slots_in_use)
            kv.add_metric((state.name,), engine.kv_cache_mb * 2**20)
            kv_limit.add_metric((state.name,), engine.kv_cache_limit_mb * 2**20)
            evictions.add_metric((state.name,), engine.evictions)
    yield from (backend, waiting, running, slots, in_use, kv, kv_limit, evictions, retries)
    yield GaugeMetricFamily(
        "botkit_conversations_active",
        "Conversations with a message being handled now.",
        value=status.conversations,
    )
    yield GaugeMetricFamily("botkit_uptime_seconds", "Seconds since the bot started.", value=status.uptime_s)
