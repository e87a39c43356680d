"""A real worker serves its Prometheus metrics, and they follow what it processes."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.broker import EmbeddedBroker
from connectors.kafka import start_producer
from engine.config import VigilConfig
from engine.samples import Series, encode_batch, partition_for
from tests.conftest import config_env, isolated_config
from tests.integration.processes import default_signals, listening_ports, wait_for

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000


class MetricsWorker:
    def __init__(self, config: VigilConfig, log: Path, **env: str) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vigil", "worker"],
                env=config_env(config) | env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=out,
                preexec_fn=default_signals,
            )

    def port(self) -> int | None:
        found = re.search(
            r"metrics on http://127\.0\.0\.1:(\d+)/metrics", self.log.read_text(errors="replace")
        )
        return int(found.group(1)) if found else None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[type[MetricsWorker]]:
    started: list[MetricsWorker] = []

    class Tracked(MetricsWorker):
        def __init__(self, config: VigilConfig, **env: str) -> None:
            super().__init__(config, tmp_path / f"worker{len(started)}.log", **env)
            started.append(self)

    yield Tracked
    for w in started:
        w.stop()


def scrape(port: int) -> dict[str, float]:
    """Samples by name{labels}, e.g. ``vigil_worker_deadletters_total{reason="bad_record"}``."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            found[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return found


def try_scrape(port: int) -> dict[str, float]:
    try:
        return scrape(port)
    except OSError:
        return {}


async def send(config: VigilConfig, records: list[tuple[int, bytes]]) -> None:
    producer = await start_producer(config.kafka)
    try:
        for partition, value in records:
            await producer.send_and_wait(config.kafka.topics.samples, value, partition=partition)
    finally:
        await producer.stop()


def test_the_metrics_follow_what_the_worker_processes(
    broker: EmbeddedBroker, start: type[MetricsWorker]
) -> None:
    config = isolated_config(broker, checkpoint_interval_s=1.0)
    worker = start(config)
    assert wait_for(worker.port, 60), worker.log.read_text()
    port = worker.port()
    assert port
    assert wait_for(lambda: try_scrape(port), 60), "the worker never served /metrics"
    first = scrape(port)
    assert first["vigil_worker_samples_processed_total"] == 0
    assert first["vigil_worker_models"] == 0
    assert listening_ports(worker.process.pid) == {port}

    series = [
        Series("checkout", f"m{i}:rate", "a", [(T0 + t * 15_000, float(t % 7)) for t in range(40)])
        for i in range(3)
    ]
    partitions = config.kafka.partitions
    asyncio.run(send(config, [(partition_for(s.key, partitions), encode_batch([s])) for s in series]))
    asyncio.run(send(config, [(0, b"not json")]))
    samples = config.kafka.topics.samples
    fed = {partition_for(s.key, partitions) for s in series} | {0}

    def caught_up() -> dict[str, float] | None:
        m = try_scrape(port)
        lags = {k: v for k, v in m.items() if k.startswith("vigil_worker_consumer_lag{")}
        done = (
            m.get("vigil_worker_samples_processed_total") == 120
            and m.get("vigil_worker_models") == 3
            and m.get('vigil_worker_deadletters_total{reason="bad_record"}') == 1
            and all(f'vigil_worker_consumer_lag{{partition="{p}",topic="{samples}"}}' in lags for p in fed)
            and set(lags.values()) == {0}
            and m.get("vigil_worker_model_state_bytes", 0) > 0
        )
        return m if done else None

    assert wait_for(caught_up, 60, interval=0.5), try_scrape(port)
    m = scrape(port)
    assert m['vigil_worker_deadletters_total{reason="rejected"}'] == 0
    assert m['vigil_worker_points_skipped_total{reason="out_of_order"}'] == 0
    assert m["vigil_worker_send_retries_total"] == 0
    assert m["process_resident_memory_bytes"] > 0
    # Checkpoints every second: the age stays small once they run.
    assert wait_for(lambda: try_scrape(port).get("vigil_worker_checkpoint_age_seconds", 99) < 3, 30)


def test_a_taken_port_is_a_clear_error_and_metrics_can_be_off(
    broker: EmbeddedBroker, start: type[MetricsWorker]
) -> None:
    config = isolated_config(broker)
    first = start(config)
    assert wait_for(first.port, 60), first.log.read_text()
    taken = first.port()
    clash = start(config, VIGIL_WORKER__METRICS_PORT=str(taken))
    assert clash.process.wait(60) == 2
    message = clash.log.read_text()
    assert f"worker metrics cannot listen on 127.0.0.1:{taken}" in message
    assert "worker.metrics_port" in message
    assert "Traceback" not in message

    quiet = start(config, VIGIL_WORKER__METRICS_ENABLED="false")
    # It works (joins the group and judges) yet opens no port at all.
    assert wait_for(lambda: "metrics on" not in quiet.log.read_text() and _joined(quiet), 60)
    assert listening_ports(quiet.process.pid) == set()


def _joined(worker: MetricsWorker) -> bool:
    """The worker process is up with Kafka connections (any socket to the broker) and still running."""
    return worker.process.poll() is None and len(_sockets(worker.process.pid)) > 0


def _sockets(pid: int) -> list[str]:
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if fd.readlink().as_posix().startswith("socket:"):
                out.append(fd.name)
        except OSError:
            continue
    return out
