"""Process-local metrics in the Prometheus text format (``GET /metrics``), without a client library.

Every family is declared in :data:`FAMILIES` so ``/metrics`` lists it from the first scrape (a counter that
appears only after its first increment makes ``rate()`` miss that increment). Counters and the latency
histogram live in :data:`METRICS`, one per process; values read from the database at scrape time (dues,
stations, rentals) are passed to :meth:`CoreMetrics.render` as gauges.

Label values are bounded by the code that sets them: the route is the path *template* of the matched route
(``unmatched`` otherwise), event types and outcomes come from enums, failure reasons are error codes.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX = "chargeghar_core_"
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_LABEL_LENGTH = 120
# Distinct label sets remembered by CoreMetrics._labels (far more than the bounded label values produce).
_LABEL_MEMO_SIZE = 4096

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Family:
    help: str
    kind: str  # counter | gauge | histogram
    labels: tuple[str, ...] = ()


FAMILIES: Mapping[str, Family] = {
    "http_requests_total": Family(
        "HTTP requests answered, by method, route template and status",
        "counter",
        ("method", "route", "status"),
    ),
    "http_request_duration_seconds": Family(
        "HTTP request latency by method and route template", "histogram", ("method", "route")
    ),
    "events_applied_total": Family(
        "Station events from the ingest, by type and outcome (SUCCESS, STALE, DUPLICATE, FAILED)",
        "counter",
        ("type", "outcome"),
    ),
    "rentals_started_total": Family("Rentals that became ACTIVE (the bank left the station)", "counter"),
    "rentals_failed_total": Family(
        "Rentals that could not start, by reason (error code or popup outcome)", "counter", ("reason",)
    ),
    "popup_outcomes_total": Family(
        "Eject (popup) commands by outcome: ok, failed, timeout, not_sent, unknown", "counter", ("outcome",)
    ),
    # Read from the database at scrape time.
    "database_up": Family("1 when the scrape could read the database, 0 otherwise", "gauge"),
    "dues_outstanding_paisa": Family("Sum of unpaid rental dues (paisa)", "gauge"),
    "dues_outstanding_rentals": Family("Rentals with an unpaid due", "gauge"),
    "rentals_open": Family("Open rentals by status (PENDING_POPUP, ACTIVE, OVERDUE)", "gauge", ("status",)),
    "stations_deployed": Family("Deployed stations", "gauge"),
    "stations_by_status": Family(
        "Deployed stations by status (ONLINE, OFFLINE, MAINTENANCE)", "gauge", ("status",)
    ),
    "station_last_upload_timestamp_seconds": Family(
        "Unix time of the newest event core received from a deployed station (its creation when none)",
        "gauge",
        ("station",),
    ),
    "wallet_balance_paisa": Family("Sum of all renters' wallet balances (paisa)", "gauge"),
}


def _clean(value: object) -> str:
    text = str(value)[:MAX_LABEL_LENGTH]
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _label_text(labels: Labels, extra: Labels = ()) -> str:
    pairs = labels + extra
    if not pairs:
        return ""
    return "{" + ",".join(f'{key}="{_clean(value)}"' for key, value in pairs) + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return f"{value:.17g}" if isinstance(value, float) and not value.is_integer() else f"{int(value)}"


@dataclass(slots=True)
class _Histogram:
    counts: list[int]  # per bucket (not cumulative): observations in (previous bound, bound]
    total: float = 0.0
    count: int = 0


class CoreMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = {}
        self._histograms: dict[str, dict[Labels, _Histogram]] = {}
        self._label_memo: dict[tuple[Any, ...], Labels] = {}

    def _labels(self, name: str, values: Mapping[str, object]) -> Labels:
        # Every request counts under the same few label sets: remember each one (bounded like the series
        # themselves) instead of checking and formatting the labels again each time.
        # (Label values are strings, enums and HTTP statuses; none is a bool, which would share 1's key.)
        key = (name, *values.items())
        memo_key: tuple[Any, ...] | None = key
        labels: Labels | None = None
        try:
            labels = self._label_memo.get(key)
        except TypeError:  # an unhashable label value: formatted below, not remembered
            memo_key = None
        if labels is not None:
            return labels
        family = FAMILIES[name]
        if set(values) != set(family.labels):
            raise KeyError(f"{name} takes labels {family.labels}, got {sorted(values)}")
        labels = tuple((key, str(values[key])[:MAX_LABEL_LENGTH]) for key in family.labels)
        if memo_key is not None and len(self._label_memo) < _LABEL_MEMO_SIZE:
            self._label_memo[memo_key] = labels
        return labels

    def inc(self, name: str, amount: float = 1.0, **labels: object) -> None:
        if FAMILIES[name].kind != "counter":
            raise KeyError(f"{name} is not a counter")
        key = self._labels(name, labels)
        with self._lock:
            series = self._counters.setdefault(name, {})
            series[key] = series.get(key, 0.0) + amount

    def observe(self, name: str, value: float, **labels: object) -> None:
        if FAMILIES[name].kind != "histogram":
            raise KeyError(f"{name} is not a histogram")
        key = self._labels(name, labels)
        with self._lock:
            series = self._histograms.setdefault(name, {})
            histogram = series.get(key)
            if histogram is None:
                histogram = series[key] = _Histogram([0] * len(LATENCY_BUCKETS))
            # One count in the value's own bucket; the cumulative ``le`` counts are summed when rendered.
            index = bisect_left(LATENCY_BUCKETS, value)
            if index < len(LATENCY_BUCKETS):
                histogram.counts[index] += 1
            histogram.total += value
            histogram.count += 1

    def value(self, name: str, **labels: object) -> float:
        """A counter's current value (0 when never incremented); tests and tools."""
        return self._counters.get(name, {}).get(self._labels(name, labels), 0.0)

    # ------------------------------------------------------------------ the points the code counts at

    def event_applied(self, event_type: str, outcome: str) -> None:
        self.inc("events_applied_total", type=event_type, outcome=outcome)

    def rental_started(self) -> None:
        self.inc("rentals_started_total")

    def rental_failed(self, reason: str) -> None:
        self.inc("rentals_failed_total", reason=reason)

    def popup_outcome(self, outcome: str) -> None:
        self.inc("popup_outcomes_total", outcome=outcome)

    # ------------------------------------------------------------------ exposition

    def render(self, gauges: Mapping[str, float | Sequence[tuple[Mapping[str, str], float]]]) -> str:
        """The text format (version 0.0.4). ``gauges``: a value, or ``[(labels, value), ...]`` per family."""
        lines: list[str] = []
        with self._lock:
            for name, family in FAMILIES.items():
                metric = PREFIX + name
                lines.append(f"# HELP {metric} {family.help}")
                lines.append(f"# TYPE {metric} {family.kind}")
                if family.kind == "counter":
                    series = self._counters.get(name, {})
                    if not series and not family.labels:
                        lines.append(f"{metric} 0")
                    for labels, count in sorted(series.items()):
                        lines.append(f"{metric}{_label_text(labels)} {_number(count)}")
                elif family.kind == "histogram":
                    lines.extend(self._histogram_lines(metric, self._histograms.get(name, {})))
                elif name in gauges:
                    lines.extend(_gauge_lines(metric, gauges[name]))
        return "\n".join(lines) + "\n"

    @staticmethod
    def _histogram_lines(metric: str, series: Mapping[Labels, _Histogram]) -> Iterable[str]:
        for labels, histogram in sorted(series.items()):
            cumulative = 0
            for bound, count in zip(LATENCY_BUCKETS, histogram.counts, strict=True):
                cumulative += count
                yield f"{metric}_bucket{_label_text(labels, (('le', _number(bound)),))} {cumulative}"
            yield f"{metric}_bucket{_label_text(labels, (('le', '+Inf'),))} {histogram.count}"
            yield f"{metric}_sum{_label_text(labels)} {_number(histogram.total)}"
            yield f"{metric}_count{_label_text(labels)} {histogram.count}"


def _gauge_lines(metric: str, value: float | Sequence[tuple[Mapping[str, str], float]]) -> Iterable[str]:
    if isinstance(value, int | float):
        yield f"{metric} {_number(float(value))}"
        return
    for labels, number in value:
        yield f"{metric}{_label_text(tuple(labels.items()))} {_number(float(number))}"


METRICS = CoreMetrics()


class RequestMetricsMiddleware:
    """Counts every HTTP answer and times it by route template (pure ASGI: streaming bodies pass through)."""

    def __init__(self, app: ASGIApp, metrics: CoreMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics or METRICS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = _route_template(scope)
            method = str(scope.get("method", "GET"))
            self.metrics.inc("http_requests_total", method=method, route=route, status=status)
            self.metrics.observe(
                "http_request_duration_seconds", time.perf_counter() - started, method=method, route=route
            )


def _route_template(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(path) if path else "unmatched"
