"""``vigil backtest``: files in, per-row results out, NAB's scores printed."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import typer

from connectors.csv_source import read_rows
from engine.backtest import BacktestError, FileResult, judge, nab_scores, read_labels, write
from engine.config import VigilConfig


def find_files(data: Path, out: Path) -> list[Path]:
    """Every ``.csv`` under ``data``, except earlier results when ``out`` lies inside ``data``."""
    if not data.is_dir():
        raise BacktestError(f"--data {data}: not a folder")
    results = out.resolve()
    files = sorted(p for p in data.rglob("*.csv") if p.is_file() and not p.resolve().is_relative_to(results))
    if not files:
        raise BacktestError(f"--data {data}: no .csv files under it")
    return files


def run_backtest(config: VigilConfig, data: Path, labels_path: Path, out: Path) -> None:
    labels = read_labels(labels_path)  # before the long part: a bad labels file fails at once
    files = find_files(data, out)
    results: list[FileResult] = []
    rows = 0
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        todo: Iterable[Path] = files
        if sys.stderr.isatty():  # a progress bar only for a person watching
            todo = stack.enter_context(typer.progressbar(files, label="backtest", file=sys.stderr))
        for path in todo:
            name = path.relative_to(data).as_posix()
            result = judge(config, read_rows(path), name)
            write(result, out / name)
            results.append(result)
            rows += len(result.scores)
    elapsed = time.perf_counter() - start
    unlabelled = sum(r.name not in labels for r in results)
    scores = nab_scores(results, labels)
    typer.echo(
        f"{len(files)} files, {rows} rows in {elapsed:.1f} s ({1e6 * elapsed / max(rows, 1):.1f} µs/row); "
        f"results in {out}" + (f"; {unlabelled} files not in the labels, not scored" if unlabelled else "")
    )
    if not scores:
        typer.echo("no labelled file has an anomaly window: NAB's score is undefined")
    else:
        typer.echo(f"{'NAB profile':<22}{'optimised':>10}{'threshold':>11}{'as alarmed':>12}")
    for profile, s in scores.items():
        typer.echo(f"{profile:<22}{s['optimised']:>10.2f}{s['threshold']:>11.4f}{s['alarmed']:>12.2f}")
    typer.echo(json.dumps({"files": len(files), "rows": rows, "scores": scores}))
