"""The ML view of a verification: the guard's detector trained on the reference, scoring the judged series
without learning it, reported per metric and never part of the verdict."""

from __future__ import annotations

import datetime
import random
from typing import Any

import pytest

from connectors.verifier import Fetched, _Simple, ml_views, training_window
from engine.calibration import Likelihood
from engine.config import Sensitivity, VigilConfig
from engine.verification import Judge, MetricSpec, Outcome
from engine.verification.document import verdict_document
from engine.verification.ml import MLViews
from engine.verification.request import parse_request, plan
from tests.unit.test_verification import ERRORS, LATENCY, RATE, STEP_MS, T0, step
from vigil.verify import table

SPECS = [LATENCY, ERRORS, RATE]
CONFIG = VigilConfig.model_validate({"poller": {"sources": [{"name": "main", "url": "http://127.0.0.1:1"}]}})


def views_after(seed: int, steps: int = 120, **shape: Any) -> MLViews:
    rng = random.Random(seed)
    views = MLViews(
        SPECS, {s.name: CONFIG.rule_for(s.name) for s in SPECS}, CONFIG.detection, Sensitivity.MEDIUM
    )
    for i in range(steps):
        seen = step(rng, i, **shape)
        for s in SPECS:
            views.learn(s.name, T0 + i * STEP_MS, seen[s.name].baseline)
            views.score(s.name, T0 + i * STEP_MS, seen[s.name].canary)
    return views


def test_a_canary_far_from_the_baseline_scores_at_every_step_and_an_equal_one_at_none() -> None:
    shifted = views_after(1, traffic=0.7).views[RATE.name].report(200)
    assert shifted.steps == 120 - 19  # scored once 20 baseline samples are learned
    # the likelihood stage's doing: the new-extreme rule stays out, the canary being within a few typical
    # steps (successive differences of this noisy load) of the baseline's level
    assert shifted.anomalous / shifted.steps > 0.15
    assert shifted.max_score >= 1
    assert shifted.first_anomalous_ms is not None
    # what it would look like without the deploy: the baseline's level, well above the canary's value
    assert shifted.expected is not None
    assert shifted.expected_low is not None
    assert shifted.last_value is not None
    assert shifted.expected_low < shifted.expected
    assert shifted.last_value < 0.8 * shifted.expected
    clean = [views_after(seed).views[RATE.name].report(200) for seed in range(10)]
    assert sum(r.anomalous for r in clean) == 0, [r.max_score for r in clean]
    assert all(r.expected_low is not None and r.expected_low < r.expected_high for r in clean)  # type: ignore[operator]


def test_the_judged_series_is_never_learned() -> None:
    views = views_after(2, steps=60, latency=3.0)
    view = views.views[LATENCY.name]
    before = view.report(200)
    assert before.trained == 60  # the baseline's samples only
    for _ in range(5):
        views.score(LATENCY.name, T0 + 61 * STEP_MS, 10.0)
    after = view.report(200)
    assert after.trained == 60
    assert after.expected_high == before.expected_high  # scoring moved nothing
    assert after.steps == before.steps + 5
    assert after.learning  # 60 < the worker's warm-up of 200


def fetched_for(pl: Any, steps: int, **shape: Any) -> Fetched:
    """A fetched window as the verifier holds it, from the generator (aggregates only)."""
    rng = random.Random(5)
    out = Fetched()
    for i in range(steps):
        seen = step(rng, i, **shape)
        for m in pl.metrics:
            one = seen[m.spec.name]
            values = out.values.setdefault(m.spec.name, {})
            t = T0 + i * STEP_MS
            for role, v in (("baseline", one.baseline), ("canary", one.canary)):
                if v is not None:
                    values.setdefault((role, "query"), {})[t] = v
            if one.baseline_counts and one.canary_counts:
                for role, c in (("baseline", one.baseline_counts), ("canary", one.canary_counts)):
                    values.setdefault((role, "numerator"), {})[t] = c.events
                    values.setdefault((role, "denominator"), {})[t] = c.traffic
    return out


def canary_plan() -> Any:
    metrics = [
        {"name": LATENCY.name, "query": "q{ {{selector}} }", "direction": "higher"},
        {
            "name": ERRORS.name,
            "query": "e{ {{selector}} }",
            "numerator": "e{ {{selector}} }",
            "denominator": "r",
        },
        {"name": RATE.name, "query": "r{ {{selector}} }", "type": "throughput"},
    ]
    request = parse_request(
        {
            "service": "a",
            "baseline": 'v="1"',
            "canary": 'v="2"',
            "metrics": metrics,
            "start": "2026-12-02T10:00:00Z",
            "end": "2026-12-02T10:30:00Z",
            "fail_fast": False,
        }
    )
    return plan(request, CONFIG)


