"""``vigil poll --once``: bad options and configurations are refused with exit 2 and a clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from vigil.cli import app

CONFIG = """poller:
  sources: [{name: main, url: "http://127.0.0.1:9"}]
  watches: [{name: checkout, service: checkout, queries: [{name: up, query: up}]}]
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "vigil.yaml"
    path.write_text(CONFIG)
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "needs --once"),
        (["--once", "--start", "2026-01-01T00:00:00Z"], "both --start and --end"),
        (
            ["--once", "--start", "yesterday", "--end", "2026-01-01T00:00:00Z"],
            "--start: not an RFC 3339 time",
        ),
        (["--once", "--start", "2026-01-01T00:00:00", "--end", "2026-01-01T01:00:00Z"], "has no time zone"),
        (["--once", "--start", "2026-01-02T00:00:00Z", "--end", "2026-01-01T00:00:00Z"], "--end is before"),
        (["--once", "--watch", "nope"], "no watch named 'nope', have ['checkout']"),
    ],
)
def test_bad_options_exit_2(config: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["poll", "-c", str(config), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_no_watches_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("poller:\n  sources: [{name: main, url: 'http://127.0.0.1:9'}]\n")
    result = CliRunner().invoke(app, ["poll", "--once", "-c", str(path)])
    assert result.exit_code == 2
    assert "poller.watches is empty" in result.output


def test_a_source_that_cannot_be_reached_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "down.yaml"
    path.write_text(CONFIG.replace('url: "http://127.0.0.1:9"', 'url: "http://127.0.0.1:9", retries: 0'))
    result = CliRunner().invoke(app, ["poll", "--once", "--json", "-c", str(path)])
    assert result.exit_code == 1
    assert "query up: failed after retries (connection): cannot reach the source" in result.output


def test_vigil_poller_without_kafka_exits_1_so_vigil_run_restarts_it(tmp_path: Path) -> None:
    from connectors.broker import free_port

    path = tmp_path / "poller.yaml"
    poller = CONFIG.replace("poller:\n", "poller:\n  metrics_enabled: false\n")
    path.write_text(f"kafka:\n  bootstrap_servers: 127.0.0.1:{free_port()}\n" + poller)
    result = CliRunner().invoke(app, ["poller", "-c", str(path)])
    assert result.exit_code == 1, result.output
    assert "vigil: Kafka at 127.0.0.1:" in result.output


def test_vigil_poller_needs_a_kafka_and_watches(tmp_path: Path) -> None:
    path = tmp_path / "none.yaml"
    path.write_text(CONFIG)
    result = CliRunner().invoke(app, ["poller", "-c", str(path)])
    assert result.exit_code == 2
    assert "needs kafka.bootstrap_servers" in result.output
    path.write_text("kafka:\n  bootstrap_servers: 127.0.0.1:9\n")
    result = CliRunner().invoke(app, ["poller", "-c", str(path)])
    assert result.exit_code == 2
    assert "poller.watches is empty" in result.output
