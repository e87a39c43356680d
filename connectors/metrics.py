"""A worker's Prometheus metrics: a collector that turns a :class:`WorkerStats` snapshot into metric
families on every scrape, and a small aiohttp server for ``/metrics``.

The collector asks for a fresh snapshot per scrape instead of keeping counters of its own, so the worker's
code keeps its plain counts and this module is the only one that knows metric names. The server runs on the
worker's event loop (the snapshot then reads the worker's state from the thread that changes it).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.errors import ConfigError
from engine.health import Health
from engine.status import SeriesStatus
from engine.worker_stats import DeadLetterReason, WorkerStats


class WorkerCollector(Collector):
    def __init__(self, stats: Callable[[], WorkerStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        s = self._stats()
        yield CounterMetricFamily(
            "vigil_worker_samples_processed",
            "Sample points judged by this worker.",
            value=s.samples_processed,
        )
        lag = GaugeMetricFamily(
            "vigil_worker_consumer_lag",
            "Records of an assigned partition not yet processed (high watermark minus position).",
            labels=["topic", "partition"],
        )
        for (topic, partition), behind in sorted(s.consumer_lag.items()):
            lag.add_metric([topic, str(partition)], behind)
        yield lag
        yield GaugeMetricFamily("vigil_worker_models", "Series whose models are held.", value=s.models)
        yield GaugeMetricFamily("vigil_worker_model_keys", "Sample keys held in memory.", value=s.keys)
        yield GaugeMetricFamily(
            "vigil_worker_model_state_bytes",
            "Size of the models held: their latest checkpoints, in bytes.",
            value=s.model_bytes,
        )
        yield GaugeMetricFamily(
            "vigil_worker_model_bytes_per_series",
            "Mean checkpoint bytes per series held (model state bytes / series).",
            value=s.model_bytes / s.models if s.models else 0.0,
        )
        evicted = CounterMetricFamily(
            "vigil_worker_model_evictions",
            "Sample keys that left memory: idle (no samples for detection.idle_evict_s) or cap "
            "(detection.max_keys); restored from their checkpoints when their samples come back.",
            labels=["reason"],
        )
        for reason in ("idle", "cap"):
            evicted.add_metric([reason], s.evictions.get(reason, 0))
        yield evicted
        yield CounterMetricFamily(
            "vigil_worker_checkpoints_refused",
            "Checkpoints refused (damaged, or of another format/River/config) and started fresh.",
            value=s.checkpoints_refused,
        )
        dead = CounterMetricFamily(
            "vigil_worker_deadletters", "Dead letters sent, by reason.", labels=["reason"]
        )
        for reason in DeadLetterReason:
            dead.add_metric([reason.value], s.deadletters.get(reason, 0))
        yield dead
        yield GaugeMetricFamily(
            "vigil_worker_checkpoint_age_seconds",
            "Seconds since the last completed checkpoint (since start, before the first one).",
            value=s.checkpoint_age_s,
        )
        yield CounterMetricFamily(
            "vigil_worker_send_retries", "Sends to Kafka retried after a failure.", value=s.send_retries
        )
        yield CounterMetricFamily(
            "vigil_worker_deadletters_dropped",
            "Dead letters the broker refused even cut to the smallest size, dropped (each logged).",
            value=s.deadletters_dropped,
        )
        yield CounterMetricFamily(
            "vigil_worker_start_up_gaps",
            "Records beyond a gap in a partition (dropped by Faust during start-up or a rebalance): the "
            "partition was sought back to the next offset to process.",
            value=s.start_up_gaps,
        )
        skipped = CounterMetricFamily(
            "vigil_worker_points_skipped",
            "Points skipped by the duplicate rule: at (duplicate) or before (out_of_order) the watermark.",
            labels=["reason"],
        )
        skipped.add_metric(["duplicate"], s.duplicates)
        skipped.add_metric(["out_of_order"], s.out_of_order)
        yield skipped


class SeriesCollector(Collector):
    """Per live series its normalised score and expected band; per service its health (when known).

    ``vigil_anomaly_score`` is 1 at the opening threshold of the series' rule, so one alerting rule
    (``vigil_anomaly_score >= 1``) fits every series. A side of the band that is no risk (or a detector
    without a band) has no ``vigil_expected_*`` sample.
    """

    def __init__(
        self,
        series: Callable[[], Iterable[SeriesStatus]],
        health: Callable[[], dict[str, Health]] | None = None,
    ) -> None:
        self._series = series
        self._health = health

    def collect(self) -> Iterable[Metric]:
        labels = ["service", "metric", "instance"]
        score = GaugeMetricFamily(
            "vigil_anomaly_score",
            "Normalised anomaly score of the series' latest sample (1 = the opening threshold).",
            labels=labels,
        )
        lower = GaugeMetricFamily(
            "vigil_expected_lower", "Lower end of the band the model expects the series in.", labels=labels
        )
        upper = GaugeMetricFamily(
            "vigil_expected_upper", "Upper end of the band the model expects the series in.", labels=labels
        )
        value = GaugeMetricFamily(
            "vigil_series_value",
            "The series' latest value as Vigil judged it (prepared: a rate, a quantile).",
            labels=labels,
        )
        for s in self._series():
            names = [s.service, s.metric, s.instance]
            score.add_metric(names, s.score)
            if s.expected_low is not None:
                lower.add_metric(names, s.expected_low)
            if s.expected_high is not None:
                upper.add_metric(names, s.expected_high)
            if s.value is not None:
                value.add_metric(names, s.value)
        yield score
        yield lower
        yield upper
        yield value
        if self._health is None:
            return
        health = GaugeMetricFamily(
            "vigil_service_health",
            "1 for the service's current health state (learning, healthy, observe, unhealthy), else 0.",
            labels=["service", "state"],
        )
        for service, current in sorted(self._health().items()):
            for state in Health:
                health.add_metric([service, state.value], 1.0 if state is current else 0.0)
        yield health


def worker_registry(
    stats: Callable[[], WorkerStats], series: Callable[[], Iterable[SeriesStatus]] | None = None
) -> CollectorRegistry:
    """A registry of its own (no global state): the worker's metrics, its own series' scores and bands
    (``series``), and the process' CPU and memory."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(stats))
    if series is not None:
        registry.register(SeriesCollector(series))
    ProcessCollector(registry=registry)
    return registry


