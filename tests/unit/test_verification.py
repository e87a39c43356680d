"""The judge on generated data: A/A runs with a look at every step, clear regressions, counts as counts,
ignore thresholds, no traffic, too short a run, a single bad pod, scoring."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from engine.config import Direction, MetricType
from engine.verification import (
    Counts,
    Health,
    Judge,
    MetricSpec,
    Observation,
    Outcome,
    Result,
    Settings,
)
from engine.verification.sequential import RateTest, sign_bound

STEP_MS = 15_000
T0 = 1_796_205_600_000  # 2026-12-02T10:00:00Z

LATENCY = MetricSpec("latency_p95", Direction.HIGHER, MetricType.LATENCY)
ERRORS = MetricSpec("error_ratio", Direction.HIGHER, MetricType.ERRORS, counts=True)
RATE = MetricSpec("request_rate", Direction.BOTH, MetricType.THROUGHPUT)
PODS = ("c-0", "c-1", "c-2")
BASE_PODS = ("b-0", "b-1", "b-2")


def step(
    rng: random.Random,
    i: int,
    *,
    latency: float = 1.0,
    errors: float = 1.0,
    traffic: float = 1.0,
    bad_pod: str | None = None,
    base_error_ratio: float = 0.01,
) -> dict[str, Observation]:
    """One step of a service: a shared daily-ish load, lognormal noise per pod, per-pod Poisson errors."""
    load = 100 * (1 + 0.3 * math.sin(i / 40)) * math.exp(rng.gauss(0, 0.1))
    lat: dict[str, dict[str, float]] = {"b": {}, "c": {}}
    req: dict[str, dict[str, float]] = {"b": {}, "c": {}}
    err: dict[str, dict[str, float]] = {"b": {}, "c": {}}
    for side, pods in (("b", BASE_PODS), ("c", PODS)):
        for pod in pods:
            canary = side == "c"
            lat_factor = latency if canary else 1.0
            err_factor = errors if canary else 1.0
            if canary and pod == bad_pod:
                lat_factor, err_factor = 1.0, 10.0
            n = load * (traffic if canary else 1.0) * 15
            req[side][pod] = n / 15
            ratio = min(1.0, base_error_ratio * err_factor)
            err[side][pod] = poisson(rng, n * ratio) / 15
            lat[side][pod] = 0.2 * (1 + load / 400) * lat_factor * math.exp(rng.gauss(0, 0.15))
    out = {}
    agg_lat = {s: sum(lat[s].values()) / 3 for s in "bc"}
    rates = {s: sum(req[s].values()) for s in "bc"}
    errs = {s: sum(err[s].values()) for s in "bc"}
    out[LATENCY.name] = Observation(
        baseline=agg_lat["b"],
        canary=agg_lat["c"] if rates["c"] > 0 else None,
        baseline_instances=lat["b"],
        canary_instances=lat["c"] if rates["c"] > 0 else {},
    )
    out[ERRORS.name] = Observation(
        baseline=errs["b"] / rates["b"],
        canary=errs["c"] / rates["c"] if rates["c"] > 0 else None,
        baseline_counts=Counts(errs["b"], rates["b"]),
        canary_counts=Counts(errs["c"], rates["c"]),
        baseline_instances={p: err["b"][p] / req["b"][p] for p in BASE_PODS},
        canary_instances={p: err["c"][p] / req["c"][p] for p in PODS} if rates["c"] > 0 else {},
    )
    out[RATE.name] = Observation(baseline=rates["b"], canary=rates["c"])
    return out


def poisson(rng: random.Random, mean: float) -> int:
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def run(
    specs: list[MetricSpec],
    steps: int,
    seed: int,
    settings: Settings | None = None,
    *,
    fail_fast: bool = True,
    **shape: float | str,
) -> tuple[Judge, int | None]:
    """The judge after ``steps`` looks, and the step index at which it failed (None if it did not)."""
    rng = random.Random(seed)
    judge = Judge(specs, settings)
    failed_at = None
    for i in range(steps):
        seen = step(rng, i, **shape)  # type: ignore[arg-type]
        if judge.look(T0 + i * STEP_MS, {s.name: seen[s.name] for s in specs}) is Outcome.FAIL:
            failed_at = i if failed_at is None else failed_at
            if fail_fast:
                break
    return judge, failed_at


def strict(spec: MetricSpec) -> MetricSpec:
    """No ignore threshold: the e-process alone keeps the false-fail rate."""
    return MetricSpec(spec.name, spec.direction, spec.type, counts=spec.counts, min_abs=0.0, min_rel=0.0)


@pytest.mark.timeout(300)
def test_aa_false_fail_rate_within_nominal_level_with_a_look_every_step() -> None:
    """1,000 A/A runs of 120 steps (30 min at 15 s), three metrics, three canary pods, no ignore
    thresholds, a look after every step: the share that ever fails stays within alpha."""
    alpha, runs = 0.05, 1000
    specs = [strict(LATENCY), strict(ERRORS), strict(RATE)]
    fails = sum(run(specs, 120, seed, Settings(alpha=alpha))[1] is not None for seed in range(runs))
    # alpha plus three binomial standard errors: a true rate above alpha would show.
    assert fails / runs <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs), fails


@pytest.mark.timeout(300)
def test_aa_default_settings_pass() -> None:
    """With the default ignore thresholds and alpha 0.01 the clean runs pass (at most 1 % may fail)."""
    specs = [LATENCY, ERRORS, RATE]
    verdicts = []
    for seed in range(300):
        judge, _ = run(specs, 120, 10_000 + seed)
        verdicts.append(judge.verdict().outcome)
    assert verdicts.count(Outcome.FAIL) <= 3
    assert verdicts.count(Outcome.PASS) >= 297


@pytest.mark.parametrize(
    ("shape", "blamed", "within"),
    [
        ({"latency": 1.6}, "latency_p95", 20),
        ({"errors": 5.0}, "error_ratio", 20),
        ({"errors": 2.0}, "error_ratio", 60),
        ({"traffic": 0.7}, "request_rate", 40),
    ],
)
def test_clear_regressions_fail_early(shape: dict[str, float], blamed: str, within: int) -> None:
    specs = [LATENCY, ERRORS, RATE]
    for seed in range(20):
        judge, failed_at = run(specs, 120, seed, **shape)
        assert failed_at is not None, seed
        assert failed_at < within, (seed, failed_at)
        verdict = judge.verdict()
        assert verdict.outcome is Outcome.FAIL
        assert verdict.final
        assert verdict.decided_at_ms == T0 + failed_at * STEP_MS
        report = {m.name: m for m in verdict.metrics}[blamed]
        assert report.regression
        assert report.result is (Result.LOW if "traffic" in shape else Result.HIGH)
        assert blamed in verdict.reason


def test_a_tiny_but_certain_shift_is_ignored() -> None:
    """+2 % latency with almost no noise: certain, yet under the 5 % relative ignore threshold."""
    spec = MetricSpec("latency", Direction.HIGHER, min_rel=0.05)
    judge = Judge([spec])
    rng = random.Random(1)
    for i in range(120):
        b = 100 + rng.gauss(0, 0.1)
        assert judge.look(T0 + i * STEP_MS, {"latency": Observation(b, b * 1.02)}) is None
    verdict = judge.verdict()
    assert verdict.outcome is Outcome.PASS
    assert verdict.metrics[0].shift_low is not None
    assert verdict.metrics[0].shift_low > 0
    strict_judge = Judge([strict(spec)])
    rng = random.Random(1)
    outcomes = []
    for i in range(120):
        b = 100 + rng.gauss(0, 0.1)
        outcomes.append(strict_judge.look(T0 + i * STEP_MS, {"latency": Observation(b, b * 1.02)}))
    assert Outcome.FAIL in outcomes


def test_baseline_without_errors_and_canary_with_three_passes() -> None:
    judge = Judge([strict(ERRORS)])
    for i in range(60):
        canary_errors = 1 / 15 if i in (10, 25, 40) else 0.0
        seen = Observation(
            baseline=0.0,
            canary=canary_errors / 100,
            baseline_counts=Counts(0.0, 100.0),
            canary_counts=Counts(canary_errors, 100.0),
            baseline_instances={"b-0": 0.0},
            canary_instances={"c-0": canary_errors / 100},
        )
        assert judge.look(T0 + i * STEP_MS, {ERRORS.name: seen}) is None
    verdict = judge.verdict()
    assert verdict.outcome is Outcome.PASS, verdict.reason
    assert verdict.instances[0].health is Health.HEALTHY


def test_rate_test_never_passes_eight_on_three_errors_over_zero() -> None:
    test = RateTest(1.0)
    test.add(3, 1000, 0, 1000)
    assert math.exp(test.log_e) <= 8 + 1e-9


def test_no_canary_traffic_is_inconclusive_never_a_fail() -> None:
    judge, failed_at = run([LATENCY, ERRORS, RATE], 120, 3, traffic=0.0)
    assert failed_at is None
    verdict = judge.verdict()
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert "no canary traffic since 2026-12-02T10:00:00Z" in verdict.reason


def test_traffic_stopping_midway_says_since_when() -> None:
    rng = random.Random(5)
    judge = Judge([LATENCY, ERRORS, RATE])
    for i in range(120):
        seen = step(rng, i, traffic=1.0 if i < 80 else 0.0)
        assert judge.look(T0 + i * STEP_MS, seen) is None
    verdict = judge.verdict()
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert "no canary traffic since 2026-12-02T10:20:00Z" in verdict.reason


def test_too_short_a_run_is_inconclusive_with_what_is_missing() -> None:
    judge, _ = run([LATENCY, ERRORS, RATE], 14, 4)
    verdict = judge.verdict()
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert "error_ratio: 14 samples, need 30" in verdict.missing
    assert "latency_p95: 14 samples, need 30" in verdict.reason


def test_a_single_bad_pod_is_unhealthy_alone() -> None:
    """The aggregate error ratio fails first; run on (no fail-fast), the pod's own evidence names it."""
    judge, failed_at = run([LATENCY, ERRORS, RATE], 120, 6, fail_fast=False, bad_pod="c-1")
    assert failed_at is not None
    assert failed_at < 40
    verdict = judge.verdict()
    assert verdict.outcome is Outcome.FAIL
    health = {i.instance: i.health for i in verdict.instances}
    assert health["c-1"] is Health.UNHEALTHY
    assert health["c-0"] is not Health.UNHEALTHY
    assert health["c-2"] is not Health.UNHEALTHY
    assert "c-1 unhealthy" in verdict.reason
    assert verdict.decided_at_ms == T0 + failed_at * STEP_MS


