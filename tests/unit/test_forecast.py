"""The forecast detector (``detector: forecast``): a ramp is normal, a break of the ramp is not."""

from __future__ import annotations

import random

from engine.config import DetectionConfig, MetricRule
from engine.guard import SeriesGuard, TransitionKind

DETECTION = DetectionConfig()
T0 = 1_700_000_000_000


def ramp(n: int, seed: int = 3) -> list[float]:
    rng = random.Random(seed)
    return [1000.0 + 5.0 * i + rng.gauss(0, 2.0) for i in range(n)]


def opened(guard: SeriesGuard, values: list[float], start: int = 0) -> list[int]:
    out = []
    for i, x in enumerate(values, start=start):
        t = guard.observe(T0 + i * 60_000, x)
        if t is not None and t.kind is TransitionKind.OPENED:
            out.append(i)
    return out


def rule(detector: str) -> MetricRule:
    # no relative ignore threshold: on a ramp from 1000 to 6000, 5 % of the level is 60 steps of the ramp
    return MetricRule.model_validate({"match": ".*", "detector": detector, "min_rel_deviation": 0.0})


def test_a_steady_ramp_opens_nothing() -> None:
    assert opened(SeriesGuard(rule("forecast"), DETECTION), ramp(1500)) == []


def test_a_ramp_that_stops_opens_within_20_samples_where_zscore_sees_nothing() -> None:
    values = ramp(1000)
    flat = [values[-1] + g for g in (random.Random(4).gauss(0, 2.0) for _ in range(40))]  # it stops dead
    forecast = SeriesGuard(rule("forecast"), DETECTION)
    zscore = SeriesGuard(rule("zscore"), DETECTION)
    assert opened(forecast, values) == []
    assert opened(zscore, values) == []
    got = opened(forecast, flat, start=1000)
    assert got
    assert got[0] < 1020
    assert opened(zscore, flat, start=1000) == []  # its level lags the ramp: a stop looks like catching up
