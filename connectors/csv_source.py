"""``timestamp,value`` CSV files as a source of samples (replays, demos, backtests).

Timestamps may be Unix seconds, Unix milliseconds or ISO 8601 / ``YYYY-MM-DD HH:MM:SS`` (NAB's format,
read as UTC). A header line is optional. Any bad line is an error naming the file and line: a replay
that silently skips data would judge something else than the file.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from engine.errors import VigilError

MAX_ROWS = 10_000_000
MAX_LINE = 4096
MAX_VALUE = 1e300  # the detectors' limit (engine.detectors.MAX_ABS): beyond it their arithmetic overflows
_MS_THRESHOLD = 100_000_000_000  # numbers above this are milliseconds (year 5138 in seconds)


class CsvError(VigilError):
    pass


def parse_timestamp(text: str) -> int:
    """Unix milliseconds of a CSV timestamp.

    >>> parse_timestamp("2014-04-10 00:02:00")
    1397088120000
    >>> parse_timestamp("1397088120")
    1397088120000
    >>> parse_timestamp("1397088120000")
    1397088120000
    """
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"timestamp {text!r} is not a valid time")
        return int(number if number > _MS_THRESHOLD else number * 1000)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def read_points(path: Path) -> list[tuple[int, float]]:
    """All (Unix ms, value) rows of a CSV file, checked: finite values, strictly increasing time."""
    points: list[tuple[int, float]] = []
    for line, stamp, ts, value in _rows(path):
        if points and ts <= points[-1][0]:
            raise CsvError(f"{path}:{line}: timestamps must increase ({stamp})")
        points.append((ts, value))
    return points


def read_rows(path: Path) -> list[tuple[str, int, float]]:
    """All (timestamp as written, Unix ms, value) rows of a CSV file in file order, checked: finite values.

    Time may repeat or go back (NAB's files do); the caller decides what such a row means.
    """
    return [(stamp, ts, value) for _, stamp, ts, value in _rows(path)]


def _rows(path: Path) -> Iterator[tuple[int, str, int, float]]:
    """(line, timestamp text, Unix ms, value) of every data row; at least one, or an error."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise CsvError(f"{path}: cannot read: {exc.strerror or exc}") from None
    count = 0
    with handle:
        try:
            for line, row in enumerate(csv.reader(handle), start=1):
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != 2:
                    raise CsvError(f"{path}:{line}: expected 2 columns (timestamp,value), got {len(row)}")
                if sum(len(c) for c in row) > MAX_LINE:
                    raise CsvError(f"{path}:{line}: line longer than {MAX_LINE} characters")
                if line == 1 and row[0].strip().lower() in {"timestamp", "time", "ts"}:
                    continue
                try:
                    ts = parse_timestamp(row[0])
                    value = float(row[1])
                except (ValueError, OverflowError) as exc:
                    raise CsvError(f"{path}:{line}: {exc}") from None
                if not math.isfinite(value):
                    raise CsvError(f"{path}:{line}: value {row[1].strip()!r} is not a finite number")
                if abs(value) > MAX_VALUE:
                    raise CsvError(f"{path}:{line}: value {row[1].strip()!r} is beyond ±{MAX_VALUE:g}")
                count += 1
                if count > MAX_ROWS:
                    raise CsvError(f"{path}: more than {MAX_ROWS} rows")
                yield line, row[0], ts, value
        except (csv.Error, UnicodeDecodeError) as exc:
            raise CsvError(f"{path}: not a readable CSV file: {exc}") from None
    if not count:
        raise CsvError(f"{path}: no data rows")
