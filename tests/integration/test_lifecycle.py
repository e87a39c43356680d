"""Processes start and stop cleanly: no orphaned broker on any exit path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from connectors.broker import EmbeddedBroker
from engine.errors import BrokerUnavailable
from tests.integration.processes import default_signals

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def pids_with(*parts: bytes) -> list[int]:
    """PIDs whose command line contains every one of ``parts`` (found through /proc, no extra tools)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if all(part in cmdline for part in parts):
            found.append(int(entry.name))
    return found


def broker_pids(port: int) -> list[int]:
    """PIDs of Tansu processes listening on ``port``."""
    return pids_with(b"tansu", f"127.0.0.1:{port}".encode())


def wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_broker_context_starts_answers_and_stops() -> None:
    with EmbeddedBroker(["a.topic"], partitions=2) as broker:
        port = broker.port
        assert broker.running
        assert broker_pids(port)
    assert not broker_pids(port)


@pytest.mark.parametrize("error", [KeyboardInterrupt, BrokerUnavailable])
def test_broker_stops_when_start_up_fails(
    monkeypatch: pytest.MonkeyPatch, error: type[BaseException]
) -> None:
    """Ctrl-C or an error while topics are being created: the broker process must not survive it."""
    started: list[int] = []

    async def failing(servers: str, *args: object) -> None:
        started.extend(broker_pids(int(servers.rsplit(":", 1)[1])))
        raise error("topic creation failed")

    monkeypatch.setattr("connectors.broker.ensure_topics", failing)
    broker = EmbeddedBroker(["a.topic"], partitions=2)
    with pytest.raises(error):
        broker.start()
    assert started, "the broker was never running"
    assert not broker.running
    assert not broker_pids(broker.port)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_vigil_run_stops_everything_within_ten_seconds(tmp_path: Path, sig: signal.Signals) -> None:
    env = dict(os.environ, VIGIL_STATE_DIR=str(tmp_path))
    process = subprocess.Popen(
        [sys.executable, "-m", "vigil", "run", "-c", str(ROOT / "config" / "vigil.yaml")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=default_signals,  # the signal under test must not be ignored, however pytest was started
    )
    state = tmp_path / "embedded.json"
    try:
        assert wait_for(state.exists, 30), "vigil run did not start its broker"
        port = int(orjson.loads(state.read_bytes())["bootstrap_servers"].rsplit(":", 1)[1])
        assert broker_pids(port)
        time.sleep(3)  # let the worker come up: stopping it mid-start is the harder case
        started = time.monotonic()
        process.send_signal(sig)
        output = process.communicate(timeout=15)[0].decode()
        took = time.monotonic() - started
        code = process.returncode
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert took < 10, output
    assert code == 0, output
    assert not broker_pids(port), "the embedded broker outlived vigil run"
    assert not state.exists()
    assert "Traceback" not in output


def test_ctrl_c_in_a_terminal_twice_leaves_nothing_behind(tmp_path: Path) -> None:
    """A terminal's Ctrl-C signals the whole process group; an impatient user presses it twice."""
    config = tmp_path / "vigil.yaml"
    config.write_text((ROOT / "config" / "vigil.yaml").read_text())  # a path unique to this test
    env = dict(os.environ, VIGIL_STATE_DIR=str(tmp_path))
    process = subprocess.Popen(
        [sys.executable, "-m", "vigil", "run", "-c", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=default_signals,
    )
    state = tmp_path / "embedded.json"
    try:
        assert wait_for(state.exists, 30)
        port = int(orjson.loads(state.read_bytes())["bootstrap_servers"].rsplit(":", 1)[1])
        assert wait_for(lambda: len(pids_with(str(config).encode())) >= 3, 30)  # run, worker, ingest
        time.sleep(3)
        os.killpg(process.pid, signal.SIGINT)
        time.sleep(0.3)
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert wait_for(lambda: not pids_with(str(config).encode()), 10), (
        "a worker or ingest process was orphaned"
    )
    assert not broker_pids(port)


def test_killed_supervisor_takes_the_broker_with_it(tmp_path: Path) -> None:
    env = dict(os.environ, VIGIL_STATE_DIR=str(tmp_path))
    process = subprocess.Popen(
        [sys.executable, "-m", "vigil", "run"], env=env, stdout=subprocess.DEVNULL, preexec_fn=default_signals
    )
    state = tmp_path / "embedded.json"
    assert wait_for(state.exists, 30)
    port = int(orjson.loads(state.read_bytes())["bootstrap_servers"].rsplit(":", 1)[1])
    process.kill()
    process.wait()
    assert wait_for(lambda: not broker_pids(port), 10), "broker orphaned after SIGKILL of its parent"


def test_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka:\n  partitions: -3\n")
    result = subprocess.run(
        [sys.executable, "-m", "vigil", "run", "-c", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert f"{bad}: kafka.partitions:" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_runs_the_real_pipeline_and_summarises(tmp_path: Path) -> None:
    env = dict(os.environ, VIGIL_STATE_DIR=str(tmp_path), COLUMNS="160")
    result = subprocess.run(
        [sys.executable, "-m", "vigil", "demo", "--seconds", "22"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Summary:" in result.stdout
    assert "detected:    checkout slow instance" in result.stdout, result.stdout[-3000:]
    # Redirected output carries no terminal control (Faust's spinner hid the cursor, then showed it again at
    # exit, after the summary) and the summary is the last thing written.
    for stream in (result.stdout, result.stderr):
        assert "\x1b" not in stream, repr(stream[-500:])
        assert "\b" not in stream, repr(stream[-500:])
    assert result.stdout.rstrip().splitlines()[-1].endswith(" samples")
    assert result.stderr == ""
