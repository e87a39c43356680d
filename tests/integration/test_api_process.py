"""``vigil api`` as a process opens only ``api.port``; ``vigil run`` runs it with ``api.enabled``."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from connectors.broker import EmbeddedBroker, free_port
from tests.conftest import config_env, isolated_config
from tests.integration.processes import default_signals, listening_ports, wait_for
from tests.integration.test_lifecycle import pids_with
from tests.integration.test_ports import ROOT, stop

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def test_vigil_api_opens_the_api_port_and_nothing_else(broker: EmbeddedBroker) -> None:
    port = free_port()
    env = config_env(isolated_config(broker)) | {"VIGIL_API__PORT": str(port)}
    process = subprocess.Popen(
        [sys.executable, "-m", "vigil", "api"], env=env, stdin=subprocess.DEVNULL, preexec_fn=default_signals
    )
    try:
        assert wait_for(lambda: ready(port), 60), "vigil api never became ready"
        assert listening_ports(process.pid) == {port}
    finally:
        stop(process)
    assert process.returncode == 0


def test_vigil_run_runs_the_api_when_enabled(tmp_path: Path) -> None:
    config = tmp_path / "vigil.yaml"
    config.write_text((ROOT / "config" / "vigil.yaml").read_text())
    port = free_port()
    env = dict(
        os.environ,
        VIGIL_STATE_DIR=str(tmp_path),
        VIGIL_API__ENABLED="true",
        VIGIL_API__PORT=str(port),
        VIGIL_RECEIVER__ENABLED="false",
        VIGIL_WORKER__METRICS_ENABLED="false",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "vigil", "run", "-c", str(config)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        preexec_fn=default_signals,
    )
    try:
        assert wait_for(lambda: bool(pids_with(b"api\0", str(config).encode())), 60)
        [api] = pids_with(b"api\0", str(config).encode())
        assert wait_for(lambda: ready(port), 60), "the api under vigil run never became ready"
        assert listening_ports(api) == {port}
    finally:
        stop(process)
