"""Backtests: ``timestamp,value`` files through the streaming code path (without Kafka), scored like NAB.

Each file is one series of service ``backtest``, metric ``value`` in a fresh :class:`~engine.bank.ModelBank`,
so the configuration's rules apply exactly as they would to a live series of that name (normally the
catch-all rule). Per input row: ``anomaly_score = s / (1 + s)`` of the reported normalised score ``s`` (in
[0, 1), strictly increasing in ``s``, 0.5 = the opening threshold, never clipped) and ``alarm`` = 1 on the row
that opened an anomaly. A row whose timestamp does not advance is scored, not learned, and written.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.csv_source import parse_timestamp
from engine import nab
from engine.bank import ModelBank
from engine.config import VigilConfig
from engine.errors import VigilError
from engine.samples import Series

__all__ = ["METRIC", "SERVICE", "BacktestError", "FileResult", "judge", "nab_scores", "read_labels"]

SERVICE = "backtest"
METRIC = "value"
MAX_LABELS_BYTES = 64 * 1024 * 1024
#: s / (1 + s) rounds to 1.0 only for s beyond 9e15: such rows are written just below 1.
_BELOW_ONE = math.nextafter(1.0, 0.0)


class BacktestError(VigilError):
    pass


@dataclass(frozen=True, slots=True)
class FileResult:
    name: str  # path relative to the data folder, with "/"
    stamps: list[str]
    ts_ms: list[int]
    values: list[float]
    scores: list[float]  # anomaly_score, in [0, 1)
    alarms: list[int]


def judge(config: VigilConfig, rows: Sequence[tuple[str, int, float]], name: str = "") -> FileResult:
    """Run one file's rows (timestamp text, Unix ms, value) through a fresh bank."""
    bank = ModelBank(config)
    trace: list[tuple[float, bool]] = []
    series = Series(SERVICE, METRIC, "", [(ts, value) for _, ts, value in rows])
    bank.observe(series, trace=trace)
    return FileResult(
        name=name,
        stamps=[stamp for stamp, _, _ in rows],
        ts_ms=[ts for _, ts, _ in rows],
        values=[value for _, _, value in rows],
        scores=[min(s / (1.0 + s), _BELOW_ONE) for s, _ in trace],
        alarms=[int(opened) for _, opened in trace],
    )


def write(result: FileResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(["timestamp", "value", "anomaly_score", "alarm"])
        for row in zip(result.stamps, result.values, result.scores, result.alarms, strict=True):
            out.writerow((row[0], repr(row[1]), repr(row[2]), row[3]))


def read_labels(path: Path) -> dict[str, list[tuple[str, str]]]:
    """NAB's ``combined_windows.json``: file → [[start, end], ...] timestamps; checked."""
    try:
        if path.stat().st_size > MAX_LABELS_BYTES:
            raise BacktestError(f"{path}: larger than {MAX_LABELS_BYTES} bytes; is this a labels file?")
        doc: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BacktestError(f"{path}: cannot read labels: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BacktestError(f"{path}: not a JSON labels file: {exc}") from None
    if not isinstance(doc, dict):
        raise BacktestError(f"{path}: expected an object of file → [[start, end], ...]")
    labels: dict[str, list[tuple[str, str]]] = {}
    for name, windows in doc.items():
        if not isinstance(windows, list) or not all(
            isinstance(w, list) and len(w) == 2 and all(isinstance(t, str) for t in w) for w in windows
        ):
            raise BacktestError(f"{path}: {name}: expected a list of [start, end] timestamp pairs")
        labels[str(name).replace("\\", "/")] = [(a, b) for a, b in windows]
    return labels


def windows_of(result: FileResult, windows: list[tuple[str, str]]) -> list[tuple[int, int]]:
    """Label windows as row ranges (a timestamp's first row, as NAB does); a clear error if one is no row."""
    if not windows:
        return []
    first: dict[int, int] = {}
    for i, ts in enumerate(result.ts_ms):
        first.setdefault(ts, i)
    out: list[tuple[int, int]] = []
    for start, end in windows:
        try:
            a, b = first.get(parse_timestamp(start)), first.get(parse_timestamp(end))
        except (ValueError, OverflowError):
            raise BacktestError(f"labels for {result.name}: bad timestamp in [{start}, {end}]") from None
        if a is None or b is None:
            missing = start if a is None else end
            raise BacktestError(f"labels for {result.name}: {missing} is not a row of the file")
        if b < a or (out and a <= out[-1][1]):
            raise BacktestError(f"labels for {result.name}: windows overlap, are reversed or not sorted")
        out.append((a, b))
    return out


def nab_scores(
    results: Sequence[FileResult], labels: dict[str, list[tuple[str, str]]]
) -> dict[str, dict[str, float]]:
    """profile → {"optimised", "threshold", "alarmed"} NAB scores of the labelled files among ``results``;
    empty when they have no anomaly window at all (NAB's score is undefined then)."""
    scored: list[nab.ScoredFile] = []
    alarmed: list[nab.ScoredFile] = []
    next_id = 0
    for r in results:
        if r.name not in labels:
            continue
        windows = windows_of(r, labels[r.name])
        scored.append(nab.scored_file(r.scores, windows, next_id))
        alarmed.append(nab.scored_file([float(a) for a in r.alarms], windows, next_id))
        next_id += len(windows)
    out: dict[str, dict[str, float]] = {}
    if next_id == 0:  # no file in the labels, or no windows in them: NAB's score is undefined
        return out
    for profile in nab.PROFILES:
        optimised, threshold = nab.score(scored, profile)
        as_alarmed, _ = nab.score(alarmed, profile, 0.5)
        out[profile] = {
            "optimised": optimised,
            "threshold": threshold,  # inf: never firing is best
            "alarmed": as_alarmed,
        }
    return out
