"""The HalfSpaceTrees detector (``detector: hst``): seeded, plain state, no band, through the stages."""

from __future__ import annotations

import random

import orjson
import pytest

from engine import plain
from engine.config import DetectionConfig, MetricRule
from engine.detectors import HalfSpaceTreesWindow, make_detector
from engine.events import anomaly_event
from engine.guard import SeriesGuard, Transition, TransitionKind

T0 = 1_700_000_000_000


def noisy(n: int, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [100.0 + rng.gauss(0, 3) for _ in range(n)]


def scores(d: HalfSpaceTreesWindow, values: list[float]) -> list[float]:
    out = []
    for x in values:
        out.append(d.score_value(x))
        d.learn_value(x)
    return out


def test_the_seed_comes_from_config_and_decides_the_trees() -> None:
    rule = MetricRule(match=".*", detector="hst")
    a = make_detector(rule, DetectionConfig(seed=7))
    b = make_detector(rule, DetectionConfig(seed=7))
    c = make_detector(rule, DetectionConfig(seed=8))
    values = noisy(800)
    assert isinstance(a, HalfSpaceTreesWindow)
    assert scores(a, values) == scores(b, values)  # no seed from a series' name: same input, same scores
    assert scores(c, values) != scores(make_detector(rule, DetectionConfig(seed=7)), values)


def test_a_checkpoint_holds_plain_numbers_and_rebuilds_the_same_trees() -> None:
    d = HalfSpaceTreesWindow(seed=3)
    scores(d, noisy(700))
    doc = orjson.dumps(plain.dump(d))
    assert b"\x80" not in doc  # JSON, no pickle
    assert len(doc) < 20_000  # the budget per series
    copy = HalfSpaceTreesWindow(seed=99)  # the seed travels in the checkpoint
    plain.apply(copy, orjson.loads(doc))
    rest = [*noisy(600, seed=2), 400.0, 100.0, -50.0]
    assert scores(copy, rest) == scores(d, rest)


def test_masses_of_another_shape_are_refused() -> None:
    d = HalfSpaceTreesWindow()
    with pytest.raises(ValueError, match="tree masses"):
        d.masses = [1, 2, 3]


def opened_at(rule: MetricRule, values: list[float]) -> list[tuple[int, Transition]]:
    guard = SeriesGuard(rule, DetectionConfig())
    out = []
    for i, x in enumerate(values):
        t = guard.observe(T0 + i * 60_000, x)
        if t is not None and t.kind is TransitionKind.OPENED:
            out.append((i, t))
    return out


def test_hst_alone_is_weak_on_a_shift_the_new_extreme_stage_opens_it_and_the_event_has_no_band() -> None:
    """Measured, kept as a fact: River's score saturates near 0.97 while noise spans ~0.7-0.86, so the
    likelihood of a 10-sigma shift stays at ~0.37 of the opening threshold; the catch-all rule's new-extreme
    stage opens it on the first shifted sample. Gaussian noise alone opens nothing in 1,000 samples."""
    values = [*noisy(1000), *(v + 30.0 for v in noisy(40, seed=6))]
    alone = MetricRule(match=".*", detector="hst")
    assert SeriesGuard(alone, DetectionConfig()).calibrator.overwhelming is False  # raw is not in sigmas
    assert opened_at(alone, values) == []
    catch_all = MetricRule(match=".*", detector="hst", new_extreme=0.02)
    opened = opened_at(catch_all, values)
    assert [i for i, _ in opened] == [1000]
    event = anomaly_event("s", "m", "i", catch_all, opened[0][1])
    assert event["data"]["expected"] is None
    assert orjson.loads(orjson.dumps(event))["data"]["expected"] is None
