"""Which process opens which port (the README's table): each opens only its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from connectors.broker import EmbeddedBroker, free_port
from tests.conftest import config_env, isolated_config
from tests.integration.processes import default_signals, listening_ports, wait_for
from tests.integration.test_lifecycle import broker_pids, pids_with

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_vigil_ingest_opens_the_receiver_port_and_nothing_else(broker: EmbeddedBroker) -> None:
    port = free_port()
    env = config_env(isolated_config(broker)) | {"VIGIL_RECEIVER__PORT": str(port)}
    process = subprocess.Popen(
        [sys.executable, "-m", "vigil", "ingest"],
        env=env,
        stdin=subprocess.DEVNULL,
        preexec_fn=default_signals,
    )
    try:
        assert wait_for(lambda: listening_ports(process.pid), 60), "vigil ingest never listened"
        assert listening_ports(process.pid) == {port}
    finally:
        stop(process)


def test_vigil_run_each_part_opens_only_its_own_port(tmp_path: Path) -> None:
    config = tmp_path / "vigil.yaml"
    config.write_text((ROOT / "config" / "vigil.yaml").read_text())
    receiver, metrics = free_port(), free_port()
    env = dict(
        os.environ,
        VIGIL_STATE_DIR=str(tmp_path),
        VIGIL_RECEIVER__PORT=str(receiver),
        VIGIL_WORKER__METRICS_PORT=str(metrics),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "vigil", "run", "-c", str(config)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        preexec_fn=default_signals,
    )
    state = tmp_path / "embedded.json"

    def part(name: str) -> list[int]:
        return pids_with(f"{name}\0".encode(), str(config).encode())

    try:
        assert wait_for(lambda: state.exists() and part("worker") and part("ingest"), 60)
        [worker], [ingest] = part("worker"), part("ingest")
        assert wait_for(lambda: listening_ports(worker) and listening_ports(ingest), 60)
        kafka = int(orjson.loads(state.read_bytes())["bootstrap_servers"].rsplit(":", 1)[1])
        [broker] = broker_pids(kafka)
        assert listening_ports(process.pid) == set()  # the supervisor opens none
        assert listening_ports(broker) == {kafka}
        assert listening_ports(worker) == {metrics}
        assert listening_ports(ingest) == {receiver}
    finally:
        stop(process)
