"""NAB's scoring rules (Lavin & Ahmad, ICMLA 2015; github.com/numenta/NAB), written from the published rules.

Per file: the first ``min(floor(0.15 n), 750)`` rows are a probationary period and not scored. A detection
is a row with ``score >= threshold``. In a label window ``[s, e]`` (width ``w``) only the earliest detection
counts and earns ``A_TP · f(p) / f(-1)`` with ``p = -(e - i + 1) / w`` and ``f(x) = 2 / (1 + e^{5x}) - 1``; a
window without a detection costs ``A_FN``. A detection outside every window costs ``A_FP · f(q)`` with ``q``
the distance past the preceding window's end in (its width - 1), ``f = -1`` beyond 3 and before the first
window. The corpus score is normalised: ``100 · (raw - null) / (perfect - null)``, where null never fires
(``-A_FN`` per window that reaches past probation) and perfect earns ``A_TP`` per window. Without a fixed
threshold, every distinct score is tried and the best raw score is kept (ties: the higher threshold).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["PROFILES", "Profile", "ScoredFile", "Windows", "probation", "score", "scored_file"]


@dataclass(frozen=True, slots=True)
class Profile:
    tp: float
    fp: float
    fn: float


#: NAB's application profiles (config/profiles.json).
PROFILES: MappingProxyType[str, Profile] = MappingProxyType(
    {
        "standard": Profile(tp=1.0, fp=0.11, fn=1.0),
        "reward_low_FP_rate": Profile(tp=1.0, fp=0.22, fn=1.0),
        "reward_low_FN_rate": Profile(tp=1.0, fp=0.11, fn=2.0),
    }
)

Windows = Sequence[tuple[int, int]]  # (first row, last row), inclusive, sorted, not overlapping


def sigma(x: float) -> float:
    """NAB's scaled sigmoid.

    >>> round(sigma(-1.0), 4), sigma(0.0), sigma(3.5)
    (0.9866, 0.0, -1.0)
    """
    return -1.0 if x > 3.0 else 2.0 / (1.0 + math.exp(5.0 * x)) - 1.0


def probation(rows: int) -> int:
    """Leading rows of a file that are never scored."""
    return min(math.floor(0.15 * rows), 750)


@dataclass(frozen=True, slots=True)
class ScoredFile:
    """The scored rows of one file: (score, window id or -1, unweighted reward/cost)."""

    rows: list[tuple[float, int, float]]
    windows: int  # windows of the file (all, also those inside probation)


def scored_file(scores: Sequence[float], windows: Windows, first_id: int) -> ScoredFile:
    """Prepare one file's rows; window ids start at ``first_id`` (unique over the corpus)."""
    n = len(scores)
    start = probation(n)
    rows: list[tuple[float, int, float]] = []
    k = 0  # the next window
    prev: tuple[int, int] | None = None  # the last window left behind
    for i in range(n):
        while k < len(windows) and windows[k][1] < i:
            prev = windows[k]
            k += 1
        inside = k < len(windows) and windows[k][0] <= i
        if inside:
            s, e = windows[k]
            win, unit = first_id + k, sigma(-(e - i + 1) / (e - s + 1))
        else:
            win = -1
            if prev is None or prev[1] - prev[0] + 1 <= 1:
                unit = -1.0
            else:
                unit = sigma((i - prev[1]) / (prev[1] - prev[0]))
        if i >= start:
            rows.append((scores[i], win, unit))
    return ScoredFile(rows, len(windows))


def _raw_at(files: Sequence[ScoredFile], p: Profile, threshold: float) -> float:
    top = sigma(-1.0)
    total = 0.0
    for f in files:
        best: dict[int, float] = {}
        for value, win, unit in f.rows:
            if win >= 0:
                best.setdefault(win, -p.fn)
                if value >= threshold:
                    best[win] = max(best[win], p.tp * unit / top)
            elif value >= threshold:
                total += p.fp * unit
        total += sum(best.values())
    return total


def _best_threshold(files: Sequence[ScoredFile], p: Profile) -> float:
    top = sigma(-1.0)
    rows = sorted((r for f in files for r in f.rows), key=lambda r: r[0], reverse=True)
    best = {win: -p.fn for _, win, _ in rows if win >= 0}
    total = sum(best.values())
    best_total, best_threshold = total, math.inf
    i = 0
    while i < len(rows):
        value = rows[i][0]
        while i < len(rows) and rows[i][0] == value:
            _, win, unit = rows[i]
            if win >= 0:
                gain = p.tp * unit / top
                if gain > best[win]:
                    total += gain - best[win]
                    best[win] = gain
            else:
                total += p.fp * unit
            i += 1
        if total > best_total:
            best_total, best_threshold = total, value
    return best_threshold


def score(files: Sequence[ScoredFile], profile: str, threshold: float | None = None) -> tuple[float, float]:
    """(normalised NAB score, threshold used) of a corpus for one profile."""
    p = PROFILES[profile]
    if threshold is None:
        threshold = _best_threshold(files, p)
    raw = _raw_at(files, p, threshold)
    reachable = len({win for f in files for _, win, _ in f.rows if win >= 0})
    null = -p.fn * reachable
    perfect = p.tp * sum(f.windows for f in files)
    return 100.0 * (raw - null) / (perfect - null), threshold
