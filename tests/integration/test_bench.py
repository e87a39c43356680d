"""The benchmarks run end to end in their smallest setting (their figures are not checked here: benchmarks
are not tests, but a benchmark that no longer runs, or measures nothing, should fail CI)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.kafka.node import KafkaNode

pytestmark = pytest.mark.integration

_RATE = r"([\d,]+) \([\d,]+-[\d,]+\)"


def run_bench(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def rate(output: str, label: str) -> float:
    found = re.search(re.escape(label) + r"\s+" + _RATE, output)
    assert found, f"no figure for {label!r} in:\n{output}"
    return float(found.group(1).replace(",", ""))


def test_the_pipeline_bench_runs_both_shapes() -> None:
    out = run_bench("bench.pipeline", "--runs", "1", "--requests", "8", "--keys", "2", "--points", "500")
    assert "production (raw, 1 message per partition per request" in out
    assert "dense (prepared" in out
    pipeline = re.findall(r"pipeline \(produce -> broker .*?:\s+" + _RATE, out)
    bare = re.findall(r"bare \(Processor\.handle .*?:\s+" + _RATE, out)
    assert len(pipeline) == len(bare) == 2, out
    assert all(float(v.replace(",", "")) > 0 for v in pipeline + bare)
    assert out.count("ratio pipeline / bare") == 2


@pytest.mark.kafka
def test_the_scale_bench_runs_on_apache_kafka(kafka: KafkaNode) -> None:
    out = run_bench(
        "bench.scale",
        "--runs",
        "1",
        "--requests",
        "8",
        "--backlog",
        "60",
        "--in-flight",
        "2",
        "--bootstrap",
        kafka.bootstrap_servers,
    )
    assert re.search(r"this machine has \d+ cores", out), out
    for label in ("1 ingest", "2 ingests", "bare", "1 worker", "2 workers"):
        assert rate(out, label) > 0
    assert "ratio 2 ingests / 1 ingest" in out
    assert "ratio 1 ingest / bare" in out
    assert "ratio 2 workers / 1 worker" in out


def test_the_notify_bench_measures_every_path() -> None:
    out = run_bench("bench.notify", "--runs", "1", "--events", "120")
    for label in ("bare", "webhook", "slack"):
        assert rate(out, label) > 0
    assert "ratio vs bare" in out


def test_the_alerting_bench_measures_the_delay_to_alertmanager() -> None:
    out = run_bench("bench.alerting", "--runs", "1", "--series", "3", "--pace", "0.1")
    vigil = re.search(r"vigil \(ingest.*?: p50 ([\d,]+) ms, p99 ([\d,]+) ms .*n=(\d+)\)", out)
    bare = re.search(r"bare  \(ingest.*?: p50 ([\d,]+) ms", out)
    assert vigil, out
    assert bare, out
    assert int(vigil.group(3)) == 3  # every series raised its alert
    assert float(vigil.group(1).replace(",", "")) > 0
    assert "ratio of medians vigil / bare" in out


def test_the_verification_bench_runs_with_the_ml_view() -> None:
    out = run_bench(
        "bench.verification", "--metrics", "4", "--instances", "2", "--steps", "30", "--runs", "1"
    )
    assert re.search(r"Vigil, per look: +[\d.]+ ms", out), out
    found = re.search(
        r"ML view \(detector per metric\), per look: ([\d.]+) ms .* flagged at some step: (\d+)/4", out
    )
    assert found, out
    assert float(found.group(1)) > 0
