"""The contextual detector (``detector: contextual``) and the ensemble (``detector: ensemble``): what they see
that a level detector cannot, bounded hostile-proof state, and both selectable by configuration."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from engine.backtest import judge
from engine.config import DetectionConfig, MetricRule, load_config
from engine.contextual import ContextualTransitions
from engine.detectors import RobustZScore, make_detector
from engine.ensemble import Ensemble
from engine.errors import ConfigError


def rhythm(n: int, seed: int = 3) -> list[float]:
    """Eight times 10, then twice 30, again and again (a little noise)."""
    rng = random.Random(seed)
    return [(30.0 if i % 10 >= 8 else 10.0) + rng.gauss(0.0, 0.3) for i in range(n)]


def test_a_broken_rhythm_scores_higher_than_any_step_of_the_rhythm_though_its_value_is_usual() -> None:
    """A third 30 where the rhythm always went back to 10: to the level detector it is one more bump like
    every other; the contextual detector has never seen 30 after 30, 30."""
    values = rhythm(2500)
    contextual, level = ContextualTransitions(), RobustZScore()
    usual_contextual, usual_level = [], []
    for i, x in enumerate(values):
        if i >= 2000:
            usual_contextual.append(contextual.score_value(x))
            usual_level.append(level.score_value(x))
        contextual.learn_value(x)
        level.learn_value(x)
    third = 30.0
    assert contextual.score_value(third) > 1.1 * max(usual_contextual)
    assert level.score_value(third) < max(usual_level)


def test_a_constant_series_is_one_bin_and_never_unusual() -> None:
    d = ContextualTransitions()
    scores = []
    for _ in range(500):
        scores.append(d.score_value(7.0))
        d.learn_value(7.0)
    assert scores[0] == 0.0  # nothing learned yet
    assert all(0.0 < s < 0.1 for s in scores[2:])  # a step taken every time: ln((n + 1) / (n + 0.5))
    assert scores[2:] == sorted(scores[2:], reverse=True)
    assert scores[-1] < 1e-3
    assert len(d.table) == 2 * (1 + 1 + 1) * 2  # orders 0, 1, 2: one transition and one total each


def test_memory_is_bounded_by_the_capacity_and_old_counts_fade() -> None:
    d = ContextualTransitions(capacity=64, decay_every=500)
    rng = random.Random(4)
    for _ in range(5000):
        d.learn_value(rng.uniform(0.0, 100.0))
        assert len(d.table) <= 2 * 64
    counts = d.table[1::2]
    assert max(counts) < 500 + 1  # halved every 500 samples: no count outgrows them


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("table", [1.0], "pairs"),
        ("table", [5.0, -1.0], "bad"),
        ("table", [5.0, math.nan], "bad"),
        ("table", [1.5, 1.0], "bad"),
        ("table", [1e30, 1.0], "bad"),
        ("table", [1.0, 1.0] * 700, "pairs"),
        ("recent", [1.0, 2.0, 3.0], "bins"),
        ("recent", [99.0], "bins"),
        ("recent", [-1.0], "bins"),
        ("recent", [0.5], "bins"),
    ],
)
def test_hostile_checkpoint_state_is_refused(name: str, value: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        setattr(ContextualTransitions(), name, value)


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="order"):
        ContextualTransitions(order=9)
    with pytest.raises(ValueError, match="bin_sigmas"):
        ContextualTransitions(bin_sigmas=0.0)
    with pytest.raises(ValueError, match="members"):
        Ensemble(members=("zscore", "zscore"))
    with pytest.raises(ValueError, match="members"):
        Ensemble(members=("hst",))
    with pytest.raises(ValueError, match="combine"):
        Ensemble(combine="median")


def test_the_ensemble_scores_the_largest_of_its_members_and_learns_them_all() -> None:
    ensemble = Ensemble()
    zscore, contextual = RobustZScore(), ContextualTransitions()
    for i, x in enumerate([*rhythm(600), 30.0, 80.0, 10.0]):
        t = i * 60_000
        assert ensemble.score_value(x, t) == max(zscore.score_value(x), contextual.score_value(x))
        for d in (ensemble, zscore, contextual):
            d.learn_value(x, 1.0, t)
    assert ensemble.level_at() == zscore.level
    assert ensemble.expected_range() == zscore.expected_range()  # the members scoring in sigmas
    with pytest.raises(ValueError, match="finite"):
        ensemble.learn_value(math.inf)
    assert ensemble.n == zscore.n  # refused before any member learned


@pytest.mark.parametrize(("name", "kind"), [("contextual", ContextualTransitions), ("ensemble", Ensemble)])
def test_a_rule_selects_them_by_name(tmp_path: Path, name: str, kind: type) -> None:
    path = tmp_path / "vigil.yaml"
    path.write_text(f"rules:\n  - match: '.*'\n    detector: {name}\n")
    config = load_config(path)
    assert isinstance(make_detector(config.rule_for("anything"), config.detection), kind)


def test_a_misspelt_detector_is_a_config_error_naming_the_choices(tmp_path: Path) -> None:
    path = tmp_path / "vigil.yaml"
    path.write_text("rules:\n  - match: '.*'\n    detector: ensembel\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "rules.0.detector" in str(caught.value)
    assert "'contextual'" in str(caught.value)
    assert "'ensemble'" in str(caught.value)


@pytest.mark.parametrize("name", ["contextual", "ensemble", "seasonal"])
def test_backtest_with_the_detector_opens_on_a_jump_and_not_before(name: str) -> None:
    """Through the backtest's (the worker's) code path with the detector on the catch-all rule."""
    base = load_config(None)
    rule = MetricRule.model_validate({"match": ".*", "detector": name})
    config = base.model_copy(update={"rules": (rule,), "detection": DetectionConfig()})
    rng = random.Random(6)
    rows = []
    for i in range(1500):
        x = 50.0 + 5.0 * math.sin(i / 20.0) + rng.uniform(-1.5, 1.5) + (60.0 if i >= 1200 else 0.0)
        rows.append((str(i), 1_400_000_000_000 + 300_000 * i, x))
    result = judge(config, rows, "s.csv")
    assert all(0.0 <= s < 1.0 for s in result.scores)
    opened = [i for i, a in enumerate(result.alarms) if a]
    assert opened, "a jump of 60 must open an anomaly"
    assert 1200 <= opened[0] < 1220, opened
