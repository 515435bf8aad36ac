"""botkit's own metric series: counters, gauges and histograms by label values, read at each scrape.

``PrometheusMetrics`` hands these out instead of prometheus-client's instruments: a message
touches about ten series, and prometheus-client's ``inc`` and ``observe`` run several checks
and calls each (its histogram walks every bucket), a noticeable share of a busy bot's time per
message (bench/README.md). A series here is a number, or bucket counts and a sum, behind a
lock; ``Family.collect`` gives prometheus-client's metric family at a scrape, so the exposition
(``_total``, ``_created``, ``_bucket``, ``_sum``, ``_count``) is what prometheus-client's own
instruments would write. Names and labels are checked as prometheus-client checks them.
"""

from __future__ import annotations

import re
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any

METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class Family:
    """One metric and its series, one per combination of label values."""

    def __init__(
        self, kind: str, name: str, documentation: str, labelnames: tuple[str, ...], buckets: Sequence[float] = ()
    ) -> None:
        if not METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"metric {name!r}: invalid label name {label!r}")
        if kind == "histogram" and "le" in labelnames:
            raise ValueError(f"histogram {name!r}: 'le' is the bucket label, not one of its own")
        self.kind, self.name, self.documentation, self.labelnames = kind, name, documentation, labelnames
        self.bounds = tuple(sorted(float(bound) for bound in buckets if bound != float("inf")))
        if kind == "histogram" and not self.bounds:
            raise ValueError(f"histogram {name!r}: no buckets")
        self._series: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()
        self._unlabelled = None if labelnames else self._make(())

    def _make(self, values: tuple[str, ...]) -> Any:
        series = HistogramSeries(self.bounds) if self.kind == "histogram" else ValueSeries(self.kind == "counter")
        return self._series.setdefault(values, series)

    def labels(self, *values: Any, **labels: Any) -> Any:
        """The series for these label values (by position, or by name), made on first use."""
        if values and labels:
            raise ValueError(f"metric {self.name!r}: label values by position or by name, not both")
        if labels:
            if sorted(labels) != sorted(self.labelnames):
                raise ValueError(f"metric {self.name!r}: labels {sorted(labels)}, expected {list(self.labelnames)}")
            values = tuple(labels[name] for name in self.labelnames)
        elif len(values) != len(self.labelnames) or not self.labelnames:
            raise ValueError(
                f"metric {self.name!r}: {len(values)} label values for labels {list(self.labelnames)}"
            )
        key = tuple(str(value) for value in values)
        series = self._series.get(key)
        if series is None:
            with self._lock:
                series = self._make(key)
        return series

    def _only(self) -> Any:
        if self._unlabelled is None:
            raise ValueError(f"metric {self.name!r} has labels {list(self.labelnames)}: use .labels(...) first")
        return self._unlabelled

    def inc(self, amount: float = 1) -> None:
        self._only().inc(amount)

    def set(self, value: float) -> None:
        self._only().set(value)

    def set_function(self, function: Callable[[], float]) -> None:
        self._only().set_function(function)

    def observe(self, value: float) -> None:
        self._only().observe(value)

    def collect(self) -> Any:
        """Its series now, as a prometheus-client metric family."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        with self._lock:
            series = list(self._series.items())
        if self.kind == "counter":
            family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
            for values, one in series:
                family.add_metric(values, one.value, created=one.created)
            return family
        if self.kind == "gauge":
            family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
            for values, one in series:
                family.add_metric(values, one.read())
            return family
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        edges = [*(floatToGoString(bound) for bound in self.bounds), "+Inf"]
        for values, one in series:
            counts, total = one.snapshot()
            cumulative, running = [], 0.0
            for edge, count in zip(edges, counts, strict=True):
                running += count
                cumulative.append((edge, running))
            family.add_metric(values, cumulative, total)
            family.add_sample(f"{self.name}_created", dict(zip(self.labelnames, values, strict=True)), one.created)
        return family


class ValueSeries:
    """A counter's or gauge's value for one combination of label values."""

    __slots__ = ("_counter", "_function", "_lock", "created", "value")

    def __init__(self, counter: bool) -> None:
        self._counter = counter
        self._function: Callable[[], float] | None = None
        self._lock = threading.Lock()
        self.created = time.time()
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        if self._counter and amount < 0:
            raise ValueError(f"a counter only goes up: inc({amount})")
        # acquire() and try/finally, not `with`: the same, for a third less of a call that
        # a message makes several times (entering and leaving a `with` are two lookups and calls).
        lock = self._lock
        lock.acquire()
        try:
            self.value += amount
        finally:
            lock.release()

    def set(self, value: float) -> None:
        if self._counter:
            raise AttributeError("a counter cannot be set, only increased")
        value = float(value)
        lock = self._lock
        lock.acquire()
        try:
            self.value = value
        finally:
            lock.release()

    def set_function(self, function: Callable[[], float]) -> None:
        """A gauge: ``function()`` is its value at each scrape, whatever is set (as prometheus-client's).

        For a value that changes far more often than it is scraped (a queue's length): reading it
        when asked costs nothing between scrapes. It is called from the scraping thread.
        """
        if self._counter:
            raise AttributeError("a counter counts: only a gauge reads a function")
        with self._lock:
            self._function = function

    def read(self) -> float:
        """The value now: the function's, when one is set."""
        function = self._function
        return self.value if function is None else float(function())

    def observe(self, value: float) -> None:
        raise AttributeError("observe() is a histogram's")


class HistogramSeries:
    """A histogram's bucket counts and sum for one combination of label values."""

    __slots__ = ("_bounds", "_counts", "_lock", "_sum", "created")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self._sum = 0.0
        self._lock = threading.Lock()
        self.created = time.time()

    def observe(self, value: float) -> None:
        where = bisect_left(self._bounds, value)  # the first bucket whose bound is >= value ("le")
        lock = self._lock  # as in ValueSeries.inc
        lock.acquire()
        try:
            self._counts[where] += 1
            self._sum += value
        finally:
            lock.release()

    def snapshot(self) -> tuple[list[int], float]:
        with self._lock:
            return list(self._counts), self._sum

    def inc(self, amount: float = 1) -> None:
        raise AttributeError("a histogram observes values: use observe()")

    def set(self, value: float) -> None:
        raise AttributeError("a histogram observes values: use observe()")

    def set_function(self, function: Callable[[], float]) -> None:
        raise AttributeError("a histogram observes values: use observe()")
