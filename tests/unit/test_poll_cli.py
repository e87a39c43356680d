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
