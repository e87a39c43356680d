from __future__ import annotations

from pathlib import Path

import pytest

from connectors.csv_source import CsvError, read_points


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "series.csv"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_reads_nab_style_iso_and_unix_timestamps(tmp_path: Path) -> None:
    nab = write(tmp_path, "timestamp,value\n2014-04-10 00:00:00,1.5\n2014-04-10 00:05:00,2\n")
    assert read_points(nab) == [(1397088000000, 1.5), (1397088300000, 2.0)]
    unix = write(tmp_path, "1397088000,1\n1397088300000,2\n\n")
    assert read_points(unix) == [(1397088000000, 1.0), (1397088300000, 2.0)]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no data rows"),
        ("timestamp,value\n", "no data rows"),
        ("1,2,3\n", ":1: expected 2 columns"),
        ("1,2\nyesterday,3\n", ":2: Invalid isoformat string"),
        ("1,nan\n", ":1: value 'nan' is not a finite number"),
        ("1,inf\n", "not a finite number"),
        ("1,abc\n", "could not convert string to float"),
        ("2,1\n1,1\n", ":2: timestamps must increase"),
        ("2,1\n2,1\n", ":2: timestamps must increase"),
        ("-5,1\n", "not a valid time"),
        ("1," + "9" * 5000 + "\n", "longer than"),
        ('"1,2\n', "expected 2 columns"),
        (b"1,2\n\xff\xfe,3\n", "not a readable CSV file"),
    ],
)
def test_a_bad_file_is_an_error_naming_file_and_line(tmp_path: Path, text: str | bytes, reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CsvError) as caught:
        read_points(path)
    assert str(path) in str(caught.value)
    assert reason in str(caught.value)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CsvError, match="cannot read"):
        read_points(tmp_path / "missing.csv")


def test_replay_cli_reports_csv_errors_with_exit_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = write(tmp_path, "1,2\n1,3\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vigil",
            "replay",
            str(path),
            "--service",
            "s",
            "--metric",
            "m",
            "--bootstrap-servers",
            "127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert "timestamps must increase" in result.stderr
    assert "Traceback" not in result.stderr
