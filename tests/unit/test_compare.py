"""The intersection-union judge of ``before_after``/``load_test`` (engine/verification/compare.py)."""

from __future__ import annotations

import math
import random

import pytest

from engine.config import Direction, MetricType
from engine.verification import MetricSpec, Observation, Outcome, Settings
from engine.verification.compare import AgainstReferences

LATENCY = MetricSpec("latency", Direction.HIGHER, MetricType.LATENCY, min_abs=0.0, min_rel=0.0)
REFERENCES = ("before the deploy", "a day earlier", "a week earlier")


def run(
    levels: dict[str, float], steps: int, seed: int, alpha: float
) -> tuple[AgainstReferences, int | None]:
    """The judged window at level 1 (5 % lognormal noise) against references at ``levels``, a look after
    every step; (the judge, the step of the first fail or None)."""
    rng = random.Random(seed)
    judge = AgainstReferences([LATENCY], Settings(alpha=alpha, min_samples=20), list(levels))
    failed_at = None
    for k in range(steps):
        now = math.exp(rng.gauss(0, 0.05))
        seen = {
            r: {"latency": Observation(baseline=level * math.exp(rng.gauss(0, 0.05)), canary=now)}
            for r, level in levels.items()
        }
        if judge.look(1_796_205_600_000 + 15_000 * k, seen) is Outcome.FAIL and failed_at is None:
            failed_at = k
    return judge, failed_at


@pytest.mark.timeout(300)
def test_false_fail_rate_within_alpha_when_only_one_reference_is_as_good() -> None:
    """1,000 runs of 120 steps, a look after every step, no ignore threshold: the new version equals the
    window before the deploy and is 25 % worse than the two others (the least favourable case of the
    intersection-union test). The share that ever fails stays within alpha."""
    alpha, runs = 0.05, 1000
    levels = {REFERENCES[0]: 1.0, REFERENCES[1]: 0.8, REFERENCES[2]: 0.8}
    fails = sum(run(levels, 120, seed, alpha)[1] is not None for seed in range(runs))
    assert fails / runs <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs), fails


def test_worse_than_every_reference_fails_blaming_the_metric() -> None:
    levels = dict.fromkeys(REFERENCES, 0.8)
    for seed in range(20):
        judge, failed_at = run(levels, 120, seed, 0.01)
        assert failed_at is not None
        assert failed_at < 30, (seed, failed_at)
        verdict = judge.verdict()
        assert verdict.outcome is Outcome.FAIL
        assert verdict.metrics[0].result == "high"
        assert "every reference" in verdict.reason


def test_as_good_as_one_reference_passes_and_says_which() -> None:
    levels = {REFERENCES[0]: 0.8, REFERENCES[1]: 1.0, REFERENCES[2]: 0.8}
    judge, failed_at = run(levels, 120, 1, 0.01)
    verdict = judge.verdict()
    assert failed_at is None
    assert verdict.outcome is Outcome.PASS
    assert verdict.reason.startswith("as good as a day earlier (but before the deploy: latency high")
    assert verdict.metrics[0].result == "pass"


def test_a_reference_without_data_is_left_out_and_none_is_inconclusive() -> None:
    judge = AgainstReferences([LATENCY], Settings(min_samples=5), REFERENCES)
    for k in range(40):
        at = 1_796_205_600_000 + 15_000 * k
        judge.look(at, {REFERENCES[0]: {"latency": Observation(baseline=1.0, canary=2.0 + k % 3)}})
    verdict = judge.verdict()
    assert verdict.outcome is Outcome.FAIL  # worse than the only reference with data
    assert "a day earlier: no data" not in verdict.reason
    empty = AgainstReferences([LATENCY], Settings(), REFERENCES)
    empty.look(1_796_205_600_000, {})
    assert empty.verdict(final=False).outcome is None
    nothing = empty.verdict()
    assert nothing.outcome is Outcome.INCONCLUSIVE
    assert "no data in any reference window" in nothing.reason
    with pytest.raises(ValueError, match="no reference"):
        AgainstReferences([LATENCY], Settings(), [])
