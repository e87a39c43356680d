"""The poller against a real Prometheus holding known data (``tests/fixtures/tsdb.py``): it must emit
exactly the stored samples — values bit-equal, timestamps exact — over a window longer than Prometheus'
11,000 points per series, with NaN/±Inf left out and counted, and a query Prometheus rejects reported
while the others go on."""

from __future__ import annotations

import datetime
import math
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from connectors.prometheus import MAX_POINTS, ErrorKind, PrometheusClient, Window
from connectors.prometheus.watch import poll_watch
from engine.config import load_config
from tests.fixtures.prometheus import Prometheus
from tests.fixtures.tsdb import Labels, openmetrics, prometheus_with

pytestmark = pytest.mark.integration

assert shutil.which("promtool"), "needs Debian's `prometheus` package (apt-get install prometheus)"

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
STEP = 10
N = MAX_POINTS + 1_500  # one window of N steps needs two requests
END = T0 + (N - 1) * STEP
NAN_AT = {T0 + k * STEP for k in range(500, N, 1000)}
INF_AT = {T0 + 7 * STEP: math.inf, T0 + 8 * STEP: -math.inf}


def known_data() -> dict[Labels, list[tuple[int, float]]]:
    rng = random.Random(9)
    a = [(T0 + k * STEP, rng.uniform(-1e6, 1e6)) for k in range(N)]
    a[1] = (a[1][0], 0.1)
    a[2] = (a[2][0], 1e-300)
    a[3] = (a[3][0], 1.7976931348623157e308)
    b = [(t, math.nan if t in NAN_AT else INF_AT.get(t, rng.expovariate(3.0))) for t, _ in a]
    none = [(t, float(rng.randint(0, 100))) for t, _ in a]
    other = [(t, 1.0) for t, _ in a]
    return {
        (("instance", "a:1"), ("job", "checkout")): a,
        (("instance", "b:2"), ("job", "checkout")): b,
        (("job", "checkout"),): none,
        (("instance", "a:1"), ("job", "other")): other,
    }


DATA = known_data()


def expected() -> dict[str, list[list[Any]]]:
    """What the poller must emit for job="checkout": every finite stored sample, per instance."""
    out = {}
    for labels, samples in DATA.items():
        named = dict(labels)
        if named["job"] == "checkout":
            out[named.get("instance", "")] = [[t * 1000, v] for t, v in samples if math.isfinite(v)]
    return out


NONFINITE = sum(1 for s in DATA.values() for _, v in s if not math.isfinite(v))


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    workdir = tmp_path_factory.mktemp("prometheus-known")
    with prometheus_with(openmetrics("vigil_test_value", DATA), workdir) as running:
        yield running


def config_file(tmp_path: Path, url: str, queries: list[dict[str, str]]) -> Path:
    path = tmp_path / "vigil.yaml"
    watch = {"name": "checkout", "service": "checkout", "step_s": STEP, "queries": queries}
    path.write_text(
        yaml.safe_dump({"poller": {"sources": [{"name": "main", "url": url}], "watches": [watch]}})
    )
    return path


