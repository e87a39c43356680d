"""The receiver's counters, and their exposition on ``/metrics`` through ``prometheus_client``.

The counters are plain fields (tests and the benchmark read them directly); a custom collector turns them
into metric families when ``/metrics`` is scraped. Each receiver has its own registry, so several receivers
in one process (tests) do not share counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

PREFIX = "vigil_receiver_"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


@dataclass
class Stats:
    """What the receiver counted since it started."""

    requests: Counter[int] = field(default_factory=Counter)  # by status code
    samples_received: int = 0
    histograms_received: int = 0
    exemplars_received: int = 0
    samples_written: int = 0
    histograms_written: int = 0
    exemplars_written: int = 0
    samples_rejected: Counter[str] = field(default_factory=Counter)  # by reason
    histograms_rejected: Counter[str] = field(default_factory=Counter)  # by reason
    series_dropped: Counter[str] = field(default_factory=Counter)  # by reason
    internal_errors: int = 0  # requests answered 500: bugs
    points_produced: int = 0  # samples and native histograms confirmed by Kafka
    messages_produced: int = 0
    bytes_produced: int = 0
    metadata_produced: int = 0
    produce_failures: int = 0
    in_flight_bytes: int = 0
    in_flight_limit: int = 0
    ready: bool = False
    request_seconds_sum: float = 0.0
    request_seconds_count: int = 0
    work_seconds: float = 0.0  # decode + validate + encode: the part that holds the event loop

    def registry(self) -> CollectorRegistry:
        """A registry of its own that exposes these counters."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        return registry

    def exposition(self) -> bytes:
        """Prometheus text format 0.0.4."""
        return generate_latest(self.registry())


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, help_text, value=value)


def _counters(name: str, help_text: str, label: str, counts: Counter[str] | Counter[int]) -> Metric:
    family = CounterMetricFamily(PREFIX + name, help_text, labels=[label])
    for key, value in sorted(counts.items(), key=lambda kv: str(kv[0])):
        family.add_metric([str(key)], value)
    return family


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, help_text, value=value)


class _Collector:
    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        yield _counters("requests", "Write requests by status code.", "code", s.requests)
        yield _counter("samples_received", "Samples decoded.", s.samples_received)
        yield _counter("histograms_received", "Native histograms decoded.", s.histograms_received)
        yield _counter("exemplars_received", "Exemplars decoded.", s.exemplars_received)
        yield _counter("samples_written", "Samples of requests answered 2xx.", s.samples_written)
        yield _counter(
            "histograms_written", "Native histograms of requests answered 2xx.", s.histograms_written
        )
        yield _counter(
            "exemplars_written",
            "Exemplars of requests answered 2xx (accepted, not stored).",
            s.exemplars_written,
        )
        yield _counters(
            "samples_rejected",
            "Samples dropped, by reason (too_far_in_future, nonfinite, no_service).",
            "reason",
            s.samples_rejected,
        )
        yield _counters(
            "histograms_rejected",
            "Native histograms dropped, by reason (too_far_in_future, nonfinite, no_service).",
            "reason",
            s.histograms_rejected,
        )
        yield _counters("series_dropped", "Series dropped whole, by reason.", "reason", s.series_dropped)
        yield _counter(
            "internal_errors",
            "Requests answered 500: a bug in Vigil (error id in the log).",
            s.internal_errors,
        )
        yield _counter(
            "points_produced", "Samples and native histograms confirmed by Kafka.", s.points_produced
        )
        yield _counter("messages_produced", "Sample messages confirmed by Kafka.", s.messages_produced)
        yield _counter("bytes_produced", "Sample message bytes confirmed by Kafka.", s.bytes_produced)
        yield _counter("metadata_produced", "Metadata records confirmed by Kafka.", s.metadata_produced)
        yield _counter(
            "produce_failures",
            "Requests whose records Kafka did not all confirm in time (answered 503).",
            s.produce_failures,
        )
        yield _gauge("in_flight_bytes", "Request bytes being handled.", s.in_flight_bytes)
        yield _gauge("in_flight_limit_bytes", "Budget of request bytes in flight.", s.in_flight_limit)
        yield _gauge("ready", "1 when connected to the leader of every samples partition.", int(s.ready))
        yield _counter(
            "work_seconds",
            "Time spent decoding, validating and encoding (it holds the event loop).",
            s.work_seconds,
        )
        yield SummaryMetricFamily(
            PREFIX + "request_duration_seconds",
            "Time spent handling write requests.",
            count_value=s.request_seconds_count,
            sum_value=s.request_seconds_sum,
        )
