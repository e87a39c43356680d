"""Histogram maths: Prometheus' ``histogram_quantile`` (classic and native) and native bucket arithmetic.

Pure functions over numbers, no series state: :mod:`engine.preparation.histograms` and
:mod:`engine.preparation.native` decide which buckets to feed them.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "Hist",
    "bucket_list",
    "bucket_quantiles",
    "expand_spans",
    "hist_increase",
    "native_quantile",
    "sorted_bucket_quantiles",
]

_INF: Final = math.inf
_SMALL_DELTA: Final = 1e-12  # Prometheus' smallDeltaTolerance for bucket counts
# counts 0 < a < b with b > _NOT_TINY and b - a > _APART * b are surely not almost equal: their relative
# difference (b - a) / (a + b) is over _APART / 2, far above _SMALL_DELTA, whatever the rounding
_APART: Final = 1e-10
_NOT_TINY: Final = 1e-300
_MIN_NORMAL: Final = sys.float_info.min


# --- quantiles ------------------------------------------------------------------------------------------


def _almost_equal(a: float, b: float, epsilon: float) -> bool:
    """Prometheus' ``almost.Equal``: relative comparison that also copes with zero and subnormals."""
    if a == b:
        return True
    abs_sum = abs(a) + abs(b)
    diff = abs(a - b)
    if a == 0 or b == 0 or abs_sum < _MIN_NORMAL:
        return diff < epsilon * _MIN_NORMAL
    return diff / min(abs_sum, sys.float_info.max) < epsilon


def bucket_quantiles(qs: Sequence[float], buckets: Sequence[tuple[float, float]]) -> list[float] | None:
    """Prometheus' ``histogram_quantile`` over classic buckets, for several quantiles at once.

    ``buckets`` are ``(upper bound, cumulative count)`` pairs; the highest bound must be ``+Inf``. Counts
    that decrease with the bound are evened out as Prometheus does. Linear interpolation within a bucket,
    a lower bound of 0 for the first bucket (when its upper bound is positive), the second-highest bound
    for quantiles in the ``+Inf`` bucket. ``None`` when undefined: no ``+Inf`` bucket, no finite bucket,
    or no observations.

    >>> bucket_quantiles([0.5, 0.9], [(1.0, 10.0), (2.0, 20.0), (math.inf, 20.0)])
    [1.0, 1.8]
    >>> bucket_quantiles([0.99], [(1.0, 10.0), (2.0, 20.0), (math.inf, 30.0)])
    [2.0]
    >>> bucket_quantiles([0.5], [(math.inf, 5.0)]) is None
    True
    """
    ordered = sorted(buckets)
    if not ordered or ordered[-1][0] != _INF:
        return None
    bounds: list[float] = []
    counts: list[float] = []
    for bound, count in ordered:  # coalesce equal bounds
        if bounds and bounds[-1] == bound:
            counts[-1] += count
        else:
            bounds.append(bound)
            counts.append(count)
    return sorted_bucket_quantiles(qs, bounds, counts)


def sorted_bucket_quantiles(
    qs: Sequence[float], bounds: Sequence[float], counts: list[float]
) -> list[float] | None:
    """:func:`bucket_quantiles` over buckets already in order: distinct ascending ``bounds`` ending with
    ``+Inf`` (not checked) and their cumulative ``counts``, which are evened out in place.

    Lets a caller that sees the same bounds again and again sort them once.

    >>> sorted_bucket_quantiles([0.5, 0.9], [1.0, 2.0, math.inf], [10.0, 20.0, 20.0])
    [1.0, 1.8]
    """
    prev = counts[0]
    for i in range(1, len(counts)):  # ensureMonotonicAndIgnoreSmallDeltas
        cur = counts[i]
        if cur == prev:
            continue
        if prev > 0 and cur > _NOT_TINY and cur - prev > _APART * cur:  # the usual case, without a call
            prev = cur
            continue
        if cur < prev or _almost_equal(prev, cur, _SMALL_DELTA):
            counts[i] = prev
            continue
        prev = cur
    n = len(bounds)
    observations = counts[-1]
    if n < 2 or not observations > 0:
        return None
    out: list[float] = []
    for q in qs:
        rank = q * observations
        b = 0
        while b < n - 1 and counts[b] < rank:
            b += 1
        if b == n - 1:
            out.append(bounds[n - 2])
            continue
        if b == 0 and bounds[0] <= 0:
            out.append(bounds[0])
            continue
        start, end, count = 0.0, bounds[b], counts[b]
        if b > 0:
            start = bounds[b - 1]
            count -= counts[b - 1]
            rank -= counts[b - 1]
        out.append(start + (end - start) * (rank / count))
    return out


