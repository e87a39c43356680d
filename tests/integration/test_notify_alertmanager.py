"""Notifications to a real Alertmanager: through `vigil run`, and across a restart of `vigil notify`."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from connectors.broker import EmbeddedBroker, free_port
from engine.guard import TransitionKind
from tests.conftest import config_env, isolated_config
from tests.fixtures.alertmanager import Alertmanager
from tests.integration.notify_helpers import anomaly, produce
from tests.integration.processes import default_signals, listening_ports, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

T0 = 1_700_000_000_000
STEP = 15_000
LABELS = {
    "alertname": "VigilAnomaly",
    "service": "checkout",
    "metric": "http_request_duration_seconds:p99",
    "instance": "pod-a",
    "severity": "critical",
}


SERIES = ("--service", "checkout", "--metric", LABELS["metric"], "--instance", "pod-a")


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    am = Alertmanager(tmp_path / "am").start()
    yield am
    am.stop()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def ours(am: Alertmanager, labels: dict[str, str] = LABELS) -> list[dict[str, Any]]:
    return [a for a in am.alerts() if a["labels"] == labels]


def test_an_incident_through_vigil_run_opens_an_alert_and_its_recovery_resolves_it(
    alertmanager: Alertmanager, tmp_path: Path
) -> None:
    config = tmp_path / "vigil.yaml"
    notifier_port = free_port()
    config.write_text(
        yaml.safe_dump(
            {
                "api": {"external_url": "https://vigil.example.com"},
                "receiver": {"port": 0},
                "worker": {"metrics_port": 0},
                "notifier": {"metrics_port": notifier_port},
                "notify": [{"name": "am", "type": "alertmanager", "url": alertmanager.url}],
            }
        )
    )
    rng = random.Random(3)
    normal = [250.0 + 10 * (i % 7) / 7 + rng.uniform(-3, 3) for i in range(400)]
    incident = [900.0 + rng.gauss(0, 5) for _ in range(20)]
    after = [250.0 + 10 * (i % 7) / 7 + rng.uniform(-3, 3) for i in range(160)]
    lines = [f"{(T0 + i * STEP) // 1000},{v!r}" for i, v in enumerate(normal + incident + after)]
    env = dict(os.environ, VIGIL_STATE_DIR=str(tmp_path))
    run = subprocess.Popen(
        [sys.executable, "-m", "vigil", "run", "-c", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=default_signals,
    )
    try:
        assert wait_for((tmp_path / "embedded.json").exists, 30)

        def replay(rows: list[str], name: str) -> None:
            (tmp_path / name).write_text("timestamp,value\n" + "\n".join(rows) + "\n")
            result = subprocess.run(
                [sys.executable, "-m", "vigil", "replay", str(tmp_path / name), "-c", str(config), *SERIES],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 0, result.stderr

        # A notifier skips events from before it started: wait for its metrics port (opened just before).
        assert wait_for(lambda: port_open(notifier_port), 60)
        replay(lines[: len(normal) + len(incident)], "incident.csv")
        assert wait_for(lambda: ours(alertmanager), 120, interval=0.5), alertmanager.alerts()
        (alert,) = ours(alertmanager)
        notes = alert["annotations"]
        assert notes["started_at"].startswith("2023-11-14T")  # metric time of the incident
        assert float(notes["score"]) >= 1
        assert float(notes["value"]) > 600
        assert notes["link"] == "https://vigil.example.com/api/v1/services/checkout"
        assert alert["generatorURL"] == notes["link"]
        assert "expected [" in notes["summary"]
        # endsAt is wall clock, minutes ahead (the expiry), not metric time
        assert alert["endsAt"] > time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() + 120))

        replay(lines[len(normal) + len(incident) :], "after.csv")
        assert wait_for(lambda: not ours(alertmanager), 120, interval=0.5), "the alert was not resolved"
    finally:
        os.killpg(run.pid, signal.SIGTERM)
        output = run.communicate(timeout=20)[0].decode(errors="replace")
    assert "Traceback" not in output, output


def start_notify(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "vigil", "notify", "--loglevel", "info"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=out,
            preexec_fn=default_signals,
        )


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_restart_of_the_notifier_while_an_alert_is_open_neither_loses_nor_duplicates_it(
    broker: EmbeddedBroker, alertmanager: Alertmanager, stop: signal.Signals, tmp_path: Path
) -> None:
    config = isolated_config(broker)
    notifier = {
        "name": "am",
        "type": "alertmanager",
        "url": alertmanager.url,
        "expiry_s": 12,
        "resend_interval_s": 3,
    }
    env = config_env(config) | {
        "VIGIL_NOTIFY": orjson.dumps([notifier]).decode(),
        "VIGIL_NOTIFIER__METRICS_PORT": "0",
    }
    metric = LABELS["metric"]
    opened = anomaly(config, "checkout", metric)
    other = anomaly(config, "checkout", metric, "pod-b")
    other_resolved = anomaly(config, "checkout", metric, "pod-b", kind=TransitionKind.RESOLVED)
    first = start_notify(env, tmp_path / "first.log")
    second = None
    try:
        # a notifier without committed offsets skips what came before it: let it start first (its metrics
        # port opens just before it takes its start time)
        assert wait_for(lambda: listening_ports(first.pid), 30)
        asyncio.run(produce(config, [opened, other]))
        both = lambda: ours(alertmanager) and ours(alertmanager, LABELS | {"instance": "pod-b"})  # noqa: E731
        assert wait_for(both, 90), (alertmanager.alerts(), first.poll())
        (alert,) = ours(alertmanager)
        first.send_signal(stop)
        first.wait(20)
        # resolved while no notifier runs: it must be delivered after the restart
        asyncio.run(produce(config, [other_resolved]))
        down_since = time.monotonic()
        second = start_notify(env, tmp_path / "second.log")
        gone = wait_for(lambda: not ours(alertmanager, LABELS | {"instance": "pod-b"}), 90)
        assert gone, (
            (tmp_path / "first.log").read_text()[-3000:],
            (tmp_path / "second.log").read_text()[-3000:],
        )
        # Past the expiry of every send of the first notifier, the alert is still there, once, with its
        # start: the second notifier re-read its opening and keeps it alive.
        assert wait_for(lambda: time.monotonic() - down_since > 15, 20)
        (again,) = ours(alertmanager)
        assert again["startsAt"] == alert["startsAt"]
        assert again["fingerprint"] == alert["fingerprint"]
        assert again["endsAt"] > alert["endsAt"]
        asyncio.run(produce(config, [anomaly(config, "checkout", metric, kind=TransitionKind.RESOLVED)]))
        assert wait_for(lambda: not ours(alertmanager), 60)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(20)
    for name in ("first.log", "second.log"):
        errors = (tmp_path / name).read_text()
        assert "Traceback" not in errors, errors
