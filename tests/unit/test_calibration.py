"""The calibration stages: likelihood, new extreme, ignore thresholds; bounded plain state."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable

import orjson
import pytest

from engine import plain
from engine.calibration import (
    EXTREME_STEPS,
    IGNORED_CAP,
    RAW_OPEN,
    TAIL_OPEN,
    Calibrator,
    Likelihood,
    NewExtreme,
    log_tail,
)
from engine.config import DetectionConfig, Direction, MetricRule, Sensitivity
from engine.guard import SeriesGuard

NOISES: dict[str, Callable[[random.Random], float]] = {
    "gaussian": lambda rng: rng.gauss(0.0, 1.0),
    "laplace": lambda rng: rng.expovariate(1.0) * rng.choice((-1.0, 1.0)),
    "uniform": lambda rng: rng.uniform(-1.0, 1.0),
}


def test_log_tail_is_continuous_and_never_minus_infinity() -> None:
    for z in (0.0, 1.0, 5.0, 29.999, 30.0, 30.001, 100.0, 1e6):
        assert math.isfinite(log_tail(z))
    assert log_tail(29.9999) == pytest.approx(log_tail(30.0), rel=1e-3)
    assert log_tail(1.0) == pytest.approx(math.log(0.5 * math.erfc(1.0 / math.sqrt(2.0))))
    values = [log_tail(z / 10.0) for z in range(2000)]
    assert all(b < a for a, b in itertools.pairwise(values))  # strictly ordered: never clipped


def test_the_likelihood_scores_nothing_before_its_first_fit_and_learns_only_when_asked() -> None:
    stage = Likelihood(tail_open=1e-5, average=10, block=100, blocks=30)
    for _ in range(99):
        assert stage.observe(0.9) == 0.0
    before = plain.dump(stage)
    stage.observe(0.99, learn=False)
    assert plain.dump(stage) == before
    stage.observe(0.1)  # the 100th average closes the first block: fitted
    assert stage.var > 0.0
    assert stage.observe(0.1) < 1.0


@pytest.mark.parametrize("noise", list(NOISES))
def test_sensitivities_keep_their_false_alarm_rate_on_any_noise(noise: str) -> None:
    """Per-sample rate of s >= 1 from the likelihood stage: near the sensitivity's tail probability (within a
    few times; the moving average is judged with a Gaussian), and ordered high > medium > low."""
    n = 40_000
    rng = random.Random(7)
    values = [100.0 + NOISES[noise](rng) for _ in range(n)]
    rates = {}
    for sensitivity in Sensitivity:
        guard = SeriesGuard(
            MetricRule(match=".*", sensitivity=sensitivity, min_rel_deviation=0.0), DetectionConfig()
        )
        hits = 0
        for i, x in enumerate(values):
            hits += guard.peek(x) >= 1.0 and not guard.is_open
            guard.observe(i, x)
        rates[sensitivity] = hits / n
        assert rates[sensitivity] <= 5 * TAIL_OPEN[sensitivity] + 3 / n, (sensitivity, rates)
    assert rates[Sensitivity.HIGH] >= rates[Sensitivity.MEDIUM] >= rates[Sensitivity.LOW]


def steady(stage: NewExtreme, values: tuple[float, ...] = (0.0, 100.0, 50.0), n: int = 3) -> None:
    """Learn a range of 0..100 with ``n`` values, then 2,000 values near 50 in steps of 1: the typical
    step ends near 1, the level near 50."""
    for x in values[:n]:
        stage.observe(x)
    for i in range(2000):
        stage.observe(50.0 + (i % 2))


def test_new_extreme_beyond_the_range_by_more_than_the_share() -> None:
    stage = NewExtreme(share=0.02)
    steady(stage)
    assert stage.observe(101.9, learn=False) == 0.0  # within 2 % of the range
    assert stage.observe(104.0, learn=False) == pytest.approx(1.02)  # 2 beyond the tolerance, range 100
    assert stage.observe(-3.0, learn=False) == pytest.approx(1.01)
    assert stage.observe(150.0) > 1.0
    assert stage.high == 150.0  # learned: the range widens


def test_a_new_extreme_only_a_few_typical_steps_from_the_level_is_noise() -> None:
    """A record a hair beyond the range that is also close to the recent level (a noisy series' next
    record) does not count; the same excess after a jump of many typical steps does."""
    stage = NewExtreme(share=0.02)
    for i in range(2000):  # level near 100, range 96..104, typical step near 8
        stage.observe(100.0 + (4.0 if i % 2 else -4.0) * (1.0 if i % 7 else 0.5))
    assert stage.high == 104.0
    near = stage.high + 0.1 * (stage.high - stage.low) + 1.0  # beyond the tolerance, one step from the level
    assert abs(near - stage.level) < EXTREME_STEPS * stage.step
    assert stage.observe(near, learn=False) == 0.0
    far = stage.level + 2 * EXTREME_STEPS * stage.step
    assert stage.observe(far, learn=False) > 1.0


def test_on_a_flat_series_any_new_extreme_counts() -> None:
    stage = NewExtreme(share=0.02)
    for x in [0.0, 100.0] + [50.0] * 6000:
        stage.observe(x)
    assert stage.step < 0.01
    assert stage.observe(101.0, learn=False) == 0.0  # within the tolerance
    assert stage.observe(102.5, learn=False) > 1.0


def test_new_extreme_respects_the_risk_direction_and_can_be_off() -> None:
    higher = NewExtreme(share=0.02, direction=Direction.HIGHER)
    off = NewExtreme(share=0.0)
    for stage in (higher, off):
        steady(stage)
    assert higher.observe(-50.0) == 0.0
    assert higher.observe(200.0) > 1.0
    assert off.observe(1e9) == 0.0


def test_ignore_thresholds_cap_the_score_below_the_opening_threshold() -> None:
    lenient = Calibrator(MetricRule(match=".*", min_rel_deviation=0.5, new_extreme=0.02))
    strict = Calibrator(MetricRule(match=".*", min_rel_deviation=0.0, new_extreme=0.02))
    for stage in (lenient, strict):
        for x in (99.0, 101.0):
            stage.observe(x, 0.1, 100.0)
    assert strict.observe(140.0, 0.9, 100.0) > 1.0
    assert lenient.observe(140.0, 0.9, 100.0) == IGNORED_CAP
    assert lenient.observe(160.0, 0.9, 100.0) > 1.0


def test_a_series_state_stays_small_however_long_it_runs() -> None:
    """Bounded memory: 10^5 samples, and the plain checkpoint of a guard stays a few kilobytes."""
    config = DetectionConfig()
    guard = SeriesGuard(MetricRule(match=".*", new_extreme=0.02), config)
    rng = random.Random(8)
    sizes = []
    for i in range(100_000):
        guard.observe(i, 100.0 + rng.gauss(0.0, 1.0) + (50.0 if i % 9973 == 0 else 0.0))
        if i in (1_000, 10_000, 99_999):
            sizes.append(len(orjson.dumps(plain.dump(guard))))
    assert max(sizes) < 4_000
    assert sizes[2] <= sizes[1] + 100  # it stopped growing once the history was full


def test_an_overwhelming_raw_score_opens_whatever_the_likelihood_history() -> None:
    """A history of high raw scores (a regime change) leaves the likelihood deaf for a while; a raw score
    of RAW_OPEN or more opens on its own, scored by its odds, finite even for a raw score of 1.0."""
    stage = Calibrator(MetricRule(match=".*", min_rel_deviation=0.0))
    rng = random.Random(9)
    for _ in range(3000):
        stage.observe(100.0, rng.uniform(0.0, 0.95), 100.0)
    assert stage.likelihood.observe(0.99, learn=False) < 1.0  # deaf
    assert stage.observe(100.0, RAW_OPEN * 0.999, 100.0, learn=False) < 1.0
    assert stage.observe(100.0, 0.99, 100.0, learn=False) == pytest.approx((0.99 / 0.01) / 20.0)
    assert 1e14 < stage.observe(100.0, 1.0, 100.0, learn=False) < math.inf
