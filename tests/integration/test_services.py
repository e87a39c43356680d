"""Service health end to end on the embedded broker: samples through a real ``vigil worker`` → the status
topic (and verdicts) → a real ``vigil api`` process. The service shows up healthy, an incident on one pod
makes it ``observe`` and on half of them ``unhealthy`` with the open anomalies; scores are on both
``/metrics``; hostile status records are dead-lettered with a reason and the API lives on; after a restart
of the API process the views are the same."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.broker import EmbeddedBroker, free_port
from connectors.kafka import start_producer
from engine.config import VigilConfig
from engine.events import iso
from engine.samples import Series, encode_batch, partition_for
from engine.status import status_key
from tests.conftest import config_env, isolated_config, read_topic
from tests.integration.processes import default_signals, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

STEP = 15_000
PODS = ["p1", "p2", "p3", "p4"]
ERRORS = "http_errors_total:rate"
T0 = (int(time.time() * 1000) - 6 * 3600_000) // STEP * STEP


def get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    except OSError:
        return 0, None
    return status, body if path.startswith(("/metrics", "/-/")) else orjson.loads(body)


def metrics(port: int) -> dict[str, float]:
    status, text = get(port, "/metrics")
    if status != 200:
        return {}
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            found[f"{s.name}{{{labels}}}"] = s.value
    return found


def views(port: int) -> tuple[Any, ...] | None:
    answers = [get(port, p) for p in ("/api/v1/services", "/api/v1/services/checkout", "/api/v1/anomalies")]
    if any(code != 200 for code, _ in answers):
        return None
    return tuple(body for _, body in answers)


def points(start: int, n: int, value: float) -> list[tuple[int, float | None]]:
    return [(T0 + (start + i) * STEP, value + (start + i) % 5) for i in range(n)]


async def send(config: VigilConfig, series: list[Series]) -> None:
    producer = await start_producer(config.kafka)
    try:
        for s in series:
            partition = partition_for(s.key, config.kafka.partitions)
            await producer.send_and_wait(config.kafka.topics.samples, encode_batch([s]), partition=partition)
    finally:
        await producer.stop()


async def hostile(config: VigilConfig) -> None:
    producer = await start_producer(config.kafka)
    topic = config.kafka.topics.status
    key = status_key("checkout", ERRORS, "p1")
    good = {
        "v": 1,
        "service": "checkout",
        "metric": ERRORS,
        "instance": "p1",
        "type": "errors",
        "state": "normal",
        "score": 0.1,
        "value": 1.0,
        "expected": None,
        "ts_ms": T0,
        "wall_ms": int(time.time() * 1000),
    }
    try:
        for value, k in (
            (b"\x00\xffgarbage", key),
            (orjson.dumps(good | {"state": "on fire"}), key),
            (orjson.dumps(good | {"metric": "m" * 30_000}), status_key("checkout", "m" * 30_000, "p1")),
            (orjson.dumps(good), status_key("checkout", "other", "p9")),  # key is not its series
        ):
            await producer.send_and_wait(topic, value, key=k)
    finally:
        await producer.stop()


class Process:
    def __init__(self, command: str, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vigil", command],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=default_signals,
            )

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def test_health_from_a_real_worker_through_the_status_topic_to_the_api_and_after_its_restart(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    config = isolated_config(broker, checkpoint_interval_s=1.0)
    api_port = free_port()
    env = config_env(config) | {"VIGIL_STATUS__INTERVAL_S": "0.5", "VIGIL_API__PORT": str(api_port)}
    started: list[Process] = []

    def start(command: str) -> Process:
        started.append(Process(command, env, tmp_path / f"{command}.log"))
        return started[-1]

    try:
        worker = start("worker")
        api = start("api")
        steady = [Series("checkout", ERRORS, p, points(0, 220, 100.0)) for p in PODS]
        steady.append(Series("checkout", "queue_depth", "p1", points(0, 220, 40.0)))
        steady.append(Series("warming", "queue_depth", "w1", points(3, 10, 5.0)))  # still learning
        asyncio.run(send(config, steady))

        def service() -> dict[str, Any] | None:
            code, body = get(api_port, "/api/v1/services")
            found = [s for s in body if s["service"] == "checkout"] if code == 200 else []
            return found[0] if found else None

        def healthy() -> bool:
            s = service()
            return s is not None and s["health"] == "healthy" and len(s["instances"]) == len(PODS)

        assert wait_for(healthy, 120, interval=0.5), (service(), worker.log.read_text()[-3000:])
        learning_since = iso(T0 + 3 * STEP)  # its first sample

        def warming() -> dict[str, Any] | None:
            code, body = get(api_port, "/api/v1/services/warming")
            return body if code == 200 else None

        assert wait_for(lambda: warming() is not None, 30, interval=0.5)
        w = warming()
        assert w is not None
        assert (w["health"], w["since"]) == ("learning", learning_since), w
        assert [(i["health"], i["since"]) for i in w["instances"]] == [("learning", learning_since)]
        detail = get(api_port, "/api/v1/services/checkout")[1]
        errors_p3 = next(m for m in detail["metrics"] if m["metric"] == ERRORS and m["instance"] == "p3")
        assert errors_p3["state"] == "normal"
        assert errors_p3["expected"]["low"] is None  # errors: only higher is bad
        assert errors_p3["expected"]["high"] > 100
        assert errors_p3["value"] == 100.0 + 219 % 5
        assert {m["type"] for m in detail["metrics"]} == {"errors", "custom"}

        # An incident on one pod of four: observe; the pod itself is unhealthy.
        asyncio.run(send(config, [Series("checkout", ERRORS, "p1", points(220, 5, 10_000.0))]))

        def health_is(want: str, anomalies: int) -> bool:
            s = service()
            return s is not None and s["health"] == want and len(s["open_anomalies"]) == anomalies

        assert wait_for(lambda: health_is("observe", 1), 60, interval=0.5), service()
        s = service()
        assert s is not None
        [opened] = s["open_anomalies"]
        assert (opened["instance"], opened["metric"], opened["state"]) == ("p1", ERRORS, "open")
        assert opened["value"] >= 10_000
        assert {i["instance"]: i["health"] for i in s["instances"]}["p1"] == "unhealthy"
        # On half the pods: unhealthy.
        asyncio.run(send(config, [Series("checkout", ERRORS, "p2", points(220, 5, 10_000.0))]))
        assert wait_for(lambda: health_is("unhealthy", 2), 60, interval=0.5), service()

        # Scores as Prometheus metrics: every series on the API's /metrics, a worker's own on its port.
        series = f'instance="p1",metric="{ERRORS}",service="checkout"'

        def scored() -> bool:
            m = metrics(api_port)
            return (
                m.get(f"vigil_anomaly_score{{{series}}}", 0) >= 1
                and m.get('vigil_service_health{service="checkout",state="unhealthy"}') == 1
                and m.get('vigil_service_health{service="checkout",state="healthy"}') == 0
            )

        assert wait_for(scored, 30, interval=0.5), metrics(api_port)
        m = metrics(api_port)
        assert m[f'vigil_expected_upper{{instance="p3",metric="{ERRORS}",service="checkout"}}'] > 100
        assert m[f'vigil_anomaly_score{{instance="p3",metric="{ERRORS}",service="checkout"}}'] < 1
        found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", worker.log.read_text())
        assert found, worker.log.read_text()[-2000:]
        worker_metrics = metrics(int(found.group(1)))
        assert worker_metrics[f"vigil_anomaly_score{{{series}}}"] >= 1

        # Hostile status records: dead-lettered with the reason, the API carries on.
        asyncio.run(hostile(config))
        dead = asyncio.run(
            read_topic(
                broker.bootstrap_servers,
                config.kafka.topics.deadletter,
                lambda r: len([d for d in r if d["source"]["topic"] == config.kafka.topics.status]) >= 4,
                60,
            )
        )
        reasons = [d["reason"] for d in dead if d["source"]["topic"] == config.kafka.topics.status]
        assert len(reasons) == 4, reasons
        assert any("must be JSON" in r for r in reasons)
        assert any("state must be one of" in r for r in reasons)
        assert any("max_record_bytes" in r for r in reasons)
        assert any("key is not its series" in r for r in reasons)
        assert api.process.poll() is None
        refused = 'vigil_api_records_refused_total{reason="bad_status",topic="' + config.kafka.topics.status
        assert metrics(api_port)[refused + '"}'] == 4

        def settled() -> tuple[Any, ...] | None:
            first = views(api_port)
            return first if first is not None and first == views(api_port) else None

        assert wait_for(settled, 30, interval=0.5)
        before = settled()
        assert before is not None
        assert before[0][0]["health"] == "unhealthy"

        # A restart of the API process: it reads both topics from the beginning and answers the same.
        assert api.stop() == 0
        api = start("api")
        assert wait_for(lambda: views(api_port) is not None, 60, interval=0.5), api.log.read_text()[-2000:]
        assert views(api_port) == before  # the learning service's since too
        assert wait_for(lambda: get(api_port, "/-/ready")[0] == 200, 30, interval=0.5)
    finally:
        for p in started:
            p.stop()
