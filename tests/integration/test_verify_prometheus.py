"""``vigil verify`` against a real Prometheus holding generated canary data (loaded with promtool).

Each scenario is its own service (job) with three baseline pods (version v41) and three canary pods (v42),
scraped every 15 s for 34 minutes: request counters by code and a latency histogram on a fine bucket
ladder, with realistic noise (load shared by all pods, Poisson requests and errors, per-pod latency
jitter). The http pack judges 30 minutes of it, replayed step by step.
"""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from tests.fixtures.prometheus import Prometheus
from tests.fixtures.tsdb import families, prometheus_with
from vigil.cli import app

pytestmark = [pytest.mark.integration]

assert shutil.which("promtool"), "needs Debian's `prometheus` package (apt-get install prometheus)"

T0 = 1_796_205_600  # 2026-12-02T10:00:00Z
STEPS = 34 * 4  # 15 s scrapes
START, END = "2026-12-02T10:02:00Z", "2026-12-02T10:32:00Z"
BASELINE, CANARY = ("b-0", "b-1", "b-2"), ("c-0", "c-1", "c-2")
LADDER = [f"{0.005 * 1.25**k:.6g}" for k in range(32)] + ["+Inf"]
#: scenario -> how the canary differs
SCENARIOS: dict[str, dict[str, Any]] = {
    "clean": {},
    "errors5": {"errors": 5.0},
    "idle": {"traffic": 0.0},
    "badpod": {"bad_pod": "c-1"},
    "fewerrors": {"base_ratio": 0.0, "canary_errors_at": (30, 60, 90)},
}


def lognormal_cdf(x: float, median: float, sigma: float) -> float:
    if math.isinf(x):
        return 1.0
    return 0.5 * math.erfc(-(math.log(x / median)) / (sigma * math.sqrt(2)))


def generate(seed: int = 7) -> str:
    rng = random.Random(seed)
    requests: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]] = {}
    buckets: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]] = {}
    for job, shape in SCENARIOS.items():
        totals: dict[tuple[str, str], float] = {}
        seen: dict[tuple[str, str], float] = {}
        for k in range(STEPS + 1):
            t = T0 + 15 * k
            load = 20 * (1 + 0.2 * math.sin(k / 20)) * math.exp(rng.gauss(0, 0.05))
            for pod in BASELINE + CANARY:
                canary = pod in CANARY
                version = "v42" if canary else "v41"
                traffic = shape.get("traffic", 1.0) if canary else 1.0
                mean = load * 15 * traffic
                n = max(0, round(rng.gauss(mean, math.sqrt(mean)))) if mean > 0 else 0
                ratio = shape.get("base_ratio", 0.01)
                if canary:
                    ratio *= shape.get("errors", 1.0)
                    if pod == shape.get("bad_pod"):
                        ratio *= 10
                errors = sum(rng.random() < ratio for _ in range(n)) if ratio > 0 else 0
                if canary and k in shape.get("canary_errors_at", ()) and pod == "c-0":
                    errors += 1
                base = {"job": job, "version": version, "pod": pod}
                for code, count in (("200", n - errors), ("500", errors)):
                    key = tuple(sorted((base | {"code": code}).items()))
                    totals[(pod, code)] = totals.get((pod, code), 0.0) + count
                    requests.setdefault(key, []).append((t, totals[(pod, code)]))
                median = 0.1 * (1 + load / 200) * math.exp(rng.gauss(0, 0.1))
                for le in LADDER:
                    key = tuple(sorted((base | {"le": le}).items()))
                    seen[(pod, le)] = seen.get((pod, le), 0.0) + round(
                        n * lognormal_cdf(float(le), median, 0.4)
                    )
                    buckets.setdefault(key, []).append((t, seen[(pod, le)]))
    return families({"http_requests_total": requests, "http_request_duration_seconds_bucket": buckets})


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    with prometheus_with(generate(), tmp_path_factory.mktemp("prometheus-verify")) as running:
        yield running


@pytest.fixture(scope="module")
def config(prometheus: Prometheus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("verify-config") / "vigil.yaml"
    source = f"{{name: main, url: '{prometheus.url}', retries: 1}}"
    path.write_text(f"labels: {{instance: pod}}\npoller:\n  sources: [{source}]\n")
    return path


def verify(config: Path, service: str, *extra: str) -> tuple[int, dict[str, Any], str]:
    args = ["verify", "-c", str(config), "--service", service, "--baseline", 'version="v41"']
    args += ["--canary", 'version="v42"', "--pack", "http", "--start", START, "--end", END, "--json", *extra]
    result = CliRunner().invoke(app, args)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, result.output
    return result.exit_code, orjson.loads(lines[-1]), result.output


def metric(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in doc["metrics"] if m["name"] == name)


def test_no_change_with_realistic_noise_passes(config: Path) -> None:
    code, doc, output = verify(config, "clean")
    assert code == 0, output
    assert doc["verdict"] == "pass"
    assert {m["result"] for m in doc["metrics"]} == {"pass"}
    assert all(i["health"] != "unhealthy" for i in doc["instances"])
    assert metric(doc, "http_latency_p95")["samples"] == 121


def test_error_ratio_five_times_fails_early_blaming_it(config: Path) -> None:
    code, doc, output = verify(config, "errors5")
    assert code == 1, output
    assert doc["verdict"] == "fail"
    blamed = metric(doc, "http_error_ratio")
    assert blamed["result"] == "high"
    assert blamed["regression"]
    assert "http_error_ratio high" in doc["reason"]
    assert doc["decided_at"] < "2026-12-02T10:05:00Z"  # within 3 minutes of metric time
    assert "step " in output  # progress was shown


def test_no_canary_traffic_is_inconclusive(config: Path) -> None:
    code, doc, output = verify(config, "idle")
    assert code == 3, output
    assert doc["verdict"] == "inconclusive"
    assert "no canary traffic since 2026-12-02T10:02:00Z" in doc["reason"]


def test_a_single_bad_pod_fails_and_is_the_one_unhealthy(config: Path) -> None:
    code, doc, output = verify(config, "badpod")
    assert code == 1, output
    health = {i["instance"]: i["health"] for i in doc["instances"]}
    assert health["c-1"] == "unhealthy", doc
    assert health["c-0"] != "unhealthy"
    assert health["c-2"] != "unhealthy"
    assert "c-1 unhealthy" in doc["reason"]


def test_baseline_without_errors_and_canary_with_a_few_passes(config: Path) -> None:
    code, doc, output = verify(config, "fewerrors")
    assert code == 0, output
    assert metric(doc, "http_error_ratio")["result"] == "pass"


def test_the_evidence_table_without_json(config: Path) -> None:
    args = ["verify", "-c", str(config), "--service", "errors5", "--baseline", 'version="v41"']
    args += ["--canary", 'version="v42"', "--pack", "http", "--start", START, "--end", END]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "http_error_ratio" in result.stdout
    assert "high !" in result.stdout
    assert "verdict: fail: canary regressed: http_error_ratio high" in result.stdout
