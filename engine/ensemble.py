"""The ensemble detector (``detector: ensemble``): several built-in detectors judge each sample, one raw score
comes out."""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

from river import base

from engine.config import Direction
from engine.contextual import ContextualTransitions
from engine.detectors import Detector, HoltForecast, RobustZScore, SeasonalProfile

__all__ = ["MEMBERS", "Ensemble"]

#: The members an ensemble may hold, by the name a rule gives them.
MEMBERS = ("zscore", "seasonal", "forecast", "contextual")
_COMBINE = ("max", "mean")


class Ensemble(base.AnomalyDetector):
    """Several detectors over the same samples; the raw score is the ``combine`` (max or mean) of theirs.

    The default, ``max`` of the level/spread detector (``zscore``) and the contextual one: a sample is as
    unusual as the member that finds it most unusual — a value far from the level, or a step the series
    never took from where it was. The members' raw scores are on one scale: each is ``d / (d + 3)`` of a
    deviation ``d`` (in sigmas for the level, seasonal and forecast detectors, in nats of surprisal for the
    contextual one), so 3 sigma and a 1-in-20 step both score 0.5. Measured on NAB's dev subset (catch-all
    rule, members and combination chosen on half A): max(zscore, contextual) 74.0 on half A (zscore alone
    73.3), max(zscore, seasonal, contextual) 70.4, the mean of either lower; on half B 56.9 (zscore 60.7).

    Every sample is learned by every member, with the same weight. The level (the reference of relative
    ignore thresholds) is the seasonal member's when there is one (the most specific expectation), else
    the first member's. With ``max`` the band is the intersection of the bands of the members that score
    in sigmas (where they all stay below 0.5; a contextual member may still score higher inside it);
    with ``mean``, or no such member, there is no band (``expected: null``).

    Plain state: each member's own (nested objects), no pickle.

    >>> d = Ensemble()
    >>> for i in range(400):
    ...     d.learn_one({"x": 10.0 + (i % 5), "t": i * 60_000})
    >>> t = 400 * 60_000  # after 10 11 12 13 14 comes 10: 12 is a fair value, but not a step ever taken
    >>> d.score_one({"x": 10.0, "t": t}) < 0.4 < 0.5 < d.score_one({"x": 12.0, "t": t})
    True
    """

    def __init__(
        self,
        direction: Direction = Direction.BOTH,
        members: tuple[str, ...] = ("zscore", "contextual"),
        combine: str = "max",
        half_life: float = 30.0,
        spread_half_life: float = 300.0,
    ) -> None:
        members = tuple(members)
        if not members or len(set(members)) != len(members) or not set(members) <= set(MEMBERS):
            raise ValueError(f"ensemble members must be distinct names among {MEMBERS}, got {members!r}")
        if combine not in _COMBINE:
            raise ValueError(f"combine must be one of {_COMBINE}, got {combine!r}")
        self.direction = Direction(direction)
        self.members = members
        self.combine = combine
        self.half_life = float(half_life)
        self.spread_half_life = float(spread_half_life)
        kinds: dict[str, type[RobustZScore | SeasonalProfile | ContextualTransitions]] = {
            "zscore": RobustZScore,
            "seasonal": SeasonalProfile,
            "forecast": HoltForecast,
            "contextual": ContextualTransitions,
        }
        built: list[Detector] = [
            kinds[name](direction=direction, half_life=half_life, spread_half_life=spread_half_life)
            for name in members
        ]
        # One attribute per member (plain state dumps nested objects held in attributes, not in lists).
        for i, member in enumerate(built):
            setattr(self, f"_member{i}", member)
        self._members = tuple(built)  # a tuple: not dumped twice, and a checkpoint cannot replace it
        level = members.index("seasonal") if "seasonal" in members else 0
        self._level_member = (self._members[level],)  # a tuple: not dumped
        self._banded = tuple(m for m in built if m.sigma_score)
        #: with max, a raw score of RAW_OPEN (60 sigma) can only come from a member scoring in sigmas (the
        #: contextual one stays below 0.8: its surprisal is at most ln(2 · its largest count)), so it opens
        #: on its own as that member's would
        self._sigma_score = (combine == "max" and bool(self._banded),)  # a tuple: not in checkpoints

    @property
    def sigma_score(self) -> bool:
        """Whether the raw score is a sigma member's ``d / (d + 3)`` where it matters (see above)."""
        return self._sigma_score[0]

    @property
    def n(self) -> int:
        return self._members[0].n

    def learn_one(self, x: dict[Hashable, Any]) -> None:
        self.learn_value(x["x"], 1.0, x.get("t"))

    def score_one(self, x: dict[Hashable, Any]) -> float:
        return self.score_value(x["x"], x.get("t"))

    def score_value(self, x: float, ts_ms: int | None = None) -> float:
        scores = [m.score_value(x, ts_ms) for m in self._members]
        return max(scores) if self.combine == "max" else sum(scores) / len(scores)

    def learn_value(self, x: float, w: float = 1.0, ts_ms: int | None = None) -> None:
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {w!r}")
        for m in self._members:  # each checks x first: the first refuses a bad value before any learns
            m.learn_value(x, w, ts_ms)

    def level_at(self, ts_ms: int | None = None) -> float:
        return self._level_member[0].level_at(ts_ms)

    def expected_range(self, ts_ms: int | None = None) -> tuple[float, float]:
        if not self.sigma_score:
            return (-math.inf, math.inf)
        bands = [m.expected_range(ts_ms) for m in self._banded]
        low, high = max(low for low, _ in bands), min(high for _, high in bands)
        return (low, high) if low <= high else bands[0]  # disjoint bands: the first member's

    @classmethod
    def _unit_test_params(cls) -> Any:  # River's estimator checks
        yield {}
