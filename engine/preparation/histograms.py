"""Classic histograms: buckets → quantiles (``histogram_quantile`` over the increase), _sum/_count → mean.

Every ``_bucket{le=...}`` series of one histogram (one family, instance and label set) sends its samples to
one :class:`QuantileGroup`; the ``_sum`` and ``_count`` series to one :class:`MeanGroup`. The groups decide
when a timestamp is complete (:mod:`.groups`); here is what is computed from it.
"""

from __future__ import annotations

import math
from collections.abc import Set as AbstractSet
from typing import Final, cast

from engine.preparation.context import Context, Output
from engine.preparation.counts import Count
from engine.preparation.groups import Group, PendingRow, Row
from engine.preparation.names import Role
from engine.preparation.quantiles import sorted_bucket_quantiles
from engine.preparation.tracks import Track

__all__ = ["BucketTrack", "MeanGroup", "QuantileGroup"]

_INF: Final = math.inf
_Buckets = tuple[list[float], list[float]]  # ascending bounds (the last +Inf), cumulative counts


class BucketTrack(Track):
    """One ``_bucket{le=...}`` series: its samples go to the histogram's group."""

    __slots__ = ("group", "key")

    def __init__(
        self, name: str, service: str, instance: str, selector: str, role: Role, group: Group, le: float
    ) -> None:
        super().__init__(name, service, instance, selector, role)
        self.group = group
        self.key: float | str = le

    def feed(self, ctx: Context, samples: list[tuple[int, float]], created_ms: int) -> None:
        self.group.collect(ctx, self, samples)

    def release(self, ctx: Context) -> None:
        super().release(ctx)
        self.group.leave(ctx, self)


class QuantileGroup(Group):
    """The buckets of one classic histogram → its quantile series."""

    __slots__ = ("absolute", "bounds", "counted", "qs")

    required = frozenset({_INF})

    def __init__(
        self, key: tuple[str, ...], outs: list[Output], qs: tuple[float, ...], absolute: bool
    ) -> None:
        super().__init__(key, outs)
        self.qs = qs
        self.absolute = absolute
        self.bounds: tuple[frozenset[float | str], list[float]] = (frozenset(), [])  # last bounds, sorted
        self.counted: set[int] = set()  # waiting timestamps the histogram's _count has sent

    def note(self, ctx: Context, ts: int, counted: bool) -> None:
        if counted and ts > self.done_ts:
            self.counted.add(ts)
            self.changed = True
            ctx.wait(self)
        super().note(ctx, ts, counted)

    def complete(self, ts: int, row: PendingRow) -> bool:
        """``+Inf``, ``_count`` (not for a gauge histogram) and every bucket of the previous timestamp."""
        prev = self.prev
        return (
            _INF in row
            and prev is not None
            and (self.absolute or ts in self.counted)
            and prev.keys() <= row.keys()
        )

    def _forget_through(self, ts: int) -> None:
        if self.counted:
            self.counted = {t for t in self.counted if t > ts}

    def _sorted(self, keys: AbstractSet[float | str]) -> list[float]:
        """The bucket bounds ``keys`` in ascending order: sorted once while the buckets stay the same."""
        known, ordered = self.bounds
        if keys != known:
            ordered = sorted(cast(AbstractSet[float], keys))
            self.bounds = (frozenset(keys), ordered)
        return ordered

    def _compute(self, ctx: Context, prev: Row | None, row: Row, ts: int) -> None:
        buckets = self._absolute(ctx, row) if self.absolute else self._increase(ctx, prev, row)
        if buckets is None:
            return
        values = sorted_bucket_quantiles(self.qs, *buckets)
        if values is None:  # only a +Inf bucket in common with the previous timestamp
            return
        for out, value in zip(self.outs, values, strict=True):
            if not value - value:
                ctx.emit(out, [(ts, value)])

    def _absolute(self, ctx: Context, row: Row) -> _Buckets | None:
        """A gauge histogram's buckets (bounds, counts): the counts are the distribution now."""
        if not row.get(_INF, 0.0) > 0:
            ctx.count(Count.NO_TRAFFIC)
            return None
        if len(row) < 2:  # only a +Inf bucket: nothing to interpolate
            return None
        bounds = self._sorted(row.keys())
        return bounds, [row[bound] for bound in bounds]

    def _increase(self, ctx: Context, prev: Row | None, row: Row) -> _Buckets | None:
        """The buckets (bounds, counts) of the increase since the previous timestamp, as ``rate()`` has it."""
        if prev is None:
            return None
        last, now = prev.get(_INF), row.get(_INF)
        if last is None or now is None:
            return None
        reset = now < last
        if reset:
            ctx.count(Count.COUNTER_RESET)
        if not (now if reset else now - last) > 0:
            ctx.count(Count.NO_TRAFFIC)
            return None
        if len(row) < 2:  # only a +Inf bucket: nothing to interpolate
            return None
        keys = row.keys()
        bounds = self._sorted(keys if keys == prev.keys() else keys & prev.keys())
        if reset:
            return bounds, [row[bound] for bound in bounds]
        # a bucket that went down alone restarted too
        return bounds, [v if (v := row[b]) < (before := prev[b]) else v - before for b in bounds]


class MeanGroup(Group):
    """The _sum and _count of one histogram or summary → the mean observation per interval."""

    __slots__ = ()

    required = frozenset({"sum", "count"})

    def complete(self, ts: int, row: PendingRow) -> bool:
        return row.keys() >= self.required

    def _compute(self, ctx: Context, prev: Row | None, row: Row, ts: int) -> None:
        if prev is None or not (self.required <= row.keys() and self.required <= prev.keys()):
            return
        count, sum_ = row["count"], row["sum"]
        d_count, d_sum = count - prev["count"], sum_ - prev["sum"]
        if d_count < 0:  # reset (the sum alone may go down legitimately, with negative observations)
            d_count, d_sum = count, sum_
        if not d_count > 0:
            ctx.count(Count.NO_TRAFFIC)
            return
        mean = d_sum / d_count
        if not mean - mean:
            ctx.emit(self.outs[0], [(ts, mean)])