def test_scoring_a_critical_metric_always_fails() -> None:
    scored = Settings(pass_score=90, marginal_score=50)
    lat = MetricSpec("latency_p95", Direction.HIGHER, MetricType.LATENCY, weight=1)
    errors = MetricSpec("error_ratio", Direction.HIGHER, MetricType.ERRORS, counts=True, weight=3)
    rate = MetricSpec("request_rate", Direction.BOTH, MetricType.THROUGHPUT, weight=1)
    # latency regresses: weighted score 80, between marginal and pass: inconclusive, not a fail.
    judge, failed_at = run([lat, errors, rate], 120, 7, scored, latency=1.6)
    verdict = judge.verdict()
    assert failed_at is None
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert verdict.score == 80
    critical = MetricSpec(lat.name, lat.direction, lat.type, critical=True)
    judge, failed_at = run([critical, errors, rate], 120, 7, scored, latency=1.6)
    assert failed_at is not None
    assert judge.verdict().outcome is Outcome.FAIL


def test_confidence_sequence_covers_the_true_shift() -> None:
    """The median shift's confidence sequence holds it at every look in nearly all runs."""
    misses = 0
    for seed in range(200):
        rng = random.Random(seed)
        diffs: list[float] = []
        for _ in range(100):
            diffs.append(3.0 + rng.gauss(0, 1))
            ordered = sorted(diffs)
            lo = sign_bound(ordered, math.log(20), lower=True)
            hi = sign_bound(ordered, math.log(20), lower=False)
            if (lo is not None and lo > 3.0) or (hi is not None and hi < 3.0):
                misses += 1
                break
    assert misses <= 200 * 0.1  # two one-sided bounds at alpha 0.05 each


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="no metrics"):
        Judge([])
    with pytest.raises(ValueError, match="repeat"):
        Judge([LATENCY, LATENCY])
    with pytest.raises(ValueError, match="alpha"):
        Settings(alpha=1.5)


