"""Series that :mod:`engine.prepare` computes together per timestamp: classic histogram buckets, _sum/_count.

Prometheus shards series over requests, so the members of a group may arrive in different requests; a
group collects their samples per timestamp and computes each timestamp once, in time order, when every
member has sent it or will not send it anymore.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final, cast

from engine.histograms import bucket_quantiles
from engine.prepare_counts import Count
from engine.series_state import NEVER, BucketTrack, CounterTrack, Output

if TYPE_CHECKING:
    from engine.prepare import Preparer

__all__ = ["Group", "MeanGroup", "QuantileGroup"]

_INF: Final = math.inf
_MAX_WAIT_MS: Final = 60_000  # how long (sample time) a histogram timestamp waits for missing buckets
_MAX_PENDING: Final = 8  # timestamps a histogram may have waiting at once

_Member = CounterTrack | BucketTrack
_Row = dict[float | str, float]
_PendingRow = dict[float | str, float | None]  # None: that member's stale marker


class Group:
    """Series that are computed together per timestamp: the buckets of a histogram, or a _sum/_count pair.

    Their samples may arrive in different requests; a timestamp is computed once every member has sent it
    (or will not send it anymore), in time order.
    """

    __slots__ = ("done_ts", "key", "live", "members", "newest", "outs", "pending", "prev", "refs")

    required: frozenset[float | str] = frozenset()

    def __init__(self, key: tuple[str, ...], outs: list[Output]) -> None:
        self.key = key
        self.outs = outs
        self.members: dict[float | str, _Member] = {}
        self.pending: dict[int, _PendingRow] = {}
        self.prev: _Row | None = None
        self.done_ts = NEVER
        self.newest = NEVER
        self.live = False
        self.refs = 0

    def add(self, p: Preparer, ts: int, member: _Member, value: float | None) -> None:
        """Collect a member's sample; ``None`` is its stale marker."""
        if ts <= self.done_ts:
            p._count(Count.LATE)
            return
        members = self.members
        if members.get(member.key) is not member:
            members[member.key] = member  # (re)joining, e.g. after a stale marker
        if value is not None:
            self.live = True
        row = self.pending.get(ts)
        if row is None:
            row = self.pending[ts] = {}
            if ts > self.newest:
                self.newest = ts
            p._waiting.add(self)
        row[member.key] = value

    def flush(self, p: Preparer) -> None:
        """Compute the waiting timestamps that are complete or will not complete (after each request).

        Deciding only after the whole request has been read lets a new histogram's buckets all join first.
        """
        pending = self.pending
        members = self.members
        required = self.required
        for ts in sorted(pending):
            row = pending[ts]
            complete = len(row) >= len(members) and required <= row.keys()
            if not complete:
                if ts < self.newest - _MAX_WAIT_MS or len(pending) > _MAX_PENDING:
                    # members that sent nothing since are gone: stop waiting for them
                    for key in [k for k, m in members.items() if m.last_ts < ts]:
                        del members[key]
                    complete = len(row) >= len(members) and required <= row.keys()
                elif not required <= members.keys() or any(m.last_ts < ts for m in members.values()):
                    break  # some member may still send it (a new histogram's +Inf bucket may be unknown yet)
            del pending[ts]
            self._finalize(p, ts, row, complete=complete)
        if not pending:
            p._waiting.discard(self)

    def _finalize(self, p: Preparer, ts: int, row: _PendingRow, *, complete: bool) -> None:
        self.done_ts = ts
        if None in row.values():  # stale markers: the derived series end, the state is forgotten
            for key, value in row.items():
                if value is None:
                    self.members.pop(key, None)
            if self.live:
                for out in self.outs:
                    p._emit(out, [(ts, None)])
                self.live = False
            rest = {key: value for key, value in row.items() if value is not None}
            self.prev = rest or None  # a single bucket going away: the others carry on from here
            return
        values = cast(_Row, row)
        prev = self.prev
        if not complete and not (
            self.required <= values.keys() and (prev is None or prev.keys() <= values.keys())
        ):
            p._count(Count.INCOMPLETE_GROUP)
            return
        self._compute(p, prev, values, ts)
        self.prev = values

    def _compute(self, p: Preparer, prev: _Row | None, row: _Row, ts: int) -> None:
        raise NotImplementedError

    def leave(self, member: _Member) -> None:
        if self.members.get(member.key) is member:
            del self.members[member.key]


class QuantileGroup(Group):
    """The buckets of one classic histogram → its quantile series."""

    __slots__ = ("absolute", "qs")

    required = frozenset({_INF})

    def __init__(
        self, key: tuple[str, ...], outs: list[Output], qs: tuple[float, ...], absolute: bool
    ) -> None:
        super().__init__(key, outs)
        self.qs = qs
        self.absolute = absolute

    def _compute(self, p: Preparer, prev: _Row | None, row: _Row, ts: int) -> None:
        buckets: list[tuple[float, float]] = []
        if self.absolute:  # gauge histogram: the counts are the distribution now
            buckets = [(k, v) for k, v in row.items() if isinstance(k, float)]
            total = row.get(_INF, 0.0)
        else:
            if prev is None or _INF not in prev or _INF not in row:
                return
            reset = row[_INF] < prev[_INF]
            if reset:
                p._count(Count.COUNTER_RESET)
            for k, v in row.items():
                before = prev.get(k)
                if before is not None and isinstance(k, float):
                    buckets.append((k, v if reset or v < before else v - before))
            total = row[_INF] if reset else row[_INF] - prev[_INF]
        if not total > 0:
            p._count(Count.NO_TRAFFIC)
            return
        values = bucket_quantiles(self.qs, buckets)
        if values is None:  # only a +Inf bucket: nothing to interpolate
            return
        for out, value in zip(self.outs, values, strict=True):
            if not value - value:
                p._emit(out, [(ts, value)])


class MeanGroup(Group):
    """The _sum and _count of one histogram or summary → the mean observation per interval."""

    __slots__ = ()

    required = frozenset({"sum", "count"})

    def _compute(self, p: Preparer, prev: _Row | None, row: _Row, ts: int) -> None:
        if prev is None or not (self.required <= row.keys() and self.required <= prev.keys()):
            return
        count, sum_ = row["count"], row["sum"]
        d_count, d_sum = count - prev["count"], sum_ - prev["sum"]
        if d_count < 0:  # reset (the sum alone may go down legitimately, with negative observations)
            d_count, d_sum = count, sum_
        if not d_count > 0:
            p._count(Count.NO_TRAFFIC)
            return
        mean = d_sum / d_count
        if not mean - mean:
            p._emit(self.outs[0], [(ts, mean)])
