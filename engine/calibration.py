"""Calibration stages after any detector: raw scores in, a **normalised score** out.

The normalised score ``s`` means the same on every series and every detector: ``s >= 1`` is an anomaly at
the rule's sensitivity (1 = the opening threshold), larger is more anomalous, unbounded above. The largest of
three stages makes it, and the rule's ignore thresholds have the last word:

* :class:`Likelihood` — Numenta's anomaly likelihood (Ahmad et al., Neurocomputing 2017): the raw score's
  short moving average judged by its Gaussian tail against the mean and variance of the same averages over
  the series' long history. ``s = ln(tail) / ln(tail_open)``, where ``tail_open`` is the sensitivity's
  per-sample tail probability (:data:`TAIL_OPEN`): the same false-alarm rate whatever the detector, because
  each detector's raw scores are judged against their own distribution. (Numenta's "red filter", of a run
  of red samples only the first counts, is the guard's job here: one page per episode, see
  :mod:`engine.guard`; measured on NAB, the filter added nothing on top of it.)
* :class:`NewExtreme` — a value beyond everything the series has shown, by more than ``share`` of the range
  seen so far, and at least :data:`EXTREME_STEPS` typical sample-to-sample steps from its recent level,
  scores ``1 + (excess beyond the tolerance) / range`` (risk direction only; the rule's ``new_extreme``, on
  for the catch-all rule only).
* Overwhelming raw scores — the likelihood judges raw scores against their own history, so a history that
  holds a regime change (a flat series turning noisy) makes it deaf for a while; a raw score of at least
  :data:`RAW_OPEN` (60 sigma for the level/spread detector) opens on its own, scoring the ratio of its odds
  ``r / (1 - r)`` to those of ``RAW_OPEN``.
* Ignore thresholds — a deviation from the detector's level smaller than ``max(min_abs_deviation,
  min_rel_deviation · |level|)`` scores at most :data:`IGNORED_CAP`, below the opening threshold.

The state is plain numbers and short lists of floats (checkpoints hold no pickle): the long history is
kept as per-block sums and sums of squares, so it costs a few hundred bytes, not thousands of floats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import MappingProxyType

from engine.config import Direction, MetricRule, Sensitivity

__all__ = [
    "EXTREME_STEPS",
    "IGNORED_CAP",
    "RAW_OPEN",
    "TAIL_OPEN",
    "Calibrator",
    "Likelihood",
    "NewExtreme",
    "log_tail",
]

#: Sensitivity → per-sample tail probability of the likelihood stage that opens an anomaly (s = 1).
TAIL_OPEN: MappingProxyType[Sensitivity, float] = MappingProxyType(
    {Sensitivity.HIGH: 1e-4, Sensitivity.MEDIUM: 1e-5, Sensitivity.LOW: 1e-6}
)
#: Raw scores per moving average; averages per block; blocks of history the distribution is fitted over.
AVERAGE = 10
BLOCK = 100
BLOCKS = 30
#: Raw score that opens on its own, whatever the likelihood's history (the odds r / (1 - r) of the raw score
#: against those of RAW_OPEN make the score): a deviation of 60 sigma for the level/spread detector.
RAW_OPEN = 60.0 / (60.0 + 3.0)
#: Highest score of a deviation inside the rule's ignore thresholds.
IGNORED_CAP = 0.9
#: A new extreme opens only this many typical steps (mean |successive difference|) from the recent level;
#: half-lives, in samples, of that typical step and of the level.
EXTREME_STEPS = 6.0
STEP_HALF_LIFE = 300.0
LEVEL_HALF_LIFE = 30.0
_STEP_ALPHA = 1.0 - 0.5 ** (1.0 / STEP_HALF_LIFE)
_LEVEL_ALPHA = 1.0 - 0.5 ** (1.0 / LEVEL_HALF_LIFE)

_SQRT2 = math.sqrt(2.0)
_LN_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
#: Floors of the fitted distribution of averaged raw scores (Numenta's lower-bound check).
_MEAN_FLOOR = 0.03
_VAR_FLOOR = 0.0003


def log_tail(z: float) -> float:
    """ln P(Z >= z) of a standard normal; exact in the far tail too (never -inf), so scores never clip.

    >>> round(log_tail(0.0), 6) == round(math.log(0.5), 6)
    True
    >>> log_tail(50.0) > -1260.0 > log_tail(51.0)
    True
    """
    if z < 30.0:
        return math.log(0.5 * math.erfc(z / _SQRT2))
    # Mills ratio: P(Z >= z) ~ phi(z) / z * (1 - 1/z^2)
    return -0.5 * z * z - _LN_SQRT_2PI - math.log(z) + math.log1p(-1.0 / (z * z))


class Likelihood:
    """Numenta's anomaly likelihood over a raw score, with constant-size state.

    ``average`` raw scores make one moving average; the distribution of those averages is fitted every
    ``block`` samples over the last ``blocks`` blocks (so over ``block · blocks`` samples).
    """

    __slots__ = (
        "_average",
        "_block",
        "_blocks",
        "_ln_open",
        "block_n",
        "block_sq",
        "block_sum",
        "mean",
        "ns",
        "recent",
        "sqs",
        "sums",
        "var",
    )

    def __init__(self, *, tail_open: float, average: int = 10, block: int = 100, blocks: int = 30) -> None:
        if not 0.0 < tail_open < 0.5:
            raise ValueError(f"tail_open must be in (0, 0.5), got {tail_open!r}")
        self._ln_open = math.log(tail_open)
        self._average = average
        self._block = block
        self._blocks = blocks
        self.recent: list[float] = []
        self.sums: list[float] = []
        self.sqs: list[float] = []
        self.ns: list[int] = []
        self.block_sum = 0.0
        self.block_sq = 0.0
        self.block_n = 0
        self.mean = 0.0
        self.var = 0.0  # 0: not fitted yet

    def observe(self, raw: float, *, learn: bool = True, recent: Sequence[float] | None = None) -> float:
        """The normalised score of ``raw`` (the sample's raw score); ``learn`` adds it to the history.

        ``recent``: the raw scores before ``raw`` of *another* series judged against this one's history
        (a verification's canary against its baseline): its own moving average, not this series' tail."""
        if recent is not None and learn:
            raise ValueError("a series judged against this history is never learned")
        recent = self.recent if recent is None else recent
        window = recent[len(recent) - self._average + 1 :] if len(recent) >= self._average else recent
        avg = (sum(window) + raw) / (len(window) + 1)
        score = 0.0
        if self.var > 0.0:
            z = max((avg - self.mean) / math.sqrt(self.var), 0.0)
            score = log_tail(z) / self._ln_open
        if learn:
            recent = self.recent
            recent.append(raw)
            if len(recent) > self._average:
                del recent[0]
            self.block_sum += avg
            self.block_sq += avg * avg
            self.block_n += 1
            if self.block_n >= self._block:
                self._close_block()
        return score

    def _close_block(self) -> None:
        self.sums.append(self.block_sum)
        self.sqs.append(self.block_sq)
        self.ns.append(self.block_n)
        if len(self.ns) > self._blocks:
            del self.sums[0], self.sqs[0], self.ns[0]
        self.block_sum = self.block_sq = 0.0
        self.block_n = 0
        n = sum(self.ns)
        mean = sum(self.sums) / n
        var = max(sum(self.sqs) / n - mean * mean, 0.0)
        self.mean = max(mean, _MEAN_FLOOR)
        self.var = max(var, _VAR_FLOOR)


class NewExtreme:
    """A value beyond the series' earlier minimum or maximum by more than ``share`` of that range, and
    at least :data:`EXTREME_STEPS` typical steps from the recent level.

    The second condition keeps noise from opening: a Gaussian series sets a record now and then (about
    ln(n) of them), a hair beyond the range but a few sigma from its level; an incident's jump is many
    times the series' usual sample-to-sample change. The typical step is the running mean absolute
    difference of successive values (half-life :data:`STEP_HALF_LIFE` samples), the level a running mean
    (half-life :data:`LEVEL_HALF_LIFE`).
    """

    __slots__ = ("_share", "_sign", "high", "level", "low", "n", "previous", "step", "steps")

    def __init__(self, *, share: float, direction: Direction = Direction.BOTH) -> None:
        if share < 0:
            raise ValueError(f"share must be >= 0, got {share!r}")
        self._share = share
        self._sign = {Direction.HIGHER: 1, Direction.LOWER: -1, Direction.BOTH: 0}[Direction(direction)]
        self.n = 0
        self.low = 0.0
        self.high = 0.0
        self.level = 0.0
        self.previous = 0.0
        self.step = 0.0  # running mean |x - previous|
        self.steps = 0  # differences in ``step`` (0 in a checkpoint from before the step gate: gate off)

    def observe(self, x: float, *, learn: bool = True) -> float:
        """The normalised score of ``x`` (0 when it is no new extreme); ``learn`` widens the range."""
        score = 0.0
        if self.n and self._share > 0.0:
            span = self.high - self.low
            if span > 0.0:
                tolerance = self._share * span
                above = x - self.high - tolerance if self._sign >= 0 else -1.0
                below = self.low - x - tolerance if self._sign <= 0 else -1.0
                excess = max(above, below)
                if excess > 0.0 and (not self.steps or abs(x - self.level) >= EXTREME_STEPS * self.step):
                    score = 1.0 + excess / span
        if learn:
            if self.n == 0:
                self.low = self.high = self.level = x
            else:
                self.low = min(self.low, x)
                self.high = max(self.high, x)
                self.level += _LEVEL_ALPHA * (x - self.level)
                difference = abs(x - self.previous)
                self.steps += 1
                self.step = (
                    difference if self.steps == 1 else self.step + _STEP_ALPHA * (difference - self.step)
                )
            self.previous = x
            self.n += 1
        return score


_RAW_MAX = math.nextafter(1.0, 0.0)


def _odds(raw: float) -> float:
    raw = min(raw, _RAW_MAX)  # a raw score rounded to 1.0 (beyond 1e16 sigma) stays finite
    return raw / (1.0 - raw)


_ODDS_OPEN = _odds(RAW_OPEN)


class Calibrator:
    """The stages of one series, in order: likelihood, new extreme and overwhelming raw score (the largest
    wins), then the ignore thresholds."""

    __slots__ = ("extreme", "likelihood", "min_abs", "min_rel", "overwhelming")

    def __init__(self, rule: MetricRule, *, overwhelming: bool = True) -> None:
        self.likelihood = Likelihood(
            tail_open=TAIL_OPEN[rule.sensitivity], average=AVERAGE, block=BLOCK, blocks=BLOCKS
        )
        self.extreme = NewExtreme(share=rule.new_extreme, direction=rule.direction)
        self.min_abs = rule.min_abs_deviation
        self.min_rel = rule.min_rel_deviation
        #: the overwhelming-raw-score path, for detectors whose raw score is in sigmas (sigma_score)
        self.overwhelming = overwhelming

    def observe(
        self, x: float, raw: float, level: float, *, learn: bool = True, recent: Sequence[float] | None = None
    ) -> float:
        """Normalised score of value ``x`` whose detector gave ``raw`` and expected ``level``; ``recent``: see
        :meth:`Likelihood.observe`."""
        score = max(
            self.likelihood.observe(raw, learn=learn, recent=recent),
            self.extreme.observe(x, learn=learn),
            _odds(raw) / _ODDS_OPEN if self.overwhelming else 0.0,
        )
        if (self.min_abs or self.min_rel) and abs(x - level) < max(self.min_abs, self.min_rel * abs(level)):
            score = min(score, IGNORED_CAP)
        return score
