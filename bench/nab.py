"""Measure the 24/7 guard on the NAB development subset, per sensitivity.

Every file is streamed from a fresh :class:`engine.guard.SeriesGuard` (one fixed configuration for all
files: the catch-all metric rule, default detection settings, NAB's streaming rules). A detection is an
``opened`` transition: the row that opens an anomaly gets ``anomaly_score`` 1, every other row 0, and the
scorer runs at a fixed threshold of 0.5 - what an operator would get paged for, at each sensitivity. (NAB's
published tables instead search the best threshold over per-sample scores after the fact; a fixed
sensitivity cannot do that, so these figures are the honest, lower ones.) The time per sample covers
``SeriesGuard.observe`` (score, state, learn) in CPython.

Run from the repository root: ``python bench/nab.py`` (data and scorer default to ``../shared``).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from the repository root
    sys.path.insert(0, str(ROOT))

from engine.config import DetectionConfig, MetricRule, Sensitivity  # noqa: E402
from engine.guard import SeriesGuard, TransitionKind  # noqa: E402

SHARED = ROOT.parent / "shared"
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


def read_series(path: Path) -> tuple[list[str], list[int], list[float]]:
    """Rows of one NAB file, in file order (the scorer compares row by row: no sorting, no de-duplication)."""
    stamps: list[str] = []
    ts_ms: list[int] = []
    values: list[float] = []
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            stamps.append(row["timestamp"])
            ts_ms.append(int(datetime.fromisoformat(row["timestamp"]).timestamp() * 1000))
            values.append(float(row["value"]))
    return stamps, ts_ms, values


def run_guard(
    rule: MetricRule, detection: DetectionConfig, ts_ms: list[int], values: list[float]
) -> list[float]:
    """1.0 on the rows where a fresh guard opens an anomaly, 0.0 elsewhere."""
    guard = SeriesGuard(rule, detection)
    opened = [0.0] * len(values)
    for i, (t, v) in enumerate(zip(ts_ms, values, strict=True)):
        transition = guard.observe(t, v)
        if transition is not None and transition.kind is TransitionKind.OPENED:
            opened[i] = 1.0
    return opened


def write_results(path: Path, stamps: list[str], scores: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["timestamp", "anomaly_score"])
        out.writerows(zip(stamps, scores, strict=True))


def nab_score(scorer: Path, results: Path, labels: Path) -> dict[str, float]:
    """NAB's normalised scores of binary detections (fixed threshold 0.5: a detection is an opened row)."""
    cmd = [sys.executable, str(scorer), "--results", str(results), "--labels", str(labels), "--quiet"]
    done = subprocess.run([*cmd, "--threshold", "0.5"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"nabscore failed ({done.returncode}): {done.stderr.strip()}")
    summary: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nab", type=Path, default=SHARED / "nab", help="NAB subset (files.txt, data/, labels/)")
    ap.add_argument("--scorer", type=Path, default=SHARED / "tools" / "nabscore.py")
    ap.add_argument("--sensitivity", choices=[s.value for s in Sensitivity], action="append")
    args = ap.parse_args(argv)

    names = [line.strip() for line in (args.nab / "files.txt").read_text().splitlines() if line.strip()]
    labels = args.nab / "labels" / "combined_windows.json"
    series = {name: read_series(args.nab / "data" / name) for name in names}
    rows = sum(len(v[2]) for v in series.values())
    detection = DetectionConfig.model_validate({})
    sensitivities = [Sensitivity(s) for s in args.sensitivity] if args.sensitivity else list(Sensitivity)

    print(f"NAB subset: {len(names)} files, {rows} rows; {detection!r}")
    print("detections = opened transitions of the catch-all rule (direction both, default ignore thresholds)")
    header = ("sensitivity", "standard", "low FP", "low FN", "opened", "us/sample")
    print(f"{header[0]:<12}" + "".join(f"{h:>10}" for h in header[1:]))
    for sensitivity in sensitivities:
        rule = MetricRule.model_validate({"match": ".*", "sensitivity": sensitivity})
        with tempfile.TemporaryDirectory(prefix="vigil-nab-") as tmp:
            elapsed = 0.0
            opened_total = 0
            for name, (stamps, ts_ms, values) in series.items():
                start = time.perf_counter()
                opened = run_guard(rule, detection, ts_ms, values)
                elapsed += time.perf_counter() - start
                opened_total += int(sum(opened))
                write_results(Path(tmp, name), stamps, opened)
            result = nab_score(args.scorer, Path(tmp), labels)
        figures = "".join(f"{result[p]:>10.1f}" for p in PROFILES)
        print(f"{sensitivity.value:<12}{figures}{opened_total:>10}{1e6 * elapsed / rows:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