def test_the_ml_view_is_evidence_only_and_in_the_document_and_table() -> None:
    pl = canary_plan()
    for shape, outcome in (({}, Outcome.PASS), ({"traffic": 0.7}, Outcome.FAIL)):
        data = fetched_for(pl, 121, **shape)
        judged = _Simple(pl, ml_views(CONFIG, pl))
        bare = Judge([m.spec for m in pl.metrics], pl.settings)
        from connectors.verifier import observations

        for i in range(121):
            judged.look(T0 + i * STEP_MS, data)
            bare.look(T0 + i * STEP_MS, observations(pl, data, T0 + i * STEP_MS))
        verdict, plain = judged.verdict(), bare.verdict()
        assert verdict.outcome is plain.outcome is outcome
        assert verdict.reason == plain.reason
        assert [(m.name, m.result, m.e_value) for m in verdict.metrics] == [
            (m.name, m.result, m.e_value) for m in plain.metrics
        ]
        doc = {m["name"]: m["ml"] for m in verdict_document(verdict)["metrics"]}
        assert doc[RATE.name]["detector"] == "zscore"
        assert doc[RATE.name]["trained"] == 121
        assert (doc[RATE.name]["anomalous"] > 0) is bool(shape)
        assert "ML >=1" in table(verdict).splitlines()[0]


def test_steps_without_canary_traffic_are_not_scored() -> None:
    pl = canary_plan()
    data = fetched_for(pl, 121, traffic=0.0)
    judged = _Simple(pl, ml_views(CONFIG, pl))
    for i in range(121):
        judged.look(T0 + i * STEP_MS, data)
    verdict = judged.verdict()
    assert verdict.outcome is Outcome.INCONCLUSIVE
    rate = next(m for m in verdict.metrics if m.name == RATE.name)
    assert rate.ml is not None
    assert rate.ml.steps == 0  # throughput 0 is no evidence, for the ML view either
    assert rate.ml.trained == 121  # but the baseline was learned


def test_the_rule_of_the_metric_picks_the_detector_and_the_request_its_direction() -> None:
    config = CONFIG.model_copy(
        update={
            "rules": (
                *VigilConfig.model_validate({"rules": [{"match": "q.*", "detector": "forecast"}]}).rules,
            )
        }
    )
    spec = MetricSpec("q_latency", LATENCY.direction, LATENCY.type)
    views = MLViews([spec], {spec.name: config.rule_for(spec.name)}, config.detection, Sensitivity.HIGH)
    view = views.views[spec.name]
    assert view.detector == "forecast"
    for i in range(40):
        view.learn(T0 + i * STEP_MS, 1.0 + 0.01 * (i % 3))
    low, high = view.guard.detector.expected_range()
    assert low == float("-inf") < high  # "higher" from the request: only the high side is a risk


def test_before_after_and_load_test_learn_the_window_before() -> None:
    base = {"service": "a", "selector": 'job="a"', "pack": ["http"], "end": "2026-12-02T11:00:00Z"}
    before = plan(
        parse_request(base | {"type": "before_after", "deployed_at": "2026-12-02T10:30:00Z"}), CONFIG
    )
    window = training_window(before)
    assert window is not None
    at = datetime.datetime(2026, 12, 2, 10, 0, tzinfo=datetime.UTC).timestamp() * 1000
    assert (window.start_ms, window.last_ms) == (at, at + 30 * 60_000)  # the 30 minutes before the deploy
    load = parse_request(
        base
        | {"type": "load_test", "start": "2026-12-02T10:30:00Z", "baseline_start": "2026-12-02T08:00:00Z"}
    )
    window = training_window(plan(load, CONFIG))
    assert window is not None
    at = datetime.datetime(2026, 12, 2, 8, 0, tzinfo=datetime.UTC).timestamp() * 1000
    assert (window.start_ms, window.last_ms) == (at, at + 30 * 60_000)  # the earlier run


def test_a_lasting_shift_builds_up_in_the_canary_s_own_moving_average() -> None:
    """+60 % latency is ~5 sigma of the baseline's spread: no single step is overwhelming, but once the
    likelihood is fitted (100 baseline samples) the canary's own average of raw scores stands out."""
    for seed in range(5):
        shifted = views_after(seed, latency=1.6).views[LATENCY.name].report(200)
        clean = views_after(seed).views[LATENCY.name].report(200)
        assert shifted.anomalous > 10 > clean.anomalous == 0, (seed, shifted, clean)
        assert shifted.first_anomalous_ms is not None
        assert shifted.first_anomalous_ms >= T0 + 99 * STEP_MS  # not before the likelihood is fitted


def test_a_judged_series_is_never_learned_into_the_likelihood() -> None:
    likelihood = Likelihood(tail_open=1e-5)
    with pytest.raises(ValueError, match="never learned"):
        likelihood.observe(0.5, learn=True, recent=[0.1])
    assert likelihood.observe(0.5, learn=False, recent=[0.9] * 20) == 0.0  # not fitted yet
    assert likelihood.recent == []
