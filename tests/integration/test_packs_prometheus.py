"""Metric packs against a real Prometheus: every query of every pack is accepted, and every pack (http,
process, grpc, node, kubernetes) gives what PromQL gives for the same range — and what the known data says
by hand. The data also holds the series each pack must leave out (non-error gRPC codes, idle vs user CPU,
tmpfs file systems, the loopback device, cAdvisor's pod-level `container=""` series), so a query that
forgets a matcher gives another value."""

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
            **grpc_and_node_and_kubernetes(),
            "http_requests_total": requests,
            "http_request_duration_seconds_bucket": buckets,
            "process_resident_memory_bytes": memory,
            "process_cpu_seconds_total": cpu,
            "process_start_time_seconds": start,
        }
    )


#: per instance: the rate of the idle CPU seconds of cpu 0 and cpu 1 (user takes the rest)
IDLE = {"a:1": (0.7, 0.5), "b:2": (0.2, 0.4)}
#: file systems: (fstype, size, available); tmpfs is left out by the pack
FILESYSTEMS = {"/": ("ext4", 100e9, 40e9), "/data": ("xfs", 100e9, 20e9), "/run": ("tmpfs", 1e9, 1e9)}


def grpc_and_node_and_kubernetes() -> dict[str, dict]:
    by_name: dict[str, dict] = {
        name: {}
        for name in (
            "grpc_server_handled_total",
            "grpc_server_handling_seconds_bucket",
            "node_cpu_seconds_total",
            "node_memory_MemTotal_bytes",
            "node_memory_MemAvailable_bytes",
            "node_filesystem_size_bytes",
            "node_filesystem_avail_bytes",
            "node_network_receive_bytes_total",
            "container_cpu_usage_seconds_total",
            "container_memory_working_set_bytes",
            "container_cpu_cfs_periods_total",
            "container_cpu_cfs_throttled_periods_total",
            "kube_pod_container_status_restarts_total",
        )
    }

    def add(name: str, labels: dict[str, str], value: object) -> None:
        by_name[name] |= series(labels, value)

    for instance, scale in INSTANCES.items():
        base = {"job": "checkout", "instance": instance}
        # gRPC: 10 OK + 1 NotFound (a client error, not counted) + 1 Unavailable per second, times scale
        for code, per_second in (("OK", 10), ("NotFound", 1), ("Unavailable", 1)):
            labels = base | {"grpc_service": "shop.Cart", "grpc_method": "Add", "grpc_code": code}
            add("grpc_server_handled_total", labels, lambda k, p=per_second * scale: p * k)
        for le, per_second in BUCKETS.items():
            add("grpc_server_handling_seconds_bucket", base | {"le": le}, lambda k, p=per_second: p * k)
        # node-exporter
        for cpu, idle in enumerate(IDLE[instance]):
            for mode, per_second in (("idle", idle), ("user", 1 - idle)):
                labels = base | {"cpu": str(cpu), "mode": mode}
                add("node_cpu_seconds_total", labels, lambda k, p=per_second: p * k)
        add("node_memory_MemTotal_bytes", base, 8e9)
        add("node_memory_MemAvailable_bytes", base, 2e9 * scale)
        for mountpoint, (fstype, size, avail) in FILESYSTEMS.items():
            labels = base | {"device": f"dev{mountpoint}", "fstype": fstype, "mountpoint": mountpoint}
            add("node_filesystem_size_bytes", labels, size)
            add("node_filesystem_avail_bytes", labels, avail)
        for device, per_second in (("eth0", 1000 * scale), ("eth1", 500.0), ("lo", 5000.0)):
            add("node_network_receive_bytes_total", base | {"device": device}, lambda k, p=per_second: p * k)
        # cAdvisor: the container and the pod-level cgroup (container="") that the pack leaves out
        for container, cpu_rate, memory in (("app", 0.5 * scale, 2e8 * scale), ("", 0.9, 5e8)):
            labels = base | {"pod": "checkout-0", "container": container}
            add("container_cpu_usage_seconds_total", labels, lambda k, p=cpu_rate: p * k)
            add("container_memory_working_set_bytes", labels, memory)
        labels = base | {"pod": "checkout-0", "container": "app"}
        add("container_cpu_cfs_periods_total", labels, lambda k: 10 * k)
        add("container_cpu_cfs_throttled_periods_total", labels, lambda k, s=scale: 2 * s * k)
        # kube-state-metrics: a:1's container restarted once at T0+300
        restarted = instance == "a:1"
        add(
            "kube_pod_container_status_restarts_total",
            labels,
            lambda k, r=restarted: 1 if r and k >= 300 else 0,
        )
    return by_name


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
        "grpc_request_rate": 12 * scale,
        "grpc_error_ratio": 1 / 12,  # Unavailable only; NotFound is not a server error
        "grpc_latency_p95": 0.5 + 0.5 * (95 - 90) / (99 - 90),
        "grpc_latency_p99": 1.0,
        "node_cpu_utilization": 1 - sum(IDLE[instance]) / 2,
        "node_memory_utilization": 1 - 2e9 * scale / 8e9,
        "node_filesystem_utilization": 1 - (40e9 + 20e9) / (100e9 + 100e9),  # without tmpfs
        "node_network_receive_bytes_rate": 1000 * scale + 500,  # without lo
        "k8s_container_cpu_usage": 0.5 * scale,  # without the pod-level container=""
        "k8s_container_memory_working_set_bytes": 2e8 * scale,
        "k8s_container_cpu_throttled_ratio": 2 * scale / 10,
        # increase() over the last 5 minutes (Prometheus 2 ranges are closed: samples t-300..t, no
        # extrapolation): 1 while the window holds both a 0 and a 1, i.e. T0+300 <= t <= T0+599
        "k8s_container_restarts": 1.0 if instance == "a:1" and T0 + 300 <= t_s < T0 + 600 else 0.0,
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


@pytest.mark.parametrize("packs", [("http", "process"), ("grpc",), ("node",), ("kubernetes",)])
async def test_each_pack_gives_what_promql_gives(prometheus: Prometheus, packs: tuple[str, ...]) -> None:
    watch = WatchConfig(name="checkout", service="checkout", pack=packs, step_s=15)
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
    for (metric, instance), points in got.items():
        assert len(points) == WINDOW.points, (metric, instance)


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
