"""False fails, detections and time to a fail verdict, through a real Prometheus, against Kayenta's way.

    python bench/canary.py [--clean 100] [--regressed 100] [--seed 1]

Generated canary runs (``tests/fixtures/canary.py``: 3 baseline and 3 canary pods, 30 minutes at 15 s, shared
load, Poisson-like requests, binomial errors, per-pod latency jitter) are loaded into a real Prometheus with
promtool: ``--clean`` runs with no change and ``--regressed`` runs cycling through error ratio x2 and x5,
latency +25 % and +60 % and throughput -30 %. Each run is judged with the http pack, in-process, replayed
step by step (each range fetched once), by

* **Vigil** — the anytime-valid judge (:mod:`engine.verification`), alpha 0.01 (sensitivity medium);
* **repeated Mann-Whitney** (the baseline: Kayenta's judge run at every interval) — the same data, a
  two-sided Mann-Whitney per metric at every step from the 10th on, failing when p < 0.01 / metrics in a
  bad direction: valid for one look, not for 120.

Printed: the false-fail rate over clean runs, the detection rate and the median time to a fail verdict (in
metric time since the start) per kind, and the judging rate.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from connectors.prometheus import PrometheusClient, aligned  # noqa: E402
from connectors.verifier import fetch, observations  # noqa: E402
from engine.config import LabelsConfig, PollerConfig, SourceConfig, VigilConfig  # noqa: E402
from engine.verification import Judge, Outcome, Result  # noqa: E402
from engine.verification.request import parse_request, plan  # noqa: E402
from engine.verification.statistics import mann_whitney  # noqa: E402
from tests.fixtures.canary import END, START, generate  # noqa: E402
from tests.fixtures.tsdb import prometheus_with  # noqa: E402

KINDS: dict[str, dict[str, Any]] = {
    "errors_x2": {"errors": 2.0},
    "errors_x5": {"errors": 5.0},
    "latency_+25%": {"latency": 1.25},
    "latency_+60%": {"latency": 1.6},
    "throughput_-30%": {"traffic": 0.7},
}
LADDER = [f"{0.02 * 1.25**k:.6g}" for k in range(24)] + ["+Inf"]
STEP_S = 15


def scenarios(clean: int, regressed: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {f"clean-{i}": {} for i in range(clean)}
    kinds = list(KINDS)
    for i in range(regressed):
        kind = kinds[i % len(kinds)]
        out[f"{kind}-{i}"] = KINDS[kind]
    return out


def naive(chosen: Any, fetched: Any, steps: list[int]) -> int | None:
    """Kayenta's way: Mann-Whitney of all values so far at every step; the step index it fails at."""
    bad = {m.spec.name: m.spec.bad_sides for m in chosen.metrics}
    alpha = 0.01 / len(bad)
    values: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in bad}
    for i, t in enumerate(steps):
        for name, seen in observations(chosen, fetched, t).items():
            if seen.baseline is not None and seen.canary is not None:
                values[name][0].append(seen.baseline)
                values[name][1].append(seen.canary)
        if i < 10:
            continue
        for name, (base, canary) in values.items():
            result = mann_whitney(canary, base)
            if result is None or result.p_value >= alpha:
                continue
            side = Result.HIGH if result.auc > 0.5 else Result.LOW
            if side in bad[name]:
                return i
    return None


async def judge_all(url: str, runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    config = VigilConfig(
        labels=LabelsConfig(instance="pod"),
        poller=PollerConfig(sources=(SourceConfig(name="main", url=url, retries=2, max_concurrency=8),)),
    )
    out: dict[str, dict[str, Any]] = {}
    async with PrometheusClient(config.poller.sources[0]) as client:
        slots = asyncio.Semaphore(8)

        async def one(service: str) -> None:
            request = parse_request(
                {
                    "service": service,
                    "baseline": 'version="v41"',
                    "canary": 'version="v42"',
                    "pack": ["http"],
                    "start": START,
                    "end": END,
                }
            )
            chosen = plan(request, config)
            assert request.start is not None
            assert request.end is not None
            window = aligned(
                int(request.start.timestamp() * 1000), int(request.end.timestamp() * 1000), STEP_S * 1000
            )
            assert window is not None
            async with slots:
                fetched = await fetch(client, chosen, window)
            began = time.perf_counter()
            judge = Judge([m.spec for m in chosen.metrics], chosen.settings)
            steps = list(window.steps())
            failed_at = None
            for i, t in enumerate(steps):
                if judge.look(t, observations(chosen, fetched, t)) is Outcome.FAIL:
                    failed_at = i
                    break
            verdict = judge.verdict()
            vigil_s = time.perf_counter() - began
            out[service] = {
                "verdict": verdict.outcome,
                "failed_at": failed_at,
                "vigil_s": vigil_s,
                "naive_failed_at": naive(chosen, fetched, steps),
            }

        await asyncio.gather(*(one(s) for s in runs))
    return out


def minutes(steps: list[int]) -> str:
    if not steps:
        return "-"
    return f"{statistics.median(steps) * STEP_S / 60:.2f} min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", type=int, default=100)
    parser.add_argument("--regressed", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(machine())
    runs = scenarios(args.clean, args.regressed)
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        text = generate(args.seed, runs, LADDER)
        with prometheus_with(text, Path(tmp)) as prometheus:
            loaded = time.perf_counter() - began
            began = time.perf_counter()
            results = asyncio.run(judge_all(prometheus.url, runs))
            judged = time.perf_counter() - began
    print(f"{len(runs)} runs of 121 steps: generated and loaded in {loaded:.1f} s, judged in {judged:.1f} s")
    clean = [r for s, r in results.items() if s.startswith("clean-")]
    if clean:
        vigil_ff = sum(r["verdict"] is Outcome.FAIL for r in clean) / len(clean)
        naive_ff = sum(r["naive_failed_at"] is not None for r in clean) / len(clean)
        passed = sum(r["verdict"] is Outcome.PASS for r in clean) / len(clean)
        print(
            f"clean runs: {len(clean)}; false fails: Vigil {vigil_ff:.1%}, "
            f"repeated Mann-Whitney {naive_ff:.1%}; Vigil passed {passed:.1%}"
        )
    head = ("kind", "runs", "Vigil detects", "median to fail", "MW detects", "MW median")
    print(f"{head[0]:<16} {head[1]:>4}  {head[2]:>13}  {head[3]:>14}  {head[4]:>10}  {head[5]:>10}")
    for kind in KINDS:
        mine = [r for s, r in results.items() if s.startswith(kind + "-")]
        if not mine:
            continue
        ours = [r["failed_at"] for r in mine if r["failed_at"] is not None]
        theirs = [r["naive_failed_at"] for r in mine if r["naive_failed_at"] is not None]
        detects, naive_detects = len(ours) / len(mine), len(theirs) / len(mine)
        print(
            f"{kind:<16} {len(mine):>4}  {detects:>13.1%}  {minutes(ours):>14}  "
            f"{naive_detects:>10.1%}  {minutes(theirs):>10}"
        )
    per = statistics.median(r["vigil_s"] for r in results.values())
    print(f"Vigil judging alone: median {per * 1000:.1f} ms a verification (5 metrics, 3+3 pods, 121 looks)")


if __name__ == "__main__":
    main()
