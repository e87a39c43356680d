"""The http pack's latency quantiles from a **native** histogram: remote-written into a real Prometheus
(promtool's import has none) started with ``--web.enable-remote-write-receiver
--enable-feature=native-histograms``; the poller must give what PromQL gives and what the buckets say."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import aiohttp
import pytest

from connectors.prometheus import PrometheusClient, aligned
from connectors.prometheus.watch import poll_watch
from engine.config import LabelsConfig, SourceConfig, WatchConfig
from engine.raw import NativeHistogram
from tests.fixtures.prometheus import Prometheus
from tests.fixtures.remote_write import Series, v1_body
from tests.fixtures.tsdb import wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

assert shutil.which("prometheus"), "needs Debian's `prometheus` package (apt-get install prometheus)"

#: schema 0 buckets (1/16, 1/8], (1/8, 1/4], (1/4, 1/2], (1/2, 1]: requests per second in each
PER_SECOND = (50, 40, 9, 1)
BY_HAND = {  # linear interpolation inside the bucket holding the rank (Prometheus 2.42)
    "http_latency_p50": 1 / 8,  # rank 50: the top of the first bucket
    "http_latency_p95": 1 / 4 + (1 / 4) * (95 - 90) / 9,
    "http_latency_p99": 1 / 2,  # rank 99: the top of the third bucket
}


def histograms(start_ms: int, seconds: int) -> list[NativeHistogram]:
    return [
        NativeHistogram(
            timestamp_ms=start_ms + k * 1000,
            schema=0,
            zero_threshold=1e-128,
            zero_count=0.0,
            count=float(sum(PER_SECOND) * k),
            sum=0.2 * sum(PER_SECOND) * k,
            positive_spans=((-3, 4),),
            positive_counts=tuple(float(c * k) for c in PER_SECOND),
        )
        for k in range(seconds)
    ]


async def test_native_histogram_quantiles(tmp_path: Path) -> None:
    flags = ("--web.enable-remote-write-receiver", "--enable-feature=native-histograms")
    prometheus = Prometheus(tmp_path, {"global": {"scrape_interval": "1h"}}, flags=flags)
    prometheus.launch()
    try:
        wait_ready(prometheus)
        now_ms = int(time.time()) * 1000
        start_ms = now_ms - 300_000
        name = ("__name__", "http_request_duration_seconds")
        series = [
            Series(
                labels=[name, ("instance", instance), ("job", "checkout")],
                histograms=histograms(start_ms, 300),
            )
            for instance in ("a:1", "b:2")
        ]
        headers = {
            "Content-Type": "application/x-protobuf",
            "Content-Encoding": "snappy",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
        }
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{prometheus.url}/api/v1/write", data=v1_body(series), headers=headers
            ) as r:
                assert r.status == 204, await r.text()
            window = aligned(start_ms + 90_000, now_ms - 15_000, 15_000)
            assert window is not None
            watch = WatchConfig(name="checkout", service="checkout", pack=("http",))
            async with PrometheusClient(SourceConfig(name="main", url=prometheus.url)) as client:
                poll = await poll_watch(client, watch, LabelsConfig(), window)
            assert not poll.failed
            got = {(s.metric, s.instance): list(s.points) for s in poll.series}
            assert sorted({m for m, _ in got}) == sorted(BY_HAND)  # no classic buckets, no request counter
            for metric, expected in BY_HAND.items():
                query = next(q for q in watch.all_queries if q.name == metric)
                params = {
                    "query": watch.render(query, LabelsConfig()),
                    "start": str(window.start_ms / 1000),
                    "end": str(window.end_ms / 1000),
                    "step": "15",
                }
                async with session.get(f"{prometheus.url}/api/v1/query_range", params=params) as r:
                    doc = await r.json()
                direct = {
                    item["metric"]["instance"]: [
                        (round(float(t) * 1000), float(v)) for t, v in item["values"]
                    ]
                    for item in doc["data"]["result"]
                }
                for instance in ("a:1", "b:2"):
                    assert got[(metric, instance)] == direct[instance], (metric, instance)
                    assert len(direct[instance]) == window.points
                    for _, value in direct[instance]:
                        assert math.isclose(value, expected, rel_tol=1e-9), (metric, value, expected)
    finally:
        prometheus.stop()