class MetricsServer:
    """``/metrics`` over HTTP. :meth:`bind` opens the port early, so a taken port is a clear error at
    start-up; :meth:`serve` answers until it is cancelled (in a worker: once table recovery is done)."""

    def __init__(
        self, registry: CollectorRegistry, host: str, port: int, *, setting: str = "worker.metrics_port"
    ) -> None:
        self.setting = setting  # the key that names the port, for the error message
        self.registry = registry
        self.host = host
        self.port = port
        self._sock: socket.socket | None = None

    def bind(self) -> int:
        """Bind the port (0 = any free one) and return the port bound."""
        if self._sock is not None:
            return self.port
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            # Listen now: SO_REUSEADDR (for a quick restart over TIME_WAIT connections) would let a second
            # process bind a port that is bound but not listening yet. Scrapes wait in the backlog until
            # serve() runs.
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            hint = f" (in use: set {self.setting} to another port, or 0 for any)"
            what = self.setting.split(".")[0]
            raise ConfigError(
                f"{what} metrics cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
                + (hint if exc.errno == errno.EADDRINUSE else "")
            ) from None
        self._sock = sock
        self.port = sock.getsockname()[1]
        return self.port

    async def serve(self) -> None:
        self.bind()
        app = web.Application()
        app.router.add_get("/metrics", make_aiohttp_handler(self.registry))
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.SockSite(runner, self._sock).start()  # type: ignore[arg-type]
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
            self._sock = None
