"""`vigil run` keeps its parts running: a crashed child is restarted; a dead embedded broker stops it all;
SIGTERM stops everything within 10 s, whatever state the parts are in and however Vigil was launched."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from connectors.kafka import start_producer
from engine.config import load_config
from engine.samples import Series, encode_batch, partition_for
from tests.integration.processes import default_signals, ignore_sigint, wait_for
from tests.integration.test_lifecycle import broker_pids, pids_with
from tests.integration.test_worker_metrics import try_scrape

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000_000


@dataclass
class Run:
    """A `vigil run` with a config path of its own (so its children can be found by command line)."""

    process: subprocess.Popen[bytes]
    config: Path
    log: Path
    state: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def child(self, part: str) -> list[int]:
        return pids_with(b"vigil", f"{part}\0".encode(), str(self.config).encode())

    def bootstrap(self) -> str:
        servers: str = orjson.loads(self.state.read_bytes())["bootstrap_servers"]
        return servers

    def metrics_ports(self) -> list[int]:
        return [int(p) for p in re.findall(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", self.output())]


@pytest.fixture
def vigil_run(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def start(preexec: Callable[[], None] = default_signals) -> Run:
        config = tmp_path / f"vigil{len(runs)}.yaml"
        config.write_text((ROOT / "config" / "vigil.yaml").read_text())
        log = tmp_path / f"run{len(runs)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "vigil", "run", "-c", str(config)],
                env=dict(os.environ, VIGIL_STATE_DIR=str(tmp_path), VIGIL_RECEIVER__PORT="0"),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec,
            )
        run = Run(process, config, log, tmp_path / "embedded.json")
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()
        for pid in run.child("worker") + run.child("ingest"):
            os.kill(pid, signal.SIGKILL)


def send_samples(bootstrap: str, metric: str, n: int) -> None:
    config = load_config(None)
    kafka = config.kafka.model_copy(update={"bootstrap_servers": bootstrap})
    series = Series("checkout", metric, "a", [(T0 + i * 15_000, float(i % 5)) for i in range(n)])

    async def send() -> None:
        producer = await start_producer(kafka)
        try:
            partition = partition_for(series.key, kafka.partitions)
            await producer.send_and_wait(kafka.topics.samples, encode_batch([series]), partition=partition)
        finally:
            await producer.stop()

    asyncio.run(send())


def ignores(pid: int, sig: signal.Signals) -> bool:
    """Whether process ``pid`` ignores ``sig`` (the SigIgn mask of /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(re.search(r"^SigIgn:\s*([0-9a-f]+)$", status, re.M).group(1), 16)  # type: ignore[union-attr]
    return bool(mask >> (sig - 1) & 1)


def processed(port: int) -> float:
    return try_scrape(port).get("vigil_worker_samples_processed_total", -1)


def test_a_killed_worker_or_ingest_is_restarted_and_processing_goes_on(
    vigil_run: Callable[..., Run],
) -> None:
    run = vigil_run()
    assert wait_for(lambda: run.child("worker") and run.child("ingest") and run.metrics_ports(), 60), (
        run.output()
    )
    port = run.metrics_ports()[0]
    send_samples(run.bootstrap(), "before:rate", 10)
    assert wait_for(lambda: processed(port) == 10, 90), run.output()

    [worker] = run.child("worker")
    [ingest] = run.child("ingest")
    os.kill(worker, signal.SIGKILL)
    os.kill(ingest, signal.SIGKILL)
    assert wait_for(lambda: len(run.metrics_ports()) == 2, 30), run.output()
    out = run.output()
    assert f"worker (pid {worker}) died: killed by signal SIGKILL; restarting it in 1 s" in out
    assert f"ingest (pid {ingest}) died: killed by signal SIGKILL" in out
    assert wait_for(lambda: run.child("ingest") and run.child("ingest") != [ingest], 30), run.output()
    assert "ingest restarted" in run.output()

    # The new worker picks the partitions up again and goes on processing.
    new_port = run.metrics_ports()[1]
    send_samples(run.bootstrap(), "after:rate", 7)
    assert wait_for(lambda: processed(new_port) >= 7, 90), run.output()
    assert run.process.poll() is None


def test_a_dead_embedded_broker_stops_everything_with_a_clear_message(
    vigil_run: Callable[..., Run],
) -> None:
    run = vigil_run()
    assert wait_for(lambda: run.state.exists() and run.child("worker") and run.child("ingest"), 60)
    broker_port = int(run.bootstrap().rsplit(":", 1)[1])
    [broker] = broker_pids(broker_port)
    os.kill(broker, signal.SIGKILL)
    assert run.process.wait(15) == 1
    out = run.output()
    assert "the embedded broker died (killed by signal SIGKILL); its data is gone" in out, out
    assert "Traceback" not in out
    assert wait_for(lambda: not run.child("worker") and not run.child("ingest"), 10), "a part outlived it"
    assert not run.state.exists()


def test_sigterm_stops_it_within_ten_seconds_with_sigint_ignored_and_a_frozen_worker(
    vigil_run: Callable[..., Run],
) -> None:
    """As under `nohup` (SIGINT ignored, inherited by every child), with the worker stopped (SIGSTOP): only
    SIGKILL ends such a child, and the supervisor must use it in time."""
    run = vigil_run(preexec=ignore_sigint)
    assert wait_for(lambda: run.child("worker") and run.child("ingest") and run.metrics_ports(), 60)
    [worker] = run.child("worker")
    os.kill(worker, signal.SIGSTOP)
    assert ignores(run.process.pid, signal.SIGINT)
    run.process.send_signal(signal.SIGINT)  # does nothing, as under nohup
    started = time.monotonic()
    run.process.send_signal(signal.SIGTERM)
    code = run.process.wait(15)
    took = time.monotonic() - started
    assert took < 10, run.output()
    assert code == 0, run.output()
    assert wait_for(lambda: not run.child("worker") and not run.child("ingest"), 5)
    assert not run.state.exists()
