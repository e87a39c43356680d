"""The contract every detector must pass, parametrised over the detectors Vigil ships."""

from __future__ import annotations

import math
import pickle
import random
from collections.abc import Callable
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import DetectionConfig, Direction, MetricRule, Sensitivity
from engine.detectors import THRESHOLDS, Detector, RobustZScore, make_detector

DETECTION = DetectionConfig.model_validate({"warmup": 30, "half_life": 120})


class Case(NamedTuple):
    make: Callable[[], Detector]
    direction: Direction


def _zscore(direction: Direction) -> Case:
    rule = MetricRule.model_validate({"match": ".*", "direction": direction, "min_rel_deviation": 0.0})
    return Case(lambda: make_detector(rule, DETECTION), direction)


#: Every detector (and every risk direction it handles) must pass this file.
CASES = {f"zscore-{d.value}": _zscore(d) for d in Direction}
DETECTORS = [case.make for case in CASES.values()]
IDS = list(CASES)

finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)


def noisy(n: int, *, level: float = 100.0, sigma: float = 1.0, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [level + rng.gauss(0.0, sigma) for _ in range(n)]


def trained(make: Callable[[], Detector], values: list[float]) -> Detector:
    detector = make()
    for x in values:
        detector.learn_one(x)
    return detector


@pytest.fixture(params=DETECTORS, ids=IDS)
def make(request: pytest.FixtureRequest) -> Callable[[], Detector]:
    factory: Callable[[], Detector] = request.param
    return factory


@settings(max_examples=60, deadline=None)
@pytest.mark.parametrize("factory", DETECTORS, ids=IDS)
@given(values=st.lists(finite, min_size=1, max_size=80), probe=finite)
def test_scores_are_in_unit_interval(
    factory: Callable[[], Detector], values: list[float], probe: float
) -> None:
    detector = factory()
    for x in values:
        score = detector.score_one(x)
        assert 0.0 <= score <= 1.0
        detector.learn_one(x)
    assert 0.0 <= detector.score_one(probe) <= 1.0
    low, high = detector.expected_range()
    assert low <= high


def test_untrained_detector_scores_zero(make: Callable[[], Detector]) -> None:
    detector = make()
    assert detector.n == 0
    assert detector.score_one(123.0) == 0.0


def test_score_does_not_learn(make: Callable[[], Detector]) -> None:
    detector = trained(make, noisy(200))
    before = pickle.dumps(detector)
    first = detector.score_one(150.0)
    assert detector.score_one(150.0) == first
    assert pickle.dumps(detector) == before
    assert detector.n == 200


def test_deterministic(make: Callable[[], Detector]) -> None:
    values = [*noisy(500, seed=3), 130.0, 70.0, *noisy(100, seed=4)]
    a, b = make(), make()
    for x in values:
        assert a.score_one(x) == b.score_one(x)
        a.learn_one(x)
        b.learn_one(x)


def test_pickle_round_trip_continues_identically(make: Callable[[], Detector]) -> None:
    detector = trained(make, noisy(300, seed=5))
    copy: Detector = pickle.loads(pickle.dumps(detector))
    assert copy.n == detector.n
    assert copy.expected_range() == detector.expected_range()
    for x in [*noisy(200, seed=6), 140.0, 60.0, *noisy(50, seed=7)]:
        assert copy.score_one(x) == detector.score_one(x)
        copy.learn_one(x)
        detector.learn_one(x)


def test_clone_is_fresh_with_same_parameters(make: Callable[[], Detector]) -> None:
    values = noisy(300, seed=8)
    detector = trained(make, values)
    clone = detector.clone()
    assert clone.n == 0
    again = trained(lambda: clone, values)
    assert again.score_one(140.0) == detector.score_one(140.0)


@pytest.mark.parametrize("level", [0.0, 5.0, 1e-9, 1e12, -42.0])
def test_constant_input_with_float_noise_never_alarms(make: Callable[[], Detector], level: float) -> None:
    detector = make()
    rng = random.Random(9)
    most_sensitive = THRESHOLDS[Sensitivity.HIGH].open
    for i in range(2000):
        jitter = rng.choice((-1.0, 0.0, 1.0)) * (abs(level) * 4e-16 + 1e-15)
        x = level + jitter
        if i >= DETECTION.warmup:
            assert detector.score_one(x) < most_sensitive
        detector.learn_one(x)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_input_is_rejected(make: Callable[[], Detector], bad: float) -> None:
    detector = trained(make, noisy(50))
    with pytest.raises(ValueError, match="finite"):
        detector.score_one(bad)
    with pytest.raises(ValueError, match="finite"):
        detector.learn_one(bad)
    assert detector.n == 50


@pytest.mark.parametrize("case", CASES.values(), ids=IDS)
def test_spike_scores_high_only_in_the_risk_direction(case: Case) -> None:
    detector, direction = trained(case.make, noisy(500, seed=10)), case.direction
    up, down = detector.score_one(120.0), detector.score_one(80.0)
    strict = THRESHOLDS[Sensitivity.LOW].open
    assert up >= strict if direction is not Direction.LOWER else up < 0.5
    assert down >= strict if direction is not Direction.HIGHER else down < 0.5
    assert detector.score_one(100.0) < THRESHOLDS[Sensitivity.HIGH].clear


def test_expected_range_is_where_scores_reach_the_open_threshold(make: Callable[[], Detector]) -> None:
    detector = trained(make, noisy(500, seed=11))
    low, high = detector.expected_range()
    threshold = THRESHOLDS[Sensitivity.MEDIUM].open
    for edge, outward in ((low, -1.0), (high, 1.0)):
        if math.isinf(edge):
            continue
        margin = 1e-6 * max(1.0, abs(edge))
        assert detector.score_one(edge + outward * margin) >= threshold
        assert detector.score_one(edge - outward * margin) < threshold


def test_normal_noise_is_calibrated(make: Callable[[], Detector]) -> None:
    """On normal noise, a score of at least ``t`` happens no more often than ``1 - t`` (give or take)."""
    detector = make()
    values = noisy(20_000, seed=12)
    counts = dict.fromkeys((0.95, 0.99, 0.999), 0)
    for i, x in enumerate(values):
        score = detector.score_one(x)
        if i >= DETECTION.warmup:
            for t in counts:
                counts[t] += score >= t
        detector.learn_one(x)
    for t, hits in counts.items():
        assert hits / len(values) <= 1.5 * (1 - t) + 1e-4, (t, hits)


def test_heavy_tails_raise_their_own_bar() -> None:
    """A series whose everyday excursions are large learns a heavier tail and scores them lower."""
    rng = random.Random(13)
    calm, spiky = RobustZScore(), RobustZScore()
    for _ in range(3000):
        calm.learn_one(100.0 + rng.gauss(0.0, 1.0))
        spiky.learn_one(100.0 + rng.gauss(0.0, 1.0) + (rng.random() < 0.03) * rng.choice((-8.0, 8.0)))
    assert spiky.score_one(106.0) < calm.score_one(106.0)


def test_small_deviations_never_reach_the_open_threshold() -> None:
    detector = RobustZScore(min_rel_deviation=0.05, sensitivity=Sensitivity.HIGH)
    for _ in range(500):
        detector.learn_one(100.0)
    assert detector.score_one(104.9) < THRESHOLDS[Sensitivity.HIGH].open
    assert detector.score_one(95.1) < THRESHOLDS[Sensitivity.HIGH].open
    assert detector.score_one(106.0) >= THRESHOLDS[Sensitivity.HIGH].open
    detector = RobustZScore(min_abs_deviation=2.0)
    for _ in range(500):
        detector.learn_one(0.0)
    assert detector.score_one(1.9) < THRESHOLDS[Sensitivity.MEDIUM].open
    assert detector.score_one(2.5) >= THRESHOLDS[Sensitivity.MEDIUM].open


@pytest.mark.parametrize("w", [-0.1, 1.5, math.nan])
def test_learning_weight_must_be_a_fraction(w: float) -> None:
    with pytest.raises(ValueError, match="weight"):
        RobustZScore().learn_one(1.0, w)


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="half_life"):
        RobustZScore(half_life=1.0)
    with pytest.raises(ValueError, match="min_abs"):
        RobustZScore(min_abs_deviation=-1.0)