def iso(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat()


def vigil_poll(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vigil", "poll", "--once", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


VALUE_QUERY = {"name": "value", "query": 'vigil_test_value{job="{{service}}"}'}


def test_vigil_poll_json_emits_exactly_the_stored_samples(prometheus: Prometheus, tmp_path: Path) -> None:
    config = config_file(tmp_path, prometheus.url, [VALUE_QUERY])
    done = vigil_poll(config, "--json", "--start", iso(T0), "--end", iso(END))
    assert done.returncode == 0, done.stderr
    lines = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert {(d["service"], d["metric"]) for d in lines} == {("checkout", "value")}
    got = {d["instance"]: d["points"] for d in lines}
    want = expected()
    assert sorted(got) == sorted(want) == ["", "a:1", "b:2"]
    for instance, points in want.items():
        assert len(got[instance]) == len(points)
        assert got[instance] == points, instance  # timestamps exact, floats bit-equal (JSON round trip)
        assert all(type(t) is int for t, _ in got[instance])
    assert len(want["a:1"]) == N > MAX_POINTS
    assert f"{NONFINITE} NaN/Inf left out" in done.stderr


def test_vigil_poll_human_output_and_a_rejected_query(prometheus: Prometheus, tmp_path: Path) -> None:
    broken = {"name": "broken", "query": "rate(vigil_test_value[5m]"}
    config = config_file(tmp_path, prometheus.url, [broken, VALUE_QUERY])
    done = vigil_poll(config, "--start", iso(T0), "--end", iso(T0 + 60))
    assert done.returncode == 1, done.stderr
    assert "query broken: rejected, fix the query (rejected): HTTP 400: bad_data:" in done.stderr
    lines = sorted(done.stdout.splitlines())
    assert len(lines) == 3
    assert lines[1].startswith(
        "checkout/value instance=a:1: 7 points 2026-01-01T00:00:00Z .. 2026-01-01T00:01:00Z"
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("max_points", [997, 1])
async def test_many_splits_lose_and_repeat_nothing(
    prometheus: Prometheus, tmp_path: Path, max_points: int
) -> None:
    config = load_config(config_file(tmp_path, prometheus.url, [VALUE_QUERY]))
    watch = config.poller.watches[0]
    # Start before the data (those steps have none) and end off the grid (the end is inclusive). After the
    # last sample PromQL's 5-minute lookback would repeat it, so the window ends with the data.
    steps = 3000 if max_points == 1 else N
    last = T0 + (steps - 1) * STEP
    window = Window((T0 - 5 * STEP) * 1000, last * 1000 + 3, STEP * 1000)
    async with PrometheusClient(config.poller.sources[0], max_points=max_points) as client:
        poll = await poll_watch(client, watch, config.labels, window)
    assert not poll.failed
    got = {s.instance: [[t, v] for t, v in s.points] for s in poll.series}
    for instance, points in expected().items():
        assert got[instance] == [p for p in points if p[0] <= last * 1000]
    assert client.stats.requests == -(-window.points // max_points)
    assert ErrorKind.REJECTED not in client.stats.errors


def test_a_selector_watch_polls_each_service_it_finds(prometheus: Prometheus, tmp_path: Path) -> None:
    path = tmp_path / "vigil.yaml"
    query = {"name": "value", "query": 'vigil_test_value{job="{{service}}"{{selector}}}'}
    watch = {"name": "all", "selector": '{job=~".+"}', "step_s": STEP, "queries": [query]}
    path.write_text(
        yaml.safe_dump({"poller": {"sources": [{"name": "main", "url": prometheus.url}], "watches": [watch]}})
    )
    done = vigil_poll(path, "--json", "--start", iso(T0), "--end", iso(T0 + 99 * STEP))
    assert done.returncode == 0, done.stderr
    got = {(d["service"], d["instance"]): d["points"] for d in map(orjson.loads, done.stdout.splitlines())}
    want = {
        (dict(labels)["job"], dict(labels).get("instance", "")): [
            [t * 1000, v] for t, v in samples[:100] if math.isfinite(v)
        ]
        for labels, samples in DATA.items()
    }
    assert (
        sorted(got)
        == sorted(want)
        == [("checkout", ""), ("checkout", "a:1"), ("checkout", "b:2"), ("other", "a:1")]
    )
    assert got == want
    assert "watch all/other:" in done.stderr


def test_a_selector_that_matches_nothing_says_so(prometheus: Prometheus, tmp_path: Path) -> None:
    path = tmp_path / "vigil.yaml"
    query = {"name": "value", "query": 'vigil_test_value{job="{{service}}"}'}
    watch = {"name": "none", "selector": '{job="nobody"}', "step_s": STEP, "queries": [query]}
    path.write_text(
        yaml.safe_dump({"poller": {"sources": [{"name": "main", "url": prometheus.url}], "watches": [watch]}})
    )
    done = vigil_poll(path, "--json", "--start", iso(T0), "--end", iso(T0 + 60))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert 'watch none: no series match {job="nobody"}' in done.stderr
