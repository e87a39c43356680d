"""``vigil backtest``: files through the streaming code path, one result row per input row, NAB's scores."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors import csv_source
from engine import backtest
from engine.backtest import BacktestError, judge, nab_scores, read_labels
from engine.config import load_config
from tests.unit.test_nab import NABSCORE, shared

ROOT = Path(__file__).resolve().parents[2]
NAB = shared() / "nab"
LABELS = NAB / "labels" / "combined_windows.json"


def vigil(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "vigil", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
        check=False,
    )


def rows_of(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def series(n: int, *, jump_at: int | None = None, start: int = 1_400_000_000) -> str:
    lines = ["timestamp,value"]
    for i in range(n):
        value = 10.0 + (i * 7919 % 13) / 13.0
        if jump_at is not None and i >= jump_at:
            value *= 5
        lines.append(f"{start + 300 * i},{value}")
    return "\n".join(lines) + "\n"


def test_the_dev_subset_reaches_the_bar_in_time_and_scores_like_the_reference(tmp_path: Path) -> None:
    """The headline: the default configuration, strictly online, no per-file settings, under 5 minutes."""
    out = tmp_path / "out"
    started = time.monotonic()
    done = vigil("backtest", "--data", NAB / "data", "--labels", LABELS, "--out", out)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert elapsed < 300
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    scores = summary["scores"]
    assert scores["standard"]["optimised"] >= 65.0
    assert scores["standard"]["alarmed"] >= 60.0
    assert "backtest" not in done.stderr  # no progress bar without a terminal
    names = [line.strip() for line in (NAB / "files.txt").read_text().splitlines() if line.strip()]
    assert summary["files"] == len(names)
    for column, fixed in (("anomaly_score", None), ("alarm", 0.5)):
        if column == "alarm":  # the reference scorer reads anomaly_score: give it the alarms under that name
            for name in names:
                rows = rows_of(out / name)
                alarms = tmp_path / "alarms" / name
                alarms.parent.mkdir(parents=True, exist_ok=True)
                alarms.write_text(
                    "timestamp,anomaly_score\n" + "".join(f"{r['timestamp']},{r['alarm']}\n" for r in rows)
                )
        folder = out if column == "anomaly_score" else tmp_path / "alarms"
        argv = ["--results", str(folder), "--labels", str(LABELS), "--quiet"]
        if fixed is not None:
            argv += ["--threshold", str(fixed)]
        reference = subprocess.run(
            [sys.executable, str(shared() / "tools" / "nabscore.py"), *argv],
            capture_output=True,
            text=True,
            check=True,
        )
        theirs = json.loads(reference.stdout.strip().splitlines()[-1])
        for profile in ("standard", "reward_low_FP_rate", "reward_low_FN_rate"):
            ours = scores[profile]["optimised" if fixed is None else "alarmed"]
            assert ours == pytest.approx(theirs[profile], abs=0.1)
    assert NABSCORE.__version__  # the reference is the shared one, not a copy


def test_one_row_per_input_row_in_order_with_timestamps_verbatim(tmp_path: Path) -> None:
    data = tmp_path / "data" / "deep" / "er"
    data.mkdir(parents=True)
    text = series(400, jump_at=300).splitlines()
    # a repeated timestamp and one going back: scored, not learned, written
    text.insert(250, text[249])
    text.insert(260, text[200])
    text[5] = text[5].replace("1400", "  1400", 1)  # padding is kept as it is
    (data / "s.csv").write_text("\n".join(text) + "\n")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"deep/er/s.csv": [], "not/here.csv": [["2014-01-01", "2014-01-02"]]}))
    out = tmp_path / "out"
    done = vigil("backtest", "--data", tmp_path / "data", "--labels", labels, "--out", out)
    # one file without windows: the score is undefined, said clearly
    assert done.returncode == 0, done.stderr
    assert "NAB's score is undefined" in done.stdout
    rows = rows_of(out / "deep" / "er" / "s.csv")
    assert [r["timestamp"] for r in rows] == [line.split(",")[0] for line in text[1:]]
    assert list(rows[0]) == ["timestamp", "value", "anomaly_score", "alarm"]
    scores = [float(r["anomaly_score"]) for r in rows]
    assert all(0.0 <= s < 1.0 for s in scores)
    alarms = [i for i, r in enumerate(rows) if r["alarm"] == "1"]
    assert alarms, "a 5x jump must open an anomaly"
    assert all(scores[i] >= 0.5 for i in alarms)
    assert scores[:200] == [0.0] * 200  # learning


def test_results_inside_the_data_folder_are_not_read_back(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text(series(300))
    labels = tmp_path / "labels.json"
    labels.write_text("{}")
    for _ in range(2):
        done = vigil("backtest", "--data", tmp_path, "--labels", labels, "--out", tmp_path / "out")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.strip().splitlines()[-1])["files"] == 1


def test_non_advancing_rows_are_scored_but_not_learned() -> None:
    config = load_config(None)
    points = [(f"t{i}", 1_000 * i, 10.0 + i % 3) for i in range(300)]
    repeated = [*points[:250], ("dup", 249_000, 1e6), ("back", 100_000, 10.0), *points[250:]]
    plain_result = judge(config, points)
    with_repeats = judge(config, repeated)
    assert len(with_repeats.scores) == len(repeated)
    assert with_repeats.scores[250] > 0.5  # judged: far out
    assert with_repeats.alarms[250] == 0  # but cannot open anything
    # ... and not learned: the rest of the series is judged exactly as without the two rows
    assert with_repeats.scores[252:] == plain_result.scores[250:]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"timestamp,value\n2014-01-01 00:00:00,1,2\n", "expected 2 columns"),
        (b"timestamp,value\n2014-01-01 00:00:00,abc\n", "could not convert"),
        (b"timestamp,value\n2014-01-01 00:00:00,nan\n", "not a finite number"),
        (b"timestamp,value\nyesterday,1\n", "Invalid isoformat"),
        (b"timestamp,value\n", "no data rows"),
        (b"", "no data rows"),
        (b"\xff\xfe\x00garbage\x00\n", "not a readable CSV"),
        (b"timestamp,value\n2014-01-01 00:00:00," + b"9" * 5000 + b"\n", "longer than"),
        (b"timestamp,value\n1e400,1\n", "not a valid time"),
        (b"timestamp,value\n2014-01-01 00:00:00,1e301\n", "beyond"),
        (b'timestamp,value\n"2014-01-01\x00,1\n', "bad.csv:2: expected 2 columns"),
    ],
)
def test_a_broken_or_hostile_file_is_a_clear_error_naming_it(
    tmp_path: Path, content: bytes, message: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "good.csv").write_text(series(300))
    (data / "bad.csv").write_bytes(content)
    done = vigil("backtest", "--data", data, "--labels", LABELS, "--out", tmp_path / "out")
    assert done.returncode == 2
    assert "bad.csv" in done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(min_value=-1e300, max_value=1e300), min_size=1, max_size=400))
def test_any_values_give_scores_in_the_unit_interval_and_no_nan(values: list[float]) -> None:
    rows = [(str(i), 1_000 * i, v) for i, v in enumerate(values)]
    result = judge(load_config(None), rows)
    assert len(result.scores) == len(values)
    assert all(0.0 <= s < 1.0 for s in result.scores)
    assert all(a in (0, 1) for a in result.alarms)


def test_an_oversized_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_source, "MAX_ROWS", 100)
    path = tmp_path / "big.csv"
    path.write_text(series(101))
    with pytest.raises(csv_source.CsvError, match="more than 100 rows"):
        csv_source.read_rows(path)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("not json", "not a JSON labels file"),
        ("[1, 2]", "expected an object"),
        ('{"s.csv": [["2014-01-01"]]}', "list of [start, end]"),
        ('{"s.csv": 5}', "list of [start, end]"),
    ],
)
def test_broken_labels_are_a_clear_error(tmp_path: Path, labels: str, message: str) -> None:
    path = tmp_path / "labels.json"
    path.write_text(labels)
    with pytest.raises(BacktestError, match=re.escape(message)):
        read_labels(path)


def test_labels_that_name_no_row_or_overlap_are_refused(tmp_path: Path) -> None:
    stamps = [f"2014-01-01 00:{i // 60:02d}:{i % 60:02d}" for i in range(300)]
    rows = [(t, csv_source.parse_timestamp(t), 1.0 + i % 2) for i, t in enumerate(stamps)]
    result = judge(load_config(None), rows, "s.csv")
    assert nab_scores([result], {"s.csv": [("2014-01-01 00:04:10", "2014-01-01 00:04:50")]})
    with pytest.raises(BacktestError, match="is not a row"):
        nab_scores([result], {"s.csv": [("2014-01-01 00:00:10", "2015-01-01 00:00:00")]})
    with pytest.raises(BacktestError, match="bad timestamp"):
        nab_scores([result], {"s.csv": [("soon", "2014-01-01 00:00:20")]})
    overlapping = [
        ("2014-01-01 00:00:10", "2014-01-01 00:00:50"),
        ("2014-01-01 00:00:40", "2014-01-01 00:01:00"),
    ]
    with pytest.raises(BacktestError, match="overlap"):
        nab_scores([result], {"s.csv": overlapping})
    assert nab_scores([result], {"other.csv": []}) == {}


def test_oversized_labels_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backtest, "MAX_LABELS_BYTES", 10)
    path = tmp_path / "labels.json"
    path.write_text('{"a.csv": [], "b.csv": []}')
    with pytest.raises(BacktestError, match="larger than 10 bytes"):
        read_labels(path)


def test_missing_inputs_are_clear_errors(tmp_path: Path) -> None:
    done = vigil("backtest", "--data", tmp_path / "nope", "--labels", LABELS, "--out", tmp_path / "out")
    assert done.returncode == 2
    assert "not a folder" in done.stderr
    (tmp_path / "empty").mkdir()
    done = vigil("backtest", "--data", tmp_path / "empty", "--labels", LABELS, "--out", tmp_path / "out")
    assert done.returncode == 2
    assert "no .csv files" in done.stderr
    done = vigil("backtest", "--data", tmp_path / "empty", "--labels", tmp_path / "x.json", "--out", tmp_path)
    assert done.returncode == 2
    assert "cannot read labels" in done.stderr
