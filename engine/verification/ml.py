"""The ML view of a verification: what each metric would look like without the deploy, by the 24/7 guard's
own detector.

Per metric, a :class:`~engine.guard.SeriesGuard` (the worker's factory: the detector of the metric's
``rules`` entry, its calibration stages and its learning policy) **learns the reference series** and
**scores the judged series without ever learning from it**:

* ``canary`` — the baseline's aggregate over the window so far: at each step the guard learns the
  baseline's value, then scores the canary's value of the same step (no look-ahead: both are of that step);
* ``before_after`` — the window before the deploy, learned whole before the first step is scored (it lies
  entirely before the deploy); ``load_test`` — the earlier run's window, likewise.

The score is the guard's normalised score (1 = the opening threshold of the sensitivity; the request's
sensitivity, direction and ignore thresholds replace the rule's, so the ML view and the sequential tests
judge the same thing). The likelihood stage averages the judged series' own last raw scores, so a shift
that lasts builds up as on the series itself. A step is scored once the guard has learned ``min_samples``
reference samples (a detector that has seen two values has no spread yet). The report per metric: steps
scored, the steps with a score >= 1 and their share, the highest score, the first step at >= 1, and the
detector's expected value and band (raw score < 0.5) at the last step, beside the canary's value there.

**Evidence only: the ML view never changes a verdict.** Its scores have no guarantee under repeated looks
(the calibration's tail probability is per sample, and its distribution is fitted only after 100 samples
of the reference), and on short windows the detector is still within the worker's warm-up. Letting it
fail a deploy would break the false-fail guarantee of the sequential tests; letting it turn a pass into
inconclusive would pause clean rollouts for a person at the rate it flags clean canaries (measured in
``tests/unit/test_verification_ml.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from engine.calibration import AVERAGE
from engine.config import DetectionConfig, MetricRule, Sensitivity
from engine.guard import SeriesGuard
from engine.verification.judge import MetricReport, MetricSpec, Verdict


@dataclass(frozen=True, slots=True)
class MLReport:
    """One metric's ML view. ``learning``: the guard learned fewer than ``detection.warmup`` reference
    samples (the worker would not alarm yet); scores are reported all the same."""

    detector: str
    trained: int
    learning: bool
    steps: int
    anomalous: int
    max_score: float
    first_anomalous_ms: int | None
    expected: float | None
    expected_low: float | None
    expected_high: float | None
    last_value: float | None

    @property
    def share(self) -> float | None:
        """Share of the scored steps at a normalised score >= 1."""
        return self.anomalous / self.steps if self.steps else None


def rule_for_view(rule: MetricRule, spec: MetricSpec, sensitivity: Sensitivity) -> MetricRule:
    """The metric's rule with the verification's direction, sensitivity and ignore thresholds."""
    return rule.model_copy(
        update={
            "direction": spec.direction,
            "sensitivity": sensitivity,
            "min_abs_deviation": spec.min_abs,
            "min_rel_deviation": spec.min_rel,
        }
    )


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


class MetricView:
    """One metric: a guard that learns the reference and scores the judged series."""

    __slots__ = (
        "anomalous",
        "detector",
        "first_ms",
        "guard",
        "last_ms",
        "last_value",
        "max_score",
        "recent",
        "steps",
    )

    def __init__(self, rule: MetricRule, detection: DetectionConfig) -> None:
        self.guard = SeriesGuard(rule, detection)
        self.detector = rule.detector if isinstance(rule.detector, str) else rule.detector.river
        self.steps = 0
        self.anomalous = 0
        self.max_score = 0.0
        self.first_ms: int | None = None
        self.last_ms: int | None = None
        self.last_value: float | None = None
        #: the judged series' own last raw scores: its moving average in the likelihood stage (a shift
        #: that lasts builds up as it would on the series itself, not diluted by the reference's tail)
        self.recent: list[float] = []

    def learn(self, ts_ms: int, value: float) -> None:
        """A reference sample (learned once per timestamp, in time order, as the worker learns)."""
        if self.guard.admit(ts_ms) is None:
            with contextlib.suppress(ValueError):  # beyond the detectors' finite range: not learned
                self.guard.observe(ts_ms, value)

    def score(self, ts_ms: int, value: float, min_trained: int) -> None:
        """A judged sample: scored, never learned; not scored before ``min_trained`` reference samples (a
        detector that has seen one or two values has no spread yet: anything would look extreme)."""
        if self.guard.detector.n < min_trained:
            return
        try:
            s, raw = self.guard.judge(value, ts_ms, self.recent)
        except ValueError:
            return
        self.recent = [*self.recent, raw][-(AVERAGE - 1) :]  # what the likelihood averages with the next
        self.steps += 1
        self.max_score = max(self.max_score, s)
        if s >= 1.0:
            self.anomalous += 1
            if self.first_ms is None:
                self.first_ms = ts_ms
        self.last_ms, self.last_value = ts_ms, value

    def report(self, warmup: int) -> MLReport:
        detector = self.guard.detector
        at = self.last_ms
        low, high = detector.expected_range(at) if detector.n else (math.inf, -math.inf)
        return MLReport(
            detector=self.detector,
            trained=detector.n,
            learning=detector.n < warmup,
            steps=self.steps,
            anomalous=self.anomalous,
            max_score=self.max_score,
            first_anomalous_ms=self.first_ms,
            expected=_finite(detector.level_at(at)) if detector.n else None,
            expected_low=_finite(low),
            expected_high=_finite(high),
            last_value=self.last_value,
        )


class MLViews:
    """Every metric's view; :meth:`annotate` puts their reports into a verdict's metric reports."""

    def __init__(
        self,
        specs: Iterable[MetricSpec],
        rules: Mapping[str, MetricRule],
        detection: DetectionConfig,
        sensitivity: Sensitivity,
        min_trained: int = 20,
    ) -> None:
        self.warmup = detection.warmup
        self.min_trained = min_trained
        self.views = {
            spec.name: MetricView(rule_for_view(rules[spec.name], spec, sensitivity), detection)
            for spec in specs
        }

    def learn(self, name: str, ts_ms: int, value: float | None) -> None:
        if value is not None:
            self.views[name].learn(ts_ms, value)

    def score(self, name: str, ts_ms: int, value: float | None) -> None:
        if value is not None:
            self.views[name].score(ts_ms, value, self.min_trained)

    def annotate(self, verdict: Verdict) -> Verdict:
        metrics = tuple(self._with_ml(m) for m in verdict.metrics)
        return dataclasses.replace(verdict, metrics=metrics)

    def _with_ml(self, report: MetricReport) -> MetricReport:
        view = self.views.get(report.name)
        return report if view is None else dataclasses.replace(report, ml=view.report(self.warmup))
