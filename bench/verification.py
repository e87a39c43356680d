"""Looks per second of the judge at scale, against the bare sign test over the same arrays.

    python bench/verification.py [--metrics 200] [--instances 20] [--steps 120] [--runs 3]

One verification of ``--metrics`` continuous metrics, each with ``--instances`` canary and as many baseline
instances (A/A data, so nothing stops early), looked at after every one of ``--steps`` steps:

* **Vigil** — :meth:`Judge.look` per step (sorted inserts, the pooled and per-instance sign e-processes, the
  Bonferroni thresholds), and one full :meth:`Judge.verdict` report at the end;
* **ML view** — the detector per metric (the worker's default rule) learning the baseline's aggregate and
  scoring the canary's at every step, as a verification does beside the judge;
* **bare** — the same signs counted in plain Python lists and the same mixture e-value (the cached
  :func:`sign_log_e`) per metric and instance, with no thresholds, medians or bookkeeping.

Each figure is the median of ``--runs`` runs with the min-max. The ratio is Vigil's time per step over
the bare time per step in the same run.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from engine.config import Direction, Sensitivity, VigilConfig  # noqa: E402
from engine.verification import Judge, MetricSpec, Observation  # noqa: E402
from engine.verification.ml import MLViews  # noqa: E402
from engine.verification.sequential import sign_log_e  # noqa: E402


def data(metrics: int, instances: int, steps: int, seed: int) -> list[dict[str, Observation]]:
    rng = random.Random(seed)
    out = []
    for _ in range(steps):
        seen = {}
        for m in range(metrics):
            base = {f"b{i}": 100 + rng.gauss(0, 5) for i in range(instances)}
            canary = {f"c{i}": 100 + rng.gauss(0, 5) for i in range(instances)}
            seen[f"m{m}"] = Observation(
                baseline=sum(base.values()) / instances,
                canary=sum(canary.values()) / instances,
                baseline_instances=base,
                canary_instances=canary,
            )
        out.append(seen)
    return out


def vigil(specs: list[MetricSpec], steps: list[dict[str, Observation]]) -> tuple[float, float]:
    judge = Judge(specs)
    began = time.perf_counter()
    for i, seen in enumerate(steps):
        judge.look(i * 15_000, seen)
    looked = time.perf_counter() - began
    began = time.perf_counter()
    judge.verdict()
    return looked, time.perf_counter() - began


def ml_view(specs: list[MetricSpec], steps: list[dict[str, Observation]]) -> tuple[float, int]:
    """The ML view's share of a look (the worker's default detector per metric: learn the baseline's
    aggregate, score the canary's), and how many A/A metrics it flagged at some step."""
    config = VigilConfig()
    views = MLViews(
        specs, {s.name: config.rule_for(s.name) for s in specs}, config.detection, Sensitivity.MEDIUM
    )
    began = time.perf_counter()
    for i, seen in enumerate(steps):
        for name, o in seen.items():
            views.learn(name, i * 15_000, o.baseline)
            views.score(name, i * 15_000, o.canary)
    took = time.perf_counter() - began
    return took, sum(v.anomalous > 0 for v in views.views.values())


def bare(steps: list[dict[str, Observation]]) -> float:
    """Signs of the pooled pairs and of each instance against the baseline median, and their e-values."""
    pooled: dict[str, list[int]] = {}
    per: dict[tuple[str, str], list[int]] = {}
    began = time.perf_counter()
    for seen in steps:
        for name, o in seen.items():
            counts = pooled.setdefault(name, [0, 0])
            for c, b in zip(
                sorted(o.canary_instances.values()), sorted(o.baseline_instances.values()), strict=False
            ):
                counts[0 if c > b else 1] += 1
            mid = statistics.median(o.baseline_instances.values())
            for inst, v in o.canary_instances.items():
                mine = per.setdefault((name, inst), [0, 0])
                mine[0 if v > mid else 1] += 1
            sign_log_e(counts[0], counts[0] + counts[1])
            sign_log_e(counts[1], counts[0] + counts[1])
        for up, down in per.values():
            sign_log_e(up, up + down)
            sign_log_e(down, up + down)
    return time.perf_counter() - began


def spread(values: list[float], scale: float = 1000.0) -> str:
    return f"{statistics.median(values) * scale:.2f} ms ({min(values) * scale:.2f}-{max(values) * scale:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=int, default=200)
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    specs = [MetricSpec(f"m{m}", Direction.BOTH) for m in range(args.metrics)]
    steps = data(args.metrics, args.instances, args.steps, seed=1)
    ours, reports, theirs, ml = [], [], [], []
    flagged = 0
    for _ in range(args.runs):
        looked, report = vigil(specs, steps)
        ours.append(looked / args.steps)
        reports.append(report)
        theirs.append(bare(steps) / args.steps)
        took, flagged = ml_view(specs, steps)
        ml.append(took / args.steps)
    shape = f"{args.metrics} metrics x {args.instances}+{args.instances} instances"
    print(f"{shape}, {args.steps} looks, {args.runs} runs")
    print(f"Vigil, per look:         {spread(ours)}  -> {1 / statistics.median(ours):.1f} looks/s")
    print(f"bare sign test, per look: {spread(theirs)}  -> {1 / statistics.median(theirs):.1f} looks/s")
    print(f"Vigil's full report at the end: {spread(reports)}")
    print(
        f"ML view (detector per metric), per look: {spread(ml)}"
        f" = {100 * statistics.median(ml) / statistics.median(ours):.1f} % of Vigil's look;"
        f" A/A metrics it flagged at some step: {flagged}/{args.metrics}"
    )
    print(f"ratio Vigil / bare per look: {statistics.median(ours) / statistics.median(theirs):.2f}")
    per_look = statistics.median(ours) + statistics.median(ml)
    verifications = 1 / (per_look + statistics.median(reports) / args.steps)
    print(
        f"at one look per 15 s step, one core keeps up with about {verifications * 15:.0f} such verifications"
    )


if __name__ == "__main__":
    main()
