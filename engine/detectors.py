"""Streaming detectors: score a value against what its series has shown so far, then learn it.

Every detector follows the same small protocol (River's ``score_one`` / ``learn_one`` habit, on one float):

* ``score_one(x)`` is computed **before** ``learn_one(x)`` and is a probability-like anomaly likelihood in
  [0, 1]: roughly the probability that a normal sample of this series is *less* extreme than ``x`` in the
  rule's risk direction. Scores are calibrated that way so that one sensitivity setting (see
  :data:`THRESHOLDS`) means the same per-sample false-alarm rate for every series and every detector.
* Deviations outside the risk direction score low; deviations smaller than the rule's ``min_abs_deviation``
  / ``min_rel_deviation`` never reach the opening threshold.
* NaN and infinities raise ``ValueError`` (stale markers are handled by the caller, not learned).
* State is plain Python floats and ints, so a detector pickles small and fast for checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from types import MappingProxyType
from typing import Protocol

from engine.config import DetectionConfig, Direction, MetricRule, Sensitivity

__all__ = [
    "THRESHOLDS",
    "Detector",
    "RobustZScore",
    "Thresholds",
    "make_detector",
]


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Score thresholds of one sensitivity, with hysteresis (``clear < open``).

    A sample is *anomalous* when its score is at least ``open``; while an anomaly is open a sample is
    *normal* only when its score is below ``clear``. Scores in between keep the current state.
    """

    open: float
    clear: float


#: Sensitivity → thresholds. Read ``open`` as "a normal sample scores this high once in 1 / (1 - open)
#: samples": 1 in 100 (high), 1 in 1,000 (medium), 1 in 10,000 (low). The guard further asks for
#: several anomalous samples in a row, so the alarm rate on pure noise is far lower still.
THRESHOLDS: MappingProxyType[Sensitivity, Thresholds] = MappingProxyType(
    {
        Sensitivity.HIGH: Thresholds(open=0.99, clear=0.95),
        Sensitivity.MEDIUM: Thresholds(open=0.999, clear=0.99),
        Sensitivity.LOW: Thresholds(open=0.9999, clear=0.999),
    }
)

_SQRT2 = math.sqrt(2.0)
#: sigma of a normal distribution per unit of its mean absolute deviation (sqrt(pi/2)).
_SIGMA_PER_MAD = math.sqrt(math.pi / 2.0)
#: Spread floor for series whose rule allows any deviation (min_abs = min_rel = 0): float noise on a
#: constant series must not look like an infinitely large z.
_FLOAT_NOISE_REL = 1e-9
_FLOAT_NOISE_ABS = 1e-12
#: Once warm, residuals are clipped to this many sigma before they are learned.
_HUBER_CLIP = 3.0
#: The fitted tail starts at this deviation (in sigma). One sample's log-excess counts at most
#: ``_TAIL_LOG_CAP`` (a deviation of u·e^cap): one incident's astronomic deviations must not flatten the
#: tail at once.
_TAIL_FROM = 2.0
_TAIL_LOG_CAP = 10.0
#: E[ln(d / u) | d > u] for normal noise at u = 2 (the same one- and two-sided): the prior tail index.
_NORMAL_HILL = 0.1621
#: Memory of the tail fit, in baseline half-lives: exceedances are rare, the fit needs more samples.
_TAIL_MEMORY = 8.0


class Detector(Protocol):
    """What the guard and the model bank need from a detector."""

    @property
    def n(self) -> int:
        """Observations learned so far."""
        ...

    def score_one(self, x: float) -> float:
        """Anomaly likelihood of ``x`` in [0, 1], given what was learned so far (does not learn ``x``)."""
        ...

    def learn_one(self, x: float, w: float = 1.0) -> None:
        """Learn ``x``; ``w`` in [0, 1] lets the caller learn a suspicious sample with reduced weight."""
        ...

    def expected_range(self) -> tuple[float, float]:
        """The band outside which a value scores as anomalous at the rule's sensitivity (event evidence).

        A side that is not a risk (e.g. the low side of a "higher is bad" rule) is unbounded (±inf).
        """
        ...

    def clone(self) -> Detector:
        """A fresh, untrained detector with the same parameters."""
        ...


def _check_finite(x: float) -> float:
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"detectors take finite values only, got {x!r} (stale markers end a series)")
    return x


