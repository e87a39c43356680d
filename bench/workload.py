"""The production-shaped workload of the benchmarks: a Prometheus remote-writing many services.

A fixed pool of series — ``services`` jobs x ``instances`` targets, each target exposing counters by
handler and code, a latency histogram (buckets, ``_sum``, ``_count``), CPU seconds, gauges and a family of
its job's own — scraped every 15 s. Prometheus shards series by a hash of their labels and sends each
shard's samples in scrape order, so one remote-write 1.0 request holds ``series`` (500) series x 1 sample
from all over the pool; the buckets of one histogram arrive in several requests, and a series' samples
arrive in time order. :func:`requests` is that stream, deterministic: request ``i`` is always the same.

:func:`raw_messages` turns requests into exactly what ``vigil ingest`` produces to ``vigil.samples`` (its
own decoder and record builder): one message per partition per request, ~125 series x 1 point each with
4 partitions.
"""

from __future__ import annotations

import math
import random
from functools import cache

from connectors.receiver.records import RecordBuilder
from connectors.remote_write import Decoder, Limits
from engine.config import VigilConfig
from engine.raw import Labels, MetricKind
from tests.fixtures.remote_write import V1_CONTENT_TYPE, Series, v1_body

#: First scrape round (2024-11-14T22:13:20Z): in the past, so nothing is "too far in the future".
BASE_MS = 1_731_622_400_000
SCRAPE_MS = 15_000
NOW_MS = 1_900_000_000_000  # "now" for decoding: after every timestamp the benchmarks send
SERIES_PER_REQUEST = 500
_HANDLERS = ("/api/orders", "/api/users", "/healthz")
_CODES = ("200", "404", "500")
_LE = ("0.005", "0.025", "0.1", "0.25", "0.5", "1", "2.5", "+Inf")
_CDF = (0.05, 0.2, 0.55, 0.8, 0.93, 0.98, 0.995, 1.0)  # share of requests at or below each bucket
_OWN = ("jobs_processed_total", "cache_hits_total", "queue_depth", "batch_size", "pool_connections")


def _target(service: str, instance: str, job_index: int) -> list[tuple[Labels, MetricKind, int]]:
    """Label sets of one target, each with a number that seeds its values."""
    base = {"job": service, "instance": instance}
    rows: list[tuple[dict[str, str], MetricKind]] = []
    for handler in _HANDLERS:
        rows += [
            ({"__name__": "http_requests_total", "handler": handler, "code": c}, MetricKind.COUNTER)
            for c in _CODES
        ]
    for handler in _HANDLERS[:2]:
        name = "http_request_duration_seconds"
        rows += [
            ({"__name__": f"{name}_bucket", "handler": handler, "le": le}, MetricKind.HISTOGRAM) for le in _LE
        ]
        rows += [
            ({"__name__": f"{name}_{part}", "handler": handler}, MetricKind.HISTOGRAM)
            for part in ("sum", "count")
        ]
    rows += [
        ({"__name__": "process_cpu_seconds_total"}, MetricKind.COUNTER),
        ({"__name__": "process_resident_memory_bytes"}, MetricKind.GAUGE),
        ({"__name__": "go_goroutines"}, MetricKind.GAUGE),
        ({"__name__": "up"}, MetricKind.GAUGE),
    ]
    own = _OWN[job_index % len(_OWN)]
    kind = MetricKind.COUNTER if own.endswith("_total") else MetricKind.GAUGE
    rows += [({"__name__": f"{service}_{own}", "shard": str(k)}, kind) for k in range(2)]
    return [(tuple(sorted({**base, **extra}.items())), kind, i) for i, (extra, kind) in enumerate(rows)]


@cache
def pool(services: int = 24, instances: int = 4) -> list[tuple[Labels, MetricKind, int, int]]:
    """(labels, kind, seed, scrape offset in ms) of every series, in the order Prometheus' shards send them
    (a fixed shuffle: series are sharded by a hash of their labels)."""
    out = []
    for s in range(services):
        service = f"svc{s:02d}"
        for i in range(instances):
            offset = (s * instances + i) * 37 % 5_000
            out += [
                (labels, kind, s * 1000 + i * 100 + seed, offset)
                for labels, kind, seed in _target(service, f"10.0.{s}.{i + 10}:8080", s)
            ]
    random.Random(7).shuffle(out)
    return out


def _value(labels: Labels, kind: MetricKind, seed: int, scrape: int) -> float:
    """A deterministic value: counters grow at a slowly changing rate, histogram buckets are consistent
    (cumulative, ``+Inf`` equals ``_count``), gauges wander around a level."""
    rate = 1 + seed % 17 + 0.5 * math.sin(scrape / 40 + seed)
    if kind is MetricKind.COUNTER:
        return float(int(scrape * rate * 15 + seed))
    if kind is MetricKind.HISTOGRAM:
        count = int(scrape * rate * 15)
        found = dict(labels)
        name = found["__name__"]
        if name.endswith("_sum"):
            return round(count * 0.21, 3)
        if name.endswith("_count"):
            return float(count)
        return float(int(count * _CDF[_LE.index(found["le"])]))
    return round(
        100 + seed % 50 + 20 * math.sin(scrape / 30 + seed) + random.Random(seed * 7919 + scrape).gauss(0, 2),
        3,
    )


def request_series(index: int, series: int = SERIES_PER_REQUEST) -> list[Series]:
    """The series of request ``index``: the next ``series`` positions of the endless scrape stream."""
    found = pool()
    out = []
    for position in range(index * series, (index + 1) * series):
        labels, kind, seed, offset = found[position % len(found)]
        scrape = position // len(found)
        stamp = BASE_MS + scrape * SCRAPE_MS + offset
        out.append(Series(labels=labels, samples=[(stamp, _value(labels, kind, seed, scrape))], kind=kind))
    return out


def requests(start: int, count: int, series: int = SERIES_PER_REQUEST) -> list[bytes]:
    """Remote-write 1.0 bodies (snappy) of requests ``start`` … ``start + count - 1``."""
    return [v1_body(request_series(i, series)) for i in range(start, start + count)]


def raw_messages(config: VigilConfig, bodies: list[bytes], partitions: int) -> list[tuple[int, bytes]]:
    """(partition, value) of what ``vigil ingest`` produces for ``bodies``, in order: Vigil's own decoder
    and record builder, one message per partition per request."""
    decoder = Decoder(Limits(max_future_ms=10**12))
    topics = config.kafka.topics
    builder = RecordBuilder(config.labels, topics.samples, topics.metadata)
    out: list[tuple[int, bytes]] = []
    for body in bodies:
        request = decoder.decode(body, V1_CONTENT_TYPE, "snappy", NOW_MS).request
        out.extend(
            (m.partition, m.value)
            for m in builder.build(request, partitions).messages
            if m.topic == topics.samples and m.partition is not None
        )
    return out
