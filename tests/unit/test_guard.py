"""The 24/7 guard of one series: open once, resolve once, stay quiet on noise, never flap."""

from __future__ import annotations

import dataclasses
import math
import pickle
import random

import pytest

from engine.config import DetectionConfig, Direction, MetricRule, Sensitivity
from engine.detectors import THRESHOLDS
from engine.guard import SeriesGuard, Transition, TransitionKind

STEP_MS = 15_000
DETECTION = DetectionConfig.model_validate(
    {"warmup": 30, "half_life": 120, "open_after": 3, "resolve_after": 5}
)


def rule(direction: Direction = Direction.BOTH, sensitivity: Sensitivity = Sensitivity.MEDIUM) -> MetricRule:
    # min_rel_deviation=0: judge the calibration itself, not the default 5 % ignore band.
    return MetricRule.model_validate(
        {"match": ".*", "direction": direction, "sensitivity": sensitivity, "min_rel_deviation": 0.0}
    )


def noise(n: int, *, level: float = 100.0, sigma: float = 1.0, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [level + rng.gauss(0.0, sigma) for _ in range(n)]


def feed(guard: SeriesGuard, values: list[float], start: int = 0) -> list[tuple[int, Transition]]:
    """Observe ``values`` at ``(start + i) * STEP_MS``; return (sample index, transition) pairs."""
    out = []
    for i, x in enumerate(values, start):
        transition = guard.observe(i * STEP_MS, x)
        if transition is not None:
            out.append((i, transition))
    return out


def test_one_incident_opens_once_and_resolves_once_with_its_window() -> None:
    guard = SeriesGuard(rule(), DETECTION)
    values = noise(600, seed=1)
    values[400:420] = [v + 15.0 for v in values[400:420]]
    events = feed(guard, values)
    assert [(i, t.kind) for i, t in events] == [(402, TransitionKind.OPENED), (424, TransitionKind.RESOLVED)]
    opened, resolved = events[0][1], events[1][1]
    assert opened.window_start_ms == 400 * STEP_MS
    assert opened.window_end_ms == opened.ts_ms == 402 * STEP_MS
    assert opened.value == values[402]
    assert opened.score >= THRESHOLDS[Sensitivity.MEDIUM].open
    assert opened.expected_low < 100.0 < opened.expected_high < opened.value
    assert resolved.window_start_ms == 400 * STEP_MS
    assert resolved.window_end_ms == 419 * STEP_MS
    assert resolved.score < THRESHOLDS[Sensitivity.MEDIUM].clear
    assert resolved.peak_score >= opened.peak_score >= opened.score
    assert not guard.is_open


def test_transition_is_frozen() -> None:
    guard = SeriesGuard(rule(), DETECTION)
    (_, opened), *_ = feed(guard, [*noise(100), 200.0, 200.0, 200.0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        opened.score = 0.0  # type: ignore[misc]
    assert opened.kind == "opened"


@pytest.mark.parametrize("sensitivity", list(Sensitivity))
@pytest.mark.parametrize("direction", list(Direction))
def test_gaussian_noise_stays_quiet(sensitivity: Sensitivity, direction: Direction) -> None:
    guard = SeriesGuard(rule(direction, sensitivity), DETECTION)
    assert feed(guard, noise(5000, seed=2)) == []


def test_heavy_tailed_noise_stays_quiet_at_medium() -> None:
    rng = random.Random(3)
    values = [100.0 + rng.expovariate(1.0) * rng.choice((-1.0, 1.0)) for _ in range(5000)]
    assert feed(SeriesGuard(rule(), DETECTION), values) == []


def test_risk_direction_only() -> None:
    values = [*noise(300, seed=4), *[80.0] * 10, *noise(100, seed=5)]
    assert feed(SeriesGuard(rule(Direction.HIGHER), DETECTION), values) == []
    kinds = [t.kind for _, t in feed(SeriesGuard(rule(Direction.LOWER), DETECTION), values)]
    assert kinds == [TransitionKind.OPENED, TransitionKind.RESOLVED]


def test_flapping_around_the_threshold_does_not_storm() -> None:
    """Bursts of clearly anomalous samples separated by a few ordinary ones: one open, one resolve."""
    guard = SeriesGuard(rule(), DETECTION)
    values = noise(300, seed=6)
    rng = random.Random(7)
    for _ in range(40):
        values += [100.0 + 12.0 + rng.gauss(0.0, 1.0) for _ in range(3)]
        values += [100.0 + rng.gauss(0.0, 1.0) for _ in range(rng.randint(1, 4))]
    values += noise(200, seed=8)
    kinds = [t.kind for _, t in feed(guard, values)]
    assert kinds == [TransitionKind.OPENED, TransitionKind.RESOLVED]


def test_hovering_between_thresholds_keeps_the_state() -> None:
    """Once open, samples that are no longer anomalous but not yet normal do not resolve it."""
    guard = SeriesGuard(rule(sensitivity=Sensitivity.HIGH), DETECTION)
    feed(guard, noise(300, seed=9))
    feed(guard, [130.0] * 3, start=300)
    assert guard.is_open
    half_width = guard.detector.expected_range()[1] - 100.0  # ~ z_open (2.58) sigma for "both"
    hover = 100.0 + half_width * 0.9  # between the clear (z 1.96) and open (z 2.58) thresholds
    assert feed(guard, [hover] * 20, start=303) == []
    assert guard.is_open


def test_stale_marker_resolves_and_resets() -> None:
    guard = SeriesGuard(rule(), DETECTION)
    feed(guard, noise(300, seed=10))
    (_, opened), *_ = feed(guard, [150.0] * 4, start=300)
    assert opened.kind is TransitionKind.OPENED
    resolved = guard.end(310 * STEP_MS)
    assert resolved is not None
    assert resolved.kind is TransitionKind.RESOLVED
    assert resolved.value is None
    assert resolved.ts_ms == 310 * STEP_MS
    assert (resolved.window_start_ms, resolved.window_end_ms) == (300 * STEP_MS, 303 * STEP_MS)
    assert guard.end(311 * STEP_MS) is None
    # A streak does not survive the stale marker either: 2 + 1 anomalous samples do not open.
    feed(guard, noise(200, seed=11), start=400)
    assert feed(guard, [150.0] * 2, start=600) == []
    assert guard.end(602 * STEP_MS) is None
    assert feed(guard, [150.0], start=603) == []


def test_no_alarm_during_warmup() -> None:
    guard = SeriesGuard(rule(), DETECTION)
    values = [100.0, 100.5, 99.5] * 5 + [500.0] * 5 + [100.0] * 9
    assert len(values) < DETECTION.warmup
    assert feed(guard, values) == []
    assert guard.detector.n == len(values)


def test_a_persistent_level_shift_becomes_the_new_normal() -> None:
    guard = SeriesGuard(rule(), DETECTION)
    values = noise(300, seed=12) + noise(3000, level=120.0, seed=13)
    events = feed(guard, values)
    assert [t.kind for _, t in events] == [TransitionKind.OPENED, TransitionKind.RESOLVED]
    opened_at, resolved_at = events[0][0], events[1][0]
    # Not at once: the incident is judged against the old baseline for a while ...
    assert resolved_at - opened_at > DETECTION.half_life / 2
    # ... but accepted within a few baseline memories.
    assert resolved_at - opened_at < 5 * DETECTION.half_life


def test_guard_pickles_mid_incident() -> None:
    guard = SeriesGuard(rule(), DETECTION)
    feed(guard, noise(300, seed=14))
    feed(guard, [140.0] * 2, start=300)  # a streak is running
    copy: SeriesGuard = pickle.loads(pickle.dumps(guard))
    tail = [140.0, 141.0, *noise(50, seed=15)]
    assert feed(copy, tail, start=302) == feed(guard, tail, start=302)


def test_non_finite_values_are_refused() -> None:
    guard = SeriesGuard(rule(), DETECTION)
    feed(guard, noise(50))
    with pytest.raises(ValueError, match="finite"):
        guard.observe(50 * STEP_MS, math.nan)


def test_admit_skips_points_at_or_before_the_watermark_which_survives_a_checkpoint() -> None:
    guard = SeriesGuard(rule(), DETECTION)
    assert [guard.admit(t) for t in (10, 20, 20, 15, 30)] == [None, None, "duplicate", "out_of_order", None]
    assert pickle.loads(pickle.dumps(guard)).watermark == 30
