"""The 24/7 guard of one series: a page per episode, not a flood of per-sample alarms.

One :class:`SeriesGuard` watches one (service, metric, instance). Each sample is scored **before** it is
learned: the detector's raw score goes through the calibration stages (:mod:`engine.calibration`) to the
normalised score ``s`` (1 = the opening threshold of the rule's sensitivity).

* **Learning** — for the first ``warmup`` samples the series is ``learning``: nothing opens and the score
  reported is 0.
* **Opening** — an anomaly opens after ``open_after`` consecutive samples with ``s >= 1``.
* **One page per episode** — while an anomaly is open nothing else opens, and the score reported for the
  series (:attr:`SeriesGuard.score`, the backtest's ``anomaly_score``) is damped to at most
  :data:`EPISODE_CAP`: a person is paged once, and NAB charges every alarm row. An anomaly **resolves** once
  at least ``rest_after_alarm`` samples have passed since it opened and ``resolve_after`` consecutive samples
  scored below :data:`CLEAR` (hysteresis: a series hovering around the threshold cannot flap).

Learning policy: every sample is learned, those of an open anomaly (or of a streak towards one) with
``suspect_weight``: a level shift that persists is followed by the detector's level and stops scoring high,
so the anomaly resolves and the new level is the baseline. A stale marker (:meth:`SeriesGuard.end`)
resolves an open anomaly but keeps the model.

**Since when** — :attr:`SeriesGuard.since_ms` is the metric time of the sample with which the series
entered its current state: its first point (learning, or normal with an inherited model), the sample that
completed the warm-up, the one that opened an anomaly, the one (or the stale marker) that resolved it.
It is checkpointed with the rest; a guard restored from a checkpoint written before it existed holds
``None`` (not known) until its next change of state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from engine.calibration import Calibrator
from engine.config import DetectionConfig, MetricRule
from engine.detectors import Detector, make_detector

__all__ = ["CLEAR", "EPISODE_CAP", "SeriesGuard", "SeriesState", "Transition", "TransitionKind"]

#: Normalised score below which a sample counts as normal again (towards resolving).
CLEAR = 0.5
#: While an anomaly is open the reported score is ``min(s * EPISODE_DAMP, EPISODE_CAP)``.
EPISODE_DAMP = 0.25
EPISODE_CAP = 0.25


class SeriesState(StrEnum):
    LEARNING = "learning"
    NORMAL = "normal"
    ANOMALOUS = "anomalous"


class TransitionKind(StrEnum):
    OPENED = "opened"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change of one series, with its evidence.

    ``value`` and ``score`` belong to the sample that caused the change (``value`` is ``None`` and ``score``
    0 when a stale marker resolved the anomaly); scores are normalised (1 = the opening threshold).
    ``peak_score`` is the highest score since the first anomalous sample. ``expected_low``/``expected_high``
    is the band where the detector's raw score stays below 0.5 at that moment (±inf on a side that is not a
    risk). ``window_start_ms`` is the first anomalous sample;
    ``window_end_ms`` the last one (for ``opened``: the current sample).
    """

    kind: TransitionKind
    ts_ms: int
    value: float | None
    score: float
    peak_score: float
    expected_low: float
    expected_high: float
    window_start_ms: int
    window_end_ms: int


