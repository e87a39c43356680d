"""The poller's counts, and their Prometheus metrics (``vigil_poller_*``), built fresh on every scrape."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from connectors.prometheus import ClientStats


@dataclass
class QueryStats:
    """One (watch, query): requests answered and failed, points emitted and left out, its watermark."""

    source: str
    ok: int = 0
    failed: int = 0
    points: int = 0
    nonfinite: int = 0
    watermark_ms: int | None = None
    disabled: bool = False


@dataclass
class PollerStats:
    queries: dict[tuple[str, str], QueryStats] = field(default_factory=dict)
    clients: dict[str, ClientStats] = field(default_factory=dict)
    send_failures: int = 0


class PollerCollector(Collector):
    def __init__(self, stats: PollerStats, now: Callable[[], float] = time.time) -> None:
        self._stats = stats
        self._now = now

    def collect(self) -> Iterable[Metric]:
        s = self._stats
        names = ["watch", "query"]
        queries = CounterMetricFamily(
            "vigil_poller_queries",
            "Query windows asked, by outcome (ok or failed).",
            labels=[*names, "outcome"],
        )
        points = CounterMetricFamily("vigil_poller_points", "Sample points produced.", labels=names)
        skipped = CounterMetricFamily(
            "vigil_poller_points_skipped", "Points left out: NaN or ±Inf from PromQL.", labels=names
        )
        lag = GaugeMetricFamily(
            "vigil_poller_lag_seconds",
            "Seconds between now and the watermark (the last step emitted); includes delay_s.",
            labels=names,
        )
        disabled = GaugeMetricFamily(
            "vigil_poller_query_disabled",
            "1 when the source rejected the query and it is no longer asked.",
            labels=names,
        )
        now = self._now()
        for (watch, query), q in sorted(s.queries.items()):
            queries.add_metric([watch, query, "ok"], q.ok)
            queries.add_metric([watch, query, "failed"], q.failed)
            points.add_metric([watch, query], q.points)
            skipped.add_metric([watch, query], q.nonfinite)
            disabled.add_metric([watch, query], 1.0 if q.disabled else 0.0)
            if q.watermark_ms is not None:
                lag.add_metric([watch, query], max(0.0, now - q.watermark_ms / 1000))
        yield from (queries, points, skipped, lag, disabled)
        errors = CounterMetricFamily(
            "vigil_poller_errors",
            "Failed requests to a source (retries included), by kind.",
            labels=["source", "kind"],
        )
        requests = CounterMetricFamily(
            "vigil_poller_requests", "HTTP requests to a source.", labels=["source"]
        )
        for source, c in sorted(s.clients.items()):
            requests.add_metric([source], c.requests)
            for kind, n in sorted(Counter(c.errors).items()):
                errors.add_metric([source, kind.value], n)
        yield from (requests, errors)
        yield CounterMetricFamily(
            "vigil_poller_send_failures",
            "Windows whose samples Kafka did not take (asked again).",
            value=s.send_failures,
        )


def poller_registry(stats: PollerStats) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PollerCollector(stats))
    ProcessCollector(registry=registry)
    return registry
