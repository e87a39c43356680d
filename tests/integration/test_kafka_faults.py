"""Apache Kafka fails under a running Vigil: kill -9 and restart on the same data.

A real Prometheus remote-writes to the ingest of a ``vigil run`` (worker and ingest as its children) on the
session's Apache Kafka; ``vigil tail`` follows the verdicts. The broker is killed with SIGKILL mid-stream and
restarted on its data: ingest answers 503 meanwhile, Prometheus retries, and afterwards every sample it
stored is on the samples topic; the same ``vigil run`` (same child processes) and the same ``vigil tail``
go on — a verdict produced after the restart is printed by the tail started before the kill.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import aiohttp
import orjson
import pytest
import yaml

from connectors.broker import free_port
from engine.config import VigilConfig
from tests.conftest import config_env, isolated_config
from tests.integration.samples_topic import Key, SamplesCollector
from tests.integration.test_receiver_prometheus import Prometheus, prometheus_config, remote_storage, until
from tests.kafka.node import KafkaNode

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.asyncio, pytest.mark.timeout(420)]


def default_signals() -> None:  # pragma: no cover - runs in the child between fork and exec
    """The child gets default SIGINT/SIGTERM handling, however the test run was launched (nohup)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def children_of(pid: int) -> set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


class Lines:
    """A child's stdout, line by line, read in a thread."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line)


@contextmanager
def process(args: list[str], env: dict[str, str], **kwargs: object) -> Iterator[subprocess.Popen[str]]:
    child = subprocess.Popen(
        args, env=env, stdin=subprocess.DEVNULL, text=True, preexec_fn=default_signals, **kwargs
    )  # type: ignore[call-overload]
    try:
        yield child
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if child.stdout is not None:
            child.stdout.close()


async def receiver_counts(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """``vigil_receiver_requests_total`` by code, from ingest's ``/metrics``."""
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith('vigil_receiver_requests_total{code="'):
            code = line.split('"')[1]
            counts[code] = float(line.rsplit(" ", 1)[1])
    return counts


def incident_csv(path: Path) -> Path:
    rng = random.Random(7)
    t0 = int(time.time()) - 600
    values = [100 + rng.gauss(0, 1) for _ in range(120)] + [900.0] * 10
    path.write_text("timestamp,value\n" + "".join(f"{t0 + 5 * i},{v!r}\n" for i, v in enumerate(values)))
    return path


async def test_vigil_rides_out_a_kill_9_of_apache_kafka(kafka: KafkaNode, tmp_path: Path) -> None:
    config: VigilConfig = await asyncio.to_thread(isolated_config, kafka, warmup=30)
    port = free_port()
    config_file = tmp_path / "vigil.yaml"
    config_file.write_text(yaml.safe_dump({"kafka": {"ack_timeout_s": 2}, "receiver": {"port": port}}))
    env = config_env(config)
    ingest_url = f"http://127.0.0.1:{port}"
    vigil = [sys.executable, "-m", "vigil"]
    gauges: list[tuple[str, Key]] = []
    with (
        process([*vigil, "run", "-c", str(config_file)], env) as run,
        process([*vigil, "tail", "--json"], env, stdout=subprocess.PIPE) as tail,
    ):
        tailed = Lines(tail.stdout)  # type: ignore[arg-type]
        async with aiohttp.ClientSession() as session:

            async def ingest_ready() -> bool:
                assert run.poll() is None, "vigil run exited"
                try:
                    async with session.get(f"{ingest_url}/-/ready") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            deadline = time.monotonic() + 60
            while not await ingest_ready():
                assert time.monotonic() < deadline, "vigil run's ingest never became ready"
                await asyncio.sleep(0.2)
            parts = children_of(run.pid)
            assert len(parts) >= 2, parts  # worker and ingest

            prometheus = Prometheus(tmp_path / "prometheus", {})
            prometheus.workdir.mkdir()
            prometheus.config = prometheus_config(prometheus.instance, f"{ingest_url}/api/v1/write")
            job = f'job="prometheus",instance="{prometheus.instance}"'
            gauges = [
                (f"up{{{job}}}", ("prometheus", "up", prometheus.instance)),
                (
                    f"scrape_duration_seconds{{{job}}}",
                    ("prometheus", "scrape_duration_seconds", prometheus.instance),
                ),
                (
                    f"scrape_samples_scraped{{{job}}}",
                    ("prometheus", "scrape_samples_scraped", prometheus.instance),
                ),
            ]
            try:
                async with SamplesCollector(config, config.kafka.partitions) as collector:
                    await prometheus.start(session)
                    await until(
                        lambda: all(len(collector.points.get(k, ())) >= 3 for _, k in gauges),
                        40,
                        "samples before the kill",
                    )

                    kafka.kill()
                    killed = time.monotonic()
                    killed_ms = time.time() * 1000
                    await until_async(
                        lambda: _answered(session, ingest_url, "503", 2), 60, "ingest answering 503"
                    )
                    down_for = time.monotonic() - killed
                    await asyncio.to_thread(kafka.start)
                    restarted_ms = time.time() * 1000

                    # Prometheus catches up; then everything it stored up to a point past the restart must
                    # be on the topic (duplicates from its retries allowed).
                    await until(
                        lambda: all(collector.last(k) > restarted_ms + 3000 for _, k in gauges),
                        90,
                        "samples after the restart",
                    )
                    t_end = min(collector.last(k) for _, k in gauges)
                    for selector, key in gauges:
                        stored = await prometheus.raw(session, selector, t_end / 1000)
                        assert any(killed_ms < t < restarted_ms for t, _ in stored), "none stored meanwhile"
                        missing = sorted({t for t, _ in stored} - collector.timestamps(key))
                        assert not missing, (
                            f"{key}: {len(missing)} stored samples not on the topic: {missing[:5]}"
                        )
                    counters = await remote_storage(prometheus, session)
                    codes = await receiver_counts(session, ingest_url)
            finally:
                prometheus.stop()
                if not kafka.alive:  # the session's other tests need it
                    kafka.start()
        assert counters["retried_total"] > 0, counters
        assert (counters["failed_total"], counters["dropped_total"]) == (0, 0), counters
        assert codes.get("503", 0) >= 1, codes
        assert codes.get("204", 0) >= 1, codes

        # The same vigil run and the same tail go on: a verdict made now reaches the tail started earlier.
        assert run.poll() is None, "vigil run exited"
        assert children_of(run.pid) == parts, "vigil run restarted a part"
        replay = await asyncio.to_thread(
            subprocess.run,
            [
                *vigil,
                "replay",
                str(incident_csv(tmp_path / "incident.csv")),
                "--service",
                "svc",
                "--metric",
                "m",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert replay.returncode == 0, replay.stderr
        await until(
            lambda: any(_replayed_anomaly(line) for line in tailed.lines),
            60,
            "the verdict in the output of the tail started before the kill",
        )
        assert tail.poll() is None
    print(f"kafka kill -9: 503 after {down_for:.1f}s, restart took {kafka.start_seconds:.1f}s")


def _replayed_anomaly(line: str) -> bool:
    event = orjson.loads(line)
    return bool(event["type"] == "vigil.anomaly.opened" and event["data"]["service"] == "svc")


async def _answered(session: aiohttp.ClientSession, url: str, code: str, at_least: int) -> bool:
    try:
        return (await receiver_counts(session, url)).get(code, 0) >= at_least
    except aiohttp.ClientError:
        return False


async def until_async(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.2)