class SeriesGuard:
    """Open / resolve anomalies of one series. Its state is plain data (in the model bank's checkpoints)."""

    __slots__ = (
        "_is_open",
        "_last_anomalous_ms",
        "_peak",
        "_since_open",
        "_streak",
        "_window_start_ms",
        "calibrator",
        "detector",
        "last_score",
        "open_after",
        "resolve_after",
        "rest_after_alarm",
        "score",
        "since_ms",
        "suspect_weight",
        "warmup",
        "watermark",
    )

    def __init__(
        self, rule: MetricRule, detection: DetectionConfig, detector: Detector | None = None
    ) -> None:
        self.detector: Detector = detector if detector is not None else make_detector(rule, detection)
        self.calibrator = Calibrator(rule, overwhelming=self.detector.sigma_score)
        self.warmup = detection.warmup
        self.open_after = detection.open_after
        self.resolve_after = detection.resolve_after
        self.rest_after_alarm = detection.rest_after_alarm
        self.suspect_weight = detection.suspect_weight
        self._is_open = False
        # Closed: consecutive anomalous samples so far. Open: consecutive normal samples so far.
        self._streak = 0
        self._since_open = 0
        self._window_start_ms = 0
        self._last_anomalous_ms = 0
        self._peak = 0.0
        #: The score reported for the latest sample: normalised, damped while an anomaly is open.
        self.score = 0.0
        #: The normalised score of the latest sample learned, never damped (1 = the opening threshold): the
        #: series' status and ``vigil_anomaly_score``, where one alerting rule must fit every series.
        self.last_score = 0.0
        #: Timestamp of the newest point admitted (-1: none yet). Checkpointed with the model, so a point
        #: read again after a crash is recognised and not learned twice.
        self.watermark = -1
        #: Metric time of the sample with which the current state began (``None``: not known yet).
        self.since_ms: int | None = None

    def admit(self, ts_ms: int) -> str | None:
        """Whether a point at ``ts_ms`` is new: ``None`` (and the watermark moves to it) if it is, else why
        not — ``"duplicate"`` at the watermark, ``"out_of_order"`` before it. The first point admitted
        starts the series' first state (:attr:`since_ms`).

        >>> from engine.config import DetectionConfig, MetricRule
        >>> g = SeriesGuard(MetricRule(match=".*"), DetectionConfig())
        >>> g.admit(1000), g.admit(1000), g.admit(999), g.admit(2000), g.watermark, g.since_ms
        (None, 'duplicate', 'out_of_order', None, 2000, 1000)
        """
        if ts_ms > self.watermark:
            if self.watermark < 0:  # its first point (a restored guard has a watermark)
                self.since_ms = ts_ms
            self.watermark = ts_ms
            return None
        return "duplicate" if ts_ms == self.watermark else "out_of_order"

    @property
    def is_open(self) -> bool:
        """Whether an anomaly is open on this series."""
        return self._is_open

    @property
    def state(self) -> SeriesState:
        if self.detector.n < self.warmup:
            return SeriesState.LEARNING
        return SeriesState.ANOMALOUS if self._is_open else SeriesState.NORMAL

    def peek(self, value: float, ts_ms: int | None = None) -> float:
        """The score ``value`` (at ``ts_ms``) would be reported with now, without learning it or changing
        any state (a point whose timestamp does not advance is judged, never learned)."""
        return self._reported(self._normalised(value, ts_ms, learn=False))

    def judge(self, value: float, ts_ms: int | None, recent: Sequence[float]) -> tuple[float, float]:
        """(normalised score, raw score) of ``value`` of *another* series judged against this one, whose
        raw scores before it were ``recent``: never learned, no state changed, undamped and also while
        learning. What a verification's ML view reads (:mod:`engine.verification.ml`) of its canary."""
        detector = self.detector
        raw = detector.score_value(value, ts_ms)
        level = detector.level_at(ts_ms)
        return self.calibrator.observe(value, raw, level, learn=False, recent=recent), raw

    def observe(self, ts_ms: int, value: float) -> Transition | None:
        """Score ``value``, update the state, learn it. Returns the transition it caused, if any.

        Raises ``ValueError`` for NaN or infinite values (pass stale markers to :meth:`end`).
        """
        score = self._normalised(value, ts_ms, learn=True)
        self.last_score = score
        warm = self.detector.n >= self.warmup
        transition: Transition | None = None
        if self._is_open:
            self._since_open += 1
            if score >= CLEAR:
                self._streak = 0
                self._last_anomalous_ms = ts_ms
                self._peak = max(self._peak, score)
            else:
                self._streak += 1
                if self._streak >= self.resolve_after and self._since_open >= self.rest_after_alarm:
                    transition = self._transition(TransitionKind.RESOLVED, ts_ms, value, score)
                    self._is_open = False
                    self._streak = 0
        elif warm and score >= 1.0:
            if self._streak == 0:
                self._window_start_ms = ts_ms
                self._peak = score
            self._streak += 1
            self._last_anomalous_ms = ts_ms
            self._peak = max(self._peak, score)
            if self._streak >= self.open_after:
                transition = self._transition(TransitionKind.OPENED, ts_ms, value, score)
                self._is_open = True
                self._streak = 0
                self._since_open = 0
                self.score = score
        else:
            self._streak = 0
        if transition is None or transition.kind is TransitionKind.RESOLVED:
            self.score = self._reported(score) if warm else 0.0
        suspect = self._is_open or self._streak > 0
        self.detector.learn_value(value, self.suspect_weight if suspect else 1.0, ts_ms)
        if transition is not None or (not warm and self.detector.n >= self.warmup):
            self.since_ms = ts_ms  # opened, resolved, or this sample completed the warm-up
        return transition

    def end(self, ts_ms: int) -> Transition | None:
        """The series went stale: resolve an open anomaly and forget any streak (the model is kept)."""
        transition = None
        if self._is_open:
            transition = self._transition(TransitionKind.RESOLVED, ts_ms, None, 0.0)
            self.since_ms = ts_ms
        self._is_open = False
        self._streak = 0
        return transition

    def _normalised(self, value: float, ts_ms: int | None, *, learn: bool) -> float:
        detector = self.detector
        raw = detector.score_value(value, ts_ms)
        return self.calibrator.observe(value, raw, detector.level_at(ts_ms), learn=learn)

    def _reported(self, score: float) -> float:
        if self.detector.n < self.warmup:
            return 0.0
        return min(score * EPISODE_DAMP, EPISODE_CAP) if self._is_open else score

    def _transition(self, kind: TransitionKind, ts_ms: int, value: float | None, score: float) -> Transition:
        # Called before the sample is learned: the band is the one the sample was judged against.
        low, high = self.detector.expected_range(ts_ms)
        return Transition(
            kind=kind,
            ts_ms=ts_ms,
            value=value,
            score=score,
            peak_score=self._peak,
            expected_low=low,
            expected_high=high,
            window_start_ms=self._window_start_ms,
            window_end_ms=ts_ms if kind is TransitionKind.OPENED else self._last_anomalous_ms,
        )
