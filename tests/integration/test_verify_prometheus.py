"""``vigil verify`` against a real Prometheus holding generated canary data (loaded with promtool).

Each scenario is its own service (job) with three baseline pods (version v41) and three canary pods (v42),
scraped every 15 s for 34 minutes: request counters by code and a latency histogram on a fine bucket
ladder, with realistic noise (load shared by all pods, Poisson requests and errors, per-pod latency
jitter). The http pack judges 30 minutes of it, replayed step by step.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from tests.fixtures.canary import END, START, generate
from tests.fixtures.prometheus import Prometheus
from tests.fixtures.tsdb import prometheus_with
from vigil.cli import app

pytestmark = [pytest.mark.integration]

assert shutil.which("promtool"), "needs Debian's `prometheus` package (apt-get install prometheus)"


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
    # the ML view (evidence only): the baseline's detector finds the canary's latency ordinary
    for name in ("http_latency_p50", "http_latency_p95", "http_latency_p99"):
        ml = metric(doc, name)["ml"]
        assert (ml["trained"], ml["steps"], ml["anomalous"]) == (121, 102, 0), (name, ml)
        assert ml["expected_band"][1] > ml["expected"] > 0


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


@pytest.mark.parametrize(
    ("service", "blamed", "result", "within"),
    [
        # the errors rule's 10 % relative ignore threshold (config/vigil.yaml) applies: 3.5 min here
        ("errors2", "http_error_ratio", "high", "2026-12-02T10:05:30Z"),
        ("latency25", "http_latency_p95", "high", "2026-12-02T10:08:00Z"),
        ("latency60", "http_latency_p95", "high", "2026-12-02T10:08:00Z"),
        ("throughput70", "http_request_rate", "low", "2026-12-02T10:08:00Z"),
        ("leak", "process_memory_bytes", "high", "2026-12-02T10:15:00Z"),
    ],
)
def test_regressions_fail_blaming_the_metric(
    config: Path, service: str, blamed: str, result: str, within: str
) -> None:
    code, doc, output = verify(config, service, "--pack", "process")
    assert code == 1, output
    assert metric(doc, blamed)["result"] == result, doc["reason"]
    assert f"{blamed} {result}" in doc["reason"]
    assert doc["decided_at"] <= within


def test_higher_noise_with_the_same_median_passes(config: Path) -> None:
    code, doc, output = verify(config, "noisy", "--pack", "process")
    assert code == 0, output
    assert metric(doc, "process_memory_bytes")["result"] == "pass"
    assert "not judged (no data on either side): process_cpu_usage" in doc["reason"]


def test_too_short_a_run_is_inconclusive_saying_what_is_missing(config: Path) -> None:
    args = ["verify", "-c", str(config), "--service", "clean", "--baseline", 'version="v41"']
    args += ["--canary", 'version="v42"', "--pack", "http", "--json"]
    args += ["--start", "2026-12-02T10:02:00Z", "--end", "2026-12-02T10:05:00Z"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3, result.output
    doc = orjson.loads(result.stdout.splitlines()[-1])
    assert "http_error_ratio: 13 samples, need 20" in doc["missing"]


def test_ml_history_lets_the_ml_view_learn_the_baseline_before_start(config: Path) -> None:
    args = ["--pack", "process", "--start", "2026-12-02T10:10:00Z", "--no-fail-fast"]
    _, plain, _ = verify(config, "leak", *args)
    _, longer, output = verify(config, "leak", *args, "--ml-history", "8m")
    for name in ("http_latency_p95", "process_memory_bytes"):
        without, learned = metric(plain, name)["ml"], metric(longer, name)["ml"]
        assert learned["trained"] == without["trained"] + 32, (name, output)  # 10:02:00 ... 10:09:45
        assert learned["steps"] > without["steps"]  # scored from start: min_samples already learned
    assert longer["verdict"] == plain["verdict"] == "fail"  # evidence only: the verdict is the tests'
    assert longer["reason"] == plain["reason"]