def _bound(index: int, schema: int) -> float:
    """Upper bound of native bucket ``index``: ``base ** index`` with ``base = 2 ** (2 ** -schema)``.

    >>> [_bound(i, 0) for i in (-1, 0, 1, 2)], _bound(1, 1), _bound(1, -1)
    ([0.5, 1.0, 2.0, 4.0], 1.4142135623730951, 4.0)
    """
    exponent = index / (1 << schema) if schema >= 0 else index * (1 << -schema)
    if exponent >= 1024:
        return sys.float_info.max  # the last finite bucket, as Prometheus
    return math.pow(2.0, exponent)


def native_quantile(
    q: float, buckets: Sequence[tuple[float, float, float]], count: float, sum_: float
) -> float | None:
    """Prometheus' ``histogram_quantile`` for a native histogram with exponential buckets.

    ``buckets`` are ``(lower, upper, count)`` in ascending order (negative buckets, the zero bucket, positive
    buckets), with the zero bucket already clipped at 0 when all other buckets are on one side. Quantiles
    in exponential buckets are interpolated exponentially, in the zero bucket linearly. ``None`` without
    observations in buckets.

    >>> b = [(1.0, 2.0, 4.0), (2.0, 4.0, 4.0)]
    >>> [round(native_quantile(q, b, 8.0, 20.0) or 0, 4) for q in (0.25, 0.5, 0.9)]
    [1.4142, 2.0, 3.4822]
    """
    forward = q < 0.5 or sum_ != sum_  # NaN observations: only the forward walk is right
    rank = q * count if forward else (1 - q) * count
    seen = 0.0
    chosen: tuple[float, float, float] | None = None
    for bucket in buckets if forward else reversed(buckets):
        if bucket[2] == 0:
            continue
        seen += bucket[2]
        chosen = bucket
        if seen >= rank:
            break
    if chosen is None:
        return None
    lower, upper, in_bucket = chosen
    seen = min(seen, count)
    if seen < rank:
        return upper
    rank = rank - (seen - in_bucket) if forward else seen - rank
    fraction = rank / in_bucket
    if lower <= 0 <= upper:
        return lower + (upper - lower) * fraction
    if lower > 0:
        log_lower, log_upper = math.log2(lower), math.log2(upper)
        return float(2.0 ** (log_lower + (log_upper - log_lower) * fraction))
    log_lower, log_upper = math.log2(-lower), math.log2(-upper)
    return -float(2.0 ** (log_upper + (log_lower - log_upper) * (1 - fraction)))


# --- native histograms as {index: count} ----------------------------------------------------------------


@dataclass(slots=True)
class Hist:
    """A native histogram with buckets as {index: count} (absolute counts, or an increment)."""

    schema: int
    zero_threshold: float
    zero_count: float
    count: float
    sum: float
    positive: dict[int, float]
    negative: dict[int, float]


