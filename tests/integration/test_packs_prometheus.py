"""Metric packs against a real Prometheus: every query of every pack is accepted, and the http and
process packs give what PromQL gives for the same range — and what the known data says by hand."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator

import aiohttp
import pytest

from connectors.prometheus import PrometheusClient, Window
from connectors.prometheus.watch import poll_watch
from engine.config import LabelsConfig, SourceConfig, WatchConfig
from engine.packs import PACKS, load_pack, render
from tests.fixtures.prometheus import Prometheus
from tests.fixtures.tsdb import families, prometheus_with

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

assert shutil.which("promtool"), "needs Debian's `prometheus` package (apt-get install prometheus)"

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
SECONDS = 600
INSTANCES = {"a:1": 1.0, "b:2": 2.0}  # a scale per instance
BUCKETS = {"0.1": 50, "0.5": 90, "1": 99, "+Inf": 100}  # cumulative requests per second
WINDOW = Window((T0 + 120) * 1000, (T0 + 540) * 1000, 15_000)
LABELS = LabelsConfig()


def series(
    metric_labels: dict[str, str], value: object
) -> dict[tuple[tuple[str, str], ...], list[tuple[int, float]]]:
    fn = value if callable(value) else (lambda k: value)
    return {tuple(sorted(metric_labels.items())): [(T0 + k, float(fn(k))) for k in range(SECONDS + 1)]}


def known() -> str:
    requests: dict = {}
    buckets: dict = {}
    memory: dict = {}
    cpu: dict = {}
    start: dict = {}
    for instance, scale in INSTANCES.items():
        base = {"job": "checkout", "instance": instance}
        requests |= series(base | {"code": "200"}, lambda k, s=scale: 10 * s * k)
        requests |= series(base | {"code": "500"}, lambda k, s=scale: s * k)
        for le, per_second in BUCKETS.items():
            buckets |= series(base | {"le": le}, lambda k, p=per_second: p * k)
        memory |= series(base, 1e8 * scale)
        cpu |= series(base, lambda k, s=scale: 0.25 * s * k)
        restarted = instance == "a:1"
        start |= series(base, lambda k, r=restarted: T0 + 300 if r and k >= 300 else T0)
    return families(
        {
            "http_requests_total": requests,
            "http_request_duration_seconds_bucket": buckets,
            "process_resident_memory_bytes": memory,
            "process_cpu_seconds_total": cpu,
            "process_start_time_seconds": start,
        }
    )


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    with prometheus_with(known(), tmp_path_factory.mktemp("prometheus-packs")) as running:
        yield running


def by_hand(metric: str, instance: str, t_s: int) -> float:
    """What the known data gives, worked out without PromQL."""
    scale = INSTANCES[instance]
    return {
        "http_request_rate": 11 * scale,
        "http_error_ratio": 1 / 11,
        "http_latency_p50": 0.1,  # rank 50 is the top of the first bucket (0, 0.1]
        "http_latency_p95": 0.5 + 0.5 * (95 - 90) / (99 - 90),
        "http_latency_p99": 1.0,
        "process_cpu_usage": 0.25 * scale,
        "process_memory_bytes": 1e8 * scale,
        # changes() over the last 5 minutes: a:1 restarted at T0+300
        "process_restarts": 1.0 if instance == "a:1" and T0 + 300 <= t_s < T0 + 600 else 0.0,
    }[metric]


async def direct(
    session: aiohttp.ClientSession, prometheus: Prometheus, query: str
) -> dict[str, list[tuple[int, float]]]:
    """The same query_range, asked and parsed without Vigil's client."""
    params = {
        "query": query,
        "start": str(WINDOW.start_ms / 1000),
        "end": str(WINDOW.end_ms / 1000),
        "step": "15",
    }
    async with session.get(f"{prometheus.url}/api/v1/query_range", params=params) as response:
        doc = await response.json()
    assert doc["status"] == "success", doc
    return {
        item["metric"].get("instance", ""): [(round(float(t) * 1000), float(v)) for t, v in item["values"]]
        for item in doc["data"]["result"]
    }


async def test_http_and_process_packs_give_what_promql_gives(prometheus: Prometheus) -> None:
    watch = WatchConfig(name="checkout", service="checkout", pack=("http", "process"), step_s=15)
    source = SourceConfig(name="main", url=prometheus.url)
    async with PrometheusClient(source) as client:
        poll = await poll_watch(client, watch, LABELS, WINDOW)
    assert not poll.failed
    assert not poll.empty
    got = {(s.metric, s.instance): list(s.points) for s in poll.series}
    names = [q.name for q in watch.all_queries]
    assert sorted({m for m, _ in got}) == sorted(names)
    async with aiohttp.ClientSession() as session:
        for query in watch.all_queries:
            want = await direct(session, prometheus, watch.render(query, LABELS))
            assert sorted(want) == sorted(INSTANCES), query.name
            for instance, points in want.items():
                assert got[(query.name, instance)] == points, (query.name, instance)
                for t, value in points:
                    expected = by_hand(query.name, instance, t // 1000)
                    assert math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12), (
                        query.name,
                        instance,
                        t,
                    )
    assert len(got[("http_error_ratio", "a:1")]) == WINDOW.points


async def test_every_query_of_every_pack_is_accepted(prometheus: Prometheus) -> None:
    source = SourceConfig(name="main", url=prometheus.url, retries=0)
    async with PrometheusClient(source) as client:
        for pack in PACKS:
            for metric in load_pack(pack):
                for what, template in metric.templates().items():
                    for selector in ("", ',zone="eu"'):
                        query = render(
                            template,
                            service_label="job",
                            service="checkout",
                            instance_label="instance",
                            selector=selector,
                        )
                        # a rejection raises QueryError and fails the test, naming the query
                        await client.query_range(query, WINDOW, name=f"{pack}/{metric.name}/{what}")
    assert client.stats.requests == sum(2 * len(m.templates()) for p in PACKS for m in load_pack(p))
