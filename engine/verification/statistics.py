"""Descriptive two-sample statistics shown beside each verdict (they are not what decides it).

Kayenta judges a canary with a Mann-Whitney test repeated at every interval; Vigil shows the same
numbers — the probability of superiority (the Mann-Whitney U scaled to [0, 1]) and the Hodges-Lehmann
shift — but decides with the anytime-valid tests of :mod:`engine.verification.sequential`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

#: Beyond this many values per side the pairwise statistics use the latest ones only.
MAX_PAIRWISE = 400


@dataclass(frozen=True, slots=True)
class TwoSample:
    """``auc`` = P(canary > baseline) + P(equal)/2; ``p_value`` is the fixed-sample two-sided normal
    approximation of Mann-Whitney, for reference only (it is not valid under repeated looks)."""

    auc: float
    u: float
    p_value: float
    hl_shift: float


def mann_whitney(canary: Sequence[float], baseline: Sequence[float]) -> TwoSample | None:
    """Mann-Whitney U (with ties), its effect size and the Hodges-Lehmann shift canary - baseline.

    >>> r = mann_whitney([2.0, 3.0, 4.0], [0.0, 1.0, 2.0])
    >>> r.auc, r.hl_shift
    (0.9444444444444444, 2.0)
    """
    c, b = list(canary[-MAX_PAIRWISE:]), list(baseline[-MAX_PAIRWISE:])
    if not c or not b:
        return None
    n1, n2 = len(c), len(b)
    pooled = sorted([(v, 0) for v in c] + [(v, 1) for v in b])
    ranks = [0.0] * len(pooled)
    ties = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    r1 = sum(r for r, (_, side) in zip(ranks, pooled, strict=True) if side == 0)
    u = r1 - n1 * (n1 + 1) / 2
    n = n1 + n2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if var > 0:
        z = (abs(u - n1 * n2 / 2) - 0.5) / math.sqrt(var)
        p = math.erfc(max(z, 0.0) / math.sqrt(2))
    else:
        p = 1.0
    shift = statistics.median(x - y for x in c for y in b)
    return TwoSample(auc=u / (n1 * n2), u=u, p_value=min(1.0, p), hl_shift=shift)