def expand_spans(spans: Sequence[tuple[int, int]], counts: Sequence[float]) -> dict[int, float] | None:
    """Span-encoded buckets → {index: count}; ``None`` when spans and counts disagree.

    >>> expand_spans([(-1, 2), (3, 1)], [1.0, 2.0, 3.0])
    {-1: 1.0, 0: 2.0, 4: 3.0}
    """
    if sum(length for _, length in spans) != len(counts):
        return None
    out: dict[int, float] = {}
    index = 0
    i = 0
    for offset, length in spans:
        index += offset
        for _ in range(length):
            out[index] = counts[i]
            index += 1
            i += 1
    return out


def _reduce(buckets: dict[int, float], schema: int, target: int) -> dict[int, float]:
    """Buckets at a coarser schema, merging as Prometheus does.

    >>> _reduce({1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}, 1, 0)
    {1: 3.0, 2: 7.0}
    """
    if schema == target:
        return buckets
    shift = schema - target
    out: dict[int, float] = {}
    for index, count in buckets.items():
        merged = ((index - 1) >> shift) + 1
        out[merged] = out.get(merged, 0.0) + count
    return out


_BOUNDS: Final[list[dict[int, float]]] = [{} for _ in range(-4, 9)]  # per schema: index → upper bound
_MAX_CACHED_BOUNDS: Final = 1 << 16


def bucket_list(h: Hist) -> list[tuple[float, float, float]]:
    """The non-empty buckets of ``h`` as ascending ``(lower, upper, count)``, the zero bucket clipped.

    >>> h = Hist(0, 0.5, 1.0, 3.0, 2.0, {1: 2.0, 2: 0.0}, {})
    >>> bucket_list(h)
    [(0.0, 0.5, 1.0), (1.0, 2.0, 2.0)]
    """
    schema = h.schema
    cache = _BOUNDS[schema + 4]
    if len(cache) > _MAX_CACHED_BOUNDS:
        cache.clear()
    negative = sorted([i for i, c in h.negative.items() if c], reverse=True)
    positive = sorted([i for i, c in h.positive.items() if c])
    for i in (*negative, *positive):
        if i not in cache:
            cache[i] = _bound(i, schema)
        if i - 1 not in cache:
            cache[i - 1] = _bound(i - 1, schema)
    out = [(-cache[i], -cache[i - 1], h.negative[i]) for i in negative]
    if h.zero_count > 0:
        lower, upper = -h.zero_threshold, h.zero_threshold
        if positive and not negative:
            lower = 0.0
        elif negative and not positive:
            upper = 0.0
        out.append((lower, upper, h.zero_count))
    out += [(cache[i - 1], cache[i], h.positive[i]) for i in positive]
    return out


def _bucket_increase(cur: dict[int, float], prev: dict[int, float]) -> dict[int, float] | None:
    """Bucket-wise ``cur - prev``; ``None`` when a bucket went down (a counter reset)."""
    if not prev.keys() <= cur.keys() and any(c for i, c in prev.items() if i not in cur):
        return None
    out = {i: c - prev.get(i, 0.0) for i, c in cur.items()}
    if out and min(out.values()) < 0:
        return None
    return out


def hist_increase(prev: Hist, cur: Hist, reset_hint: bool) -> tuple[Hist, bool] | None:
    """The increment from ``prev`` to ``cur`` at the coarser of their schemas, and whether it was a reset.

    ``None`` when they cannot be compared (the zero bucket changed width).
    """
    if prev.zero_threshold != cur.zero_threshold:
        return None
    schema = min(prev.schema, cur.schema)
    positive = _bucket_increase(
        _reduce(cur.positive, cur.schema, schema), _reduce(prev.positive, prev.schema, schema)
    )
    negative = _bucket_increase(
        _reduce(cur.negative, cur.schema, schema), _reduce(prev.negative, prev.schema, schema)
    )
    if (
        positive is None
        or negative is None
        or reset_hint
        or cur.count < prev.count
        or cur.zero_count < prev.zero_count
    ):
        return cur, True
    zero_count, count, sum_ = cur.zero_count - prev.zero_count, cur.count - prev.count, cur.sum - prev.sum
    return Hist(schema, cur.zero_threshold, zero_count, count, sum_, positive, negative), False