class RobustZScore:
    """A robust, exponentially weighted z-score with a self-calibrated, direction-aware score.

    * **Level** — an exponentially weighted mean; **spread** — an exponentially weighted mean absolute
      deviation, turned into a sigma estimate (x sqrt(pi/2)). Both forget with ``half_life`` (in samples).
      The first samples are plain running averages (step ``max(alpha, 1/n)``), so the estimates are usable
      right after warm-up instead of being biased towards the first value.
    * **Robustness** — once warm, a residual enters both estimates clipped to ``±clip·sigma`` (Huber-style):
      one spike barely moves the baseline, while a shift that persists still pulls the level and inflates
      the spread step by step until it becomes the new normal.
    * **Floor** — the effective sigma is at least ``max(min_abs, min_rel·|level|) / z_open``, so a deviation
      smaller than the rule's ignore thresholds never reaches the opening score, and a flat series never
      alarms on float noise.
    * **Calibration** — the deviation ``d`` in the risk direction (``z``, ``-z`` or ``|z|``) is turned into
      a tail probability, and the score is ``1 - tail``. The tail is the larger of the normal tail and a
      peaks-over-threshold tail fitted to the series' own recent deviations (SPOT, Siffer et al., KDD 2017,
      with a power-law tail and Hill's estimator): ``rate · (d / u) ** (-1 / xi)``, where ``rate`` is how
      often ``d`` exceeded ``u`` lately and ``xi`` the mean of ``ln(d / u)`` over those exceedances. Both
      start at their values for normal noise; a heavy-tailed or bursty series raises its own bar instead of
      paging on its everyday excursions, and working in logarithms lets even a mostly-zero series with
      huge recurring bursts learn that they are its normal.

    River's ``stats.EWMean``/``EWVar`` compute the same running means, but take neither a per-sample
    weight nor a start-up schedule; the arithmetic is a few lines, and keeping it here keeps the state
    plain floats (checkpoint pickles are tiny and do not depend on River's compiled internals).

    >>> d = RobustZScore(direction=Direction.HIGHER, half_life=50, warmup=10)
    >>> for x in [10.0, 11.0, 9.0, 10.5, 9.5] * 4:
    ...     d.learn_one(x)
    >>> d.score_one(10.2) < 0.9 < 0.999 < d.score_one(20.0)
    True
    >>> d.score_one(0.0) < 0.01  # far below, but only "higher" is a risk
    True
    """

    __slots__ = (
        "_alpha",
        "_beta",
        "_clip",
        "_excess",
        "_level",
        "_mad",
        "_one_sided",
        "_rate",
        "_sign",
        "_z_open",
        "direction",
        "half_life",
        "min_abs_deviation",
        "min_rel_deviation",
        "n",
        "sensitivity",
        "warmup",
    )

    def __init__(
        self,
        *,
        direction: Direction = Direction.BOTH,
        sensitivity: Sensitivity = Sensitivity.MEDIUM,
        half_life: float = 120.0,
        warmup: int = 30,
        min_abs_deviation: float = 0.0,
        min_rel_deviation: float = 0.0,
        clip: float | None = None,
    ) -> None:
        if not half_life > 1.0:
            raise ValueError(f"half_life must be > 1 sample, got {half_life!r}")
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1, got {warmup!r}")
        if min_abs_deviation < 0 or min_rel_deviation < 0:
            raise ValueError("min_abs_deviation and min_rel_deviation must be >= 0")
        clip = _HUBER_CLIP if clip is None else clip
        if not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip!r}")
        self.direction = Direction(direction)
        self.sensitivity = Sensitivity(sensitivity)
        self.half_life = float(half_life)
        self.warmup = int(warmup)
        self.min_abs_deviation = float(min_abs_deviation)
        self.min_rel_deviation = float(min_rel_deviation)
        self._clip = float(clip)
        self._alpha = 1.0 - 0.5 ** (1.0 / self.half_life)
        self._beta = 1.0 - 0.5 ** (1.0 / (_TAIL_MEMORY * self.half_life))
        self._one_sided = self.direction is not Direction.BOTH
        self._sign = -1.0 if self.direction is Direction.LOWER else 1.0
        self._z_open = self._normal_quantile(1.0 - THRESHOLDS[self.sensitivity].open)
        self.n = 0
        self._level = 0.0
        self._mad = 0.0
        self._rate = self._normal_tail(_TAIL_FROM)
        self._excess = self._rate * _NORMAL_HILL

    def __repr__(self) -> str:
        return (
            f"RobustZScore(direction={self.direction.value}, sensitivity={self.sensitivity.value}, "
            f"half_life={self.half_life:g}, n={self.n}, level={self._level:g}, sigma={self._sigma():g}, "
            f"tail_rate={self._rate:.4f}, tail_index={self._tail_index():.3f})"
        )

    # -- the protocol -------------------------------------------------------------------------------------

    def score_one(self, x: float) -> float:
        x = _check_finite(x)
        if self.n == 0:
            return 0.0
        return 1.0 - self._tail(self._deviation(x))

    def learn_one(self, x: float, w: float = 1.0) -> None:
        x = _check_finite(x)
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {w!r}")
        self.n += 1
        if self.n == 1:
            self._level = x
            return
        step = max(self._alpha, 1.0 / self.n) * w
        r = x - self._level
        if self.n > self.warmup:
            sigma = self._sigma()
            d = self._sign * r / sigma if self._one_sided else abs(r) / sigma
            excess = min(math.log(d / _TAIL_FROM), _TAIL_LOG_CAP) if d > _TAIL_FROM else 0.0
            tail_step = self._beta * w
            self._rate += tail_step * ((1.0 if excess > 0.0 else 0.0) - self._rate)
            self._excess += tail_step * (excess - self._excess)
            limit = self._clip * sigma
            r = min(max(r, -limit), limit)
        self._level += step * r
        self._mad += step * (abs(r) - self._mad)

    def expected_range(self) -> tuple[float, float]:
        if self.n == 0:
            return (-math.inf, math.inf)
        target = 1.0 - THRESHOLDS[self.sensitivity].open
        d_open = self._normal_quantile(target)
        if self._rate > target:
            d_open = max(d_open, _TAIL_FROM * math.pow(self._rate / target, self._tail_index()))
        half_width = d_open * self._sigma()
        low = -math.inf if self.direction is Direction.HIGHER else self._level - half_width
        high = math.inf if self.direction is Direction.LOWER else self._level + half_width
        return (low, high)

    def clone(self) -> RobustZScore:
        return RobustZScore(
            direction=self.direction,
            sensitivity=self.sensitivity,
            half_life=self.half_life,
            warmup=self.warmup,
            min_abs_deviation=self.min_abs_deviation,
            min_rel_deviation=self.min_rel_deviation,
            clip=self._clip,
        )

    # -- internals ----------------------------------------------------------------------------------------

    @property
    def level(self) -> float:
        """The current baseline level (exponentially weighted, robust)."""
        return self._level

    def _sigma(self) -> float:
        """Effective sigma: the robust spread estimate, floored by the rule's ignore thresholds."""
        scale = abs(self._level)
        tolerance = max(self.min_abs_deviation, self.min_rel_deviation * scale)
        return max(
            _SIGMA_PER_MAD * self._mad,
            tolerance / self._z_open,
            _FLOAT_NOISE_REL * scale + _FLOAT_NOISE_ABS,
        )

    def _deviation(self, x: float) -> float:
        """Deviation from the level in sigmas, positive in the risk direction (``|z|`` for "both")."""
        z = (x - self._level) / self._sigma()
        return self._sign * z if self._one_sided else abs(z)

    def _tail(self, d: float) -> float:
        """Probability that a normal sample deviates at least ``d`` in the risk direction."""
        normal = self._normal_tail(d)
        if d <= _TAIL_FROM:
            return max(normal, self._rate)
        return max(normal, self._rate * math.pow(d / _TAIL_FROM, -1.0 / self._tail_index()))

    def _tail_index(self) -> float:
        """Hill's estimate xi of the tail index (larger = heavier tail)."""
        return max(self._excess / self._rate, _NORMAL_HILL) if self._rate > 1e-12 else _NORMAL_HILL

    def _normal_tail(self, d: float) -> float:
        tail = math.erfc(d / _SQRT2)
        return 0.5 * tail if self._one_sided else tail

    def _normal_quantile(self, tail: float) -> float:
        """The deviation whose normal tail probability is ``tail`` (inverse of :meth:`_normal_tail`)."""
        return NormalDist().inv_cdf(1.0 - (tail if self._one_sided else tail / 2.0))


def make_detector(rule: MetricRule, detection: DetectionConfig) -> Detector:
    """The detector a metric rule asks for, configured from the rule and the detection settings."""
    if rule.detector == "zscore":
        return RobustZScore(
            direction=rule.direction,
            sensitivity=rule.sensitivity,
            half_life=detection.half_life,
            warmup=detection.warmup,
            min_abs_deviation=rule.min_abs_deviation,
            min_rel_deviation=rule.min_rel_deviation,
        )
    raise ValueError(f"unknown detector {rule.detector!r}")  # pragma: no cover - Literal guards it