def smoothed_aa(seed: int, stride: int, steps: int = 120) -> bool:
    """An A/A run whose values are rate()-like moving averages over 4 steps; True if it ever fails."""
    rng = random.Random(seed)
    spec = dataclasses.replace(strict(MetricSpec("latency", Direction.BOTH)), stride=stride)
    judge = Judge([spec], Settings(alpha=0.05))
    raw = [(rng.gauss(0, 1), rng.gauss(0, 1)) for _ in range(steps + 3)]
    for i in range(steps):
        window = raw[i : i + 4]
        base, canary = (100 + sum(w[k] for w in window) / 4 for k in (0, 1))
        if judge.look(T0 + i * STEP_MS, {"latency": Observation(base, canary)}) is Outcome.FAIL:
            return True
    return False


def test_a_stride_of_the_rate_window_keeps_the_level_on_smoothed_series() -> None:
    """Overlapping rate() windows make successive differences dependent; every 4th step is independent."""
    runs = 400
    fails = sum(smoothed_aa(seed, stride=4) for seed in range(runs))
    assert fails / runs <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs), fails


@pytest.mark.parametrize(
    "name",
    [
        "engine.verification.sequential",
        "engine.verification.statistics",
        "engine.verification.judge",
        "engine.verification.request",
        "connectors.api.jobs",
        "vigil.verify",
    ],
)
def test_doctests(name: str) -> None:
    import doctest
    import importlib

    module = importlib.import_module(name)
    result = doctest.testmod(module)
    assert result.failed == 0
    assert result.attempted > 0
