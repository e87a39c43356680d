"""Anytime-valid tests: e-processes whose false-alarm rate holds however often they are looked at.

Each test keeps a nonnegative supermartingale ``E_n`` under its null hypothesis (an *e-process*, with
``E_0 = 1``). By Ville's inequality ``P(sup_n E_n >= 1/alpha) <= alpha``, so rejecting the first time
``E_n >= 1/alpha`` keeps the error rate at ``alpha`` with a look after every sample and optional stopping
(Ramdas, Grünwald, Vovk, Shafer, "Game-theoretic statistics and safe anytime-valid inference",
Statistical Science 2023; Howard, Ramdas, McAuliffe, Sekhon, "Time-uniform, nonparametric, nonasymptotic
confidence sequences", Annals of Statistics 2021). The alternatives are a fixed discrete mixture (an
average of likelihood ratios is again a test martingale), as in the mixture SPRT used for canary
releases (Lindon, Sanden, Shirikian, "Rapid regression detection in software deployments through
sequential testing", KDD 2022).

* :func:`sign_log_e` — the sign test as an e-process: under "median of the paired difference <= tau" each
  difference exceeds ``tau`` with probability at most 1/2, whatever its distribution (nonparametric).
* :class:`RateTest` — counts judged as counts: the canary's share of the errors given the total, per step
  (the conditional binomial test of two Poisson rates), against a rate ratio ``theta0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

#: Alternatives for P(difference > tau): the mixture is uniform over them.
SIGN_GRID: Final = (0.55, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
#: Alternatives for the rate ratio, as multiples of theta0 (their inverses for the "lower" side).
RATE_GRID: Final = (1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


def log_mean_exp(values: Sequence[float]) -> float:
    """``log(mean(exp(v)))`` without overflow.

    >>> round(log_mean_exp([0.0, math.log(3.0)]), 6) == round(math.log(2.0), 6)
    True
    """
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values) / len(values))


@lru_cache(maxsize=65536)
def sign_log_e(above: int, n: int) -> float:
    """log E of the mixture sign test after ``n`` differences (ties left out), ``above`` of them above tau.

    Under the null every difference is above tau with probability p <= 1/2, and for each alternative
    q > 1/2 the likelihood ratio ``(q/0.5)^above ((1-q)/0.5)^(n-above)`` has expectation <= 1 per step.

    >>> sign_log_e(0, 0)
    0.0
    >>> math.exp(sign_log_e(10, 10)) > 100, math.exp(sign_log_e(5, 10)) < 1
    (True, True)
    """
    if n == 0:
        return 0.0
    below = n - above
    return log_mean_exp([above * math.log(2 * q) + below * math.log(2 * (1 - q)) for q in SIGN_GRID])


def sign_bound(sorted_diffs: Sequence[float], log_threshold: float, *, lower: bool) -> float | None:
    """One end of the confidence sequence for the median of the differences, or None if unbounded.

    The lower end is the largest ``d`` at which "median <= d" is still rejected (for ``lower=False``,
    the smallest at which "median >= d" is): at any time the median lies within the ends except with
    probability alpha over all time, ``log_threshold = log(1/alpha)``.

    >>> sign_bound([1.0] * 20, math.log(100), lower=True), sign_bound([1.0], math.log(100), lower=True)
    (1.0, None)
    """
    n = len(sorted_diffs)
    found: float | None = None
    # Just below the j-th smallest difference, n - j differences are above it.
    order = range(n) if lower else range(n - 1, -1, -1)
    for j in order:
        beyond = n - j if lower else j + 1
        if sign_log_e(beyond, n) >= log_threshold:
            found = sorted_diffs[j]
        else:
            break
    return found


@dataclass(slots=True)
class RateTest:
    """Is the canary's event rate (events per unit of traffic) above ``theta0`` x the baseline's?

    Each step adds the events and traffic of both sides. Given the events of a step, the canary's are
    Binomial(total, pi) with ``pi = theta a / (theta a + b)`` (a, b the traffic, theta the true rate ratio),
    so the product of ``(pi1/pi0)^x ((1-pi1)/(1-pi0))^y`` over steps is a test supermartingale for
    "theta <= theta0" (and with ``higher=False``, against "theta >= theta0" for alternatives below).
    Three canary errors over a baseline's zero give at most ``2^3`` at equal traffic: never a fail.

    Counts are rate x step: summed over steps they are the true counts even from overlapping ``rate()``
    windows, and the statistic depends on the sums when the traffic share is steady.
    """

    theta0: float
    higher: bool = True
    _log_lr: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._log_lr = [0.0] * len(RATE_GRID)

    def add(
        self, canary_events: float, canary_traffic: float, base_events: float, base_traffic: float
    ) -> None:
        if canary_traffic <= 0 or base_traffic <= 0 or canary_events + base_events <= 0:
            return
        pi0 = self.theta0 * canary_traffic / (self.theta0 * canary_traffic + base_traffic)
        for i, multiple in enumerate(RATE_GRID):
            theta1 = self.theta0 * multiple if self.higher else self.theta0 / multiple
            pi1 = theta1 * canary_traffic / (theta1 * canary_traffic + base_traffic)
            self._log_lr[i] += canary_events * math.log(pi1 / pi0) + base_events * math.log(
                (1 - pi1) / (1 - pi0)
            )

    @property
    def log_e(self) -> float:
        return log_mean_exp(self._log_lr)
