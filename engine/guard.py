"""The 24/7 guard of one series: state changes with hysteresis, not a flood of per-sample alarms.

One :class:`SeriesGuard` watches one (service, metric, instance). Each sample is scored **before** it is
learned; an anomaly **opens** after ``open_after`` consecutive samples scoring at least the sensitivity's
``open`` threshold and **resolves** after ``resolve_after`` consecutive samples scoring below the lower
``clear`` threshold. Scores between the two keep the current state, so a series hovering around one
threshold cannot flap.

Learning policy (why an incident does not become "the new normal" at once, yet a real level shift is
accepted in the end):

* while the series is normal every sample is learned with full weight — the detector itself clips a
  residual to a few sigma, so a single spike hardly moves the baseline;
* while an anomaly is open, or a streak towards opening is running, samples are learned with
  :data:`SUSPECT_WEIGHT` (a quarter of the normal weight), level, spread and tail fit alike: an incident is
  judged against the old baseline for a good while (a 20-sample incident barely moves it);
* a shift that persists keeps pulling the (clipped, down-weighted) level and inflating the spread, so in
  the end its samples score normal, the anomaly resolves and the new level is the baseline (measured: a
  step of 20 sigma is accepted after about 1.25 ``half_life``). The price: the spread stays inflated for a
  few half-lives afterwards, so the series is less sensitive right after accepting a shift. A stale
  marker (:meth:`SeriesGuard.end`) resolves an open anomaly but keeps the model: if the series comes
  back, its history is still the best prior.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from engine.config import DetectionConfig, MetricRule
from engine.detectors import THRESHOLDS, Detector, Thresholds, make_detector

__all__ = ["SUSPECT_WEIGHT", "SeriesGuard", "Transition", "TransitionKind"]

#: Learning weight of samples seen while an anomaly is open or about to open.
SUSPECT_WEIGHT = 0.25


class TransitionKind(StrEnum):
    OPENED = "opened"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change of one series, with its evidence.

    ``value`` and ``score`` belong to the sample that caused the change (``value`` is ``None`` and ``score``
    0 when a stale marker resolved the anomaly). ``peak_score`` is the highest score since the first
    anomalous sample. ``expected_low``/``expected_high`` is the band the detector considered normal at that
    moment (±inf on a side that is not a risk). ``window_start_ms`` is the first anomalous sample;
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
    """Open / resolve anomalies of one series. Picklable (it is part of the model bank's checkpoints)."""

    __slots__ = (
        "_is_open",
        "_last_anomalous_ms",
        "_peak",
        "_streak",
        "_window_start_ms",
        "detector",
        "open_after",
        "resolve_after",
        "thresholds",
        "warmup",
        "watermark",
    )

    def __init__(
        self, rule: MetricRule, detection: DetectionConfig, detector: Detector | None = None
    ) -> None:
        self.detector: Detector = detector if detector is not None else make_detector(rule, detection)
        self.thresholds: Thresholds = THRESHOLDS[rule.sensitivity]
        self.warmup = detection.warmup
        self.open_after = detection.open_after
        self.resolve_after = detection.resolve_after
        self._is_open = False
        # Closed: consecutive anomalous samples so far. Open: consecutive normal samples so far.
        self._streak = 0
        self._window_start_ms = 0
        self._last_anomalous_ms = 0
        self._peak = 0.0
        #: Timestamp of the newest point admitted (-1: none yet). Checkpointed with the model, so a point
        #: read again after a crash is recognised and not learned twice.
        self.watermark = -1

    def admit(self, ts_ms: int) -> str | None:
        """Whether a point at ``ts_ms`` is new: ``None`` (and the watermark moves to it) if it is, else why
        not — ``"duplicate"`` at the watermark, ``"out_of_order"`` before it.

        >>> from engine.config import DetectionConfig, MetricRule
        >>> g = SeriesGuard(MetricRule(match=".*"), DetectionConfig())
        >>> g.admit(1000), g.admit(1000), g.admit(999), g.admit(2000), g.watermark
        (None, 'duplicate', 'out_of_order', None, 2000)
        """
        if ts_ms > self.watermark:
            self.watermark = ts_ms
            return None
        return "duplicate" if ts_ms == self.watermark else "out_of_order"

    @property
    def is_open(self) -> bool:
        """Whether an anomaly is open on this series."""
        return self._is_open

    def observe(self, ts_ms: int, value: float) -> Transition | None:
        """Score ``value``, update the state, learn it. Returns the transition it caused, if any.

        Raises ``ValueError`` for NaN or infinite values (pass stale markers to :meth:`end`).
        """
        detector = self.detector
        score = detector.score_one(value)
        warm = detector.n >= self.warmup
        transition: Transition | None = None
        if self._is_open:
            if score >= self.thresholds.clear:
                self._streak = 0
                self._last_anomalous_ms = ts_ms
                self._peak = max(self._peak, score)
            else:
                self._streak += 1
                if self._streak >= self.resolve_after:
                    transition = self._transition(TransitionKind.RESOLVED, ts_ms, value, score)
                    self._is_open = False
                    self._streak = 0
        elif warm and score >= self.thresholds.open:
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
        else:
            self._streak = 0
        suspect = self._is_open or self._streak > 0
        detector.learn_one(value, SUSPECT_WEIGHT if suspect else 1.0)
        return transition

    def end(self, ts_ms: int) -> Transition | None:
        """The series went stale: resolve an open anomaly and forget any streak (the model is kept)."""
        transition = None
        if self._is_open:
            transition = self._transition(TransitionKind.RESOLVED, ts_ms, None, 0.0)
        self._is_open = False
        self._streak = 0
        return transition

    def _transition(self, kind: TransitionKind, ts_ms: int, value: float | None, score: float) -> Transition:
        # Called before the sample is learned: the band is the one the sample was judged against.
        low, high = self.detector.expected_range()
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
