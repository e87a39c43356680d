"""Series that are computed together per timestamp: the buckets of a classic histogram, a _sum/_count pair.

Prometheus shards series over requests, and ingest replicas behind a load balancer split them further, so
the members of a group may arrive in different records. A group collects their samples per timestamp and
computes each timestamp once, in time order:

* when it is **complete** (:meth:`Group.complete`: for a histogram, its ``+Inf`` bucket, its ``_count`` and
  every bucket seen at the previous timestamp are there; for a _sum/_count pair, both), or
* when a **later timestamp** of the same histogram arrives (any bucket, its ``_sum`` or ``_count``): then
  it is computed with what it has — if it has every bucket of the previous timestamp; else it is dropped
  and counted (``incomplete_group``) and the histogram carries on from the buckets it did have.

The first timestamp of a histogram has no previous one to say which buckets exist: it is decided by the
next one (it gives nothing but the baseline of the first increase anyway).

Cheap on purpose (it sees most samples of a histogram-heavy request): a bucket's samples go in with one
dict update per request, and a group nothing was sent to since its last flush is not looked at again.
"""

from __future__ import annotations

from typing import ClassVar, Protocol, cast

from engine.preparation.context import NEVER, Context, Output
from engine.preparation.counts import Count

__all__ = ["Group", "Member", "PendingRow", "Row"]


class Member(Protocol):
    """A series that sends samples to a group (a bucket, a _sum or a _count), known by its ``key``."""

    key: float | str
    last_ts: int


Row = dict[float | str, float]
PendingRow = dict[float | str, float | None]  # None: that member's stale marker
Sent = dict[int, float | None]  # one member key's waiting samples by timestamp (None: its stale marker)


class Group:
    """Series that are computed together per timestamp: the buckets of a histogram, or a _sum/_count pair."""

    __slots__ = ("changed", "done_ts", "key", "live", "newest", "outs", "prev", "refs", "sent")

    required: ClassVar[frozenset[float | str]]  # the members no timestamp is computed without (never none)

    def __init__(self, key: tuple[str, ...], outs: list[Output]) -> None:
        self.key = key
        self.outs = outs
        # the waiting samples by member key, then timestamp (not by timestamp, then key): a bucket's samples
        # of one request go in with one update, and a timestamp's row is only put together when looked at
        self.sent: dict[float | str, Sent] = {}
        self.prev: Row | None = None  # the last computed timestamp's row
        self.done_ts = NEVER  # the last timestamp decided
        self.newest = NEVER  # the newest timestamp any member (or note) sent
        self.live = False
        self.refs = 0
        self.changed = False  # a member sent something since the last flush

    def add(self, ctx: Context, ts: int, member: Member, value: float | None) -> None:
        """Collect a member's sample; ``None`` is its stale marker."""
        self.changed = True
        if ts <= self.done_ts:
            ctx.count(Count.LATE)
            return
        key = member.key
        sent = self.sent.get(key)
        if sent is None:
            sent = self.sent[key] = {}
        sent[ts] = value
        if value is not None:
            self.live = True
        if ts > self.newest:
            self.newest = ts
        ctx.wait(self)

    def note(self, ctx: Context, ts: int, counted: bool) -> None:
        """A series of the same histogram that is not a member (its ``_sum`` or ``_count``) sent ``ts``."""
        if ts > self.newest:
            self.newest = ts
            self.changed = True
            ctx.wait(self)

    def collect(self, ctx: Context, member: Member, samples: list[tuple[int, float]]) -> None:
        """A bucket's samples of one request, as sent: :meth:`add` for the ones newer than the bucket's last
        that are finite or a stale marker; the others are counted (out of order, NaN, ±Inf).

        One call per series rather than per sample: most samples are buckets. When they are all in order,
        finite and not late (the usual case), they go in with one update.
        """
        if not samples:
            return
        last = member.last_ts
        newest = max(last, self.done_ts)
        for ts, v in samples:
            if ts <= newest or v - v:  # out of order, late, NaN or ±Inf (v - v is 0 for every finite v)
                self._collect_each(ctx, member, samples)
                return
            newest = ts
        self.changed = True
        key = member.key
        sent = self.sent.get(key)
        if sent is None:
            self.sent[key] = dict(samples)
        else:
            sent.update(samples)
        member.last_ts = newest
        self.live = True
        if newest > self.newest:
            self.newest = newest
        ctx.wait(self)

    def _collect_each(self, ctx: Context, member: Member, samples: list[tuple[int, float]]) -> None:
        """:meth:`collect`, one sample at a time."""
        done = self.done_ts
        for ts, v in samples:
            last = member.last_ts
            if ts <= last:
                ctx.disorder(ts == last)
                continue
            member.last_ts = ts
            if v - v:
                if ctx.nonfinite(v):
                    self.add(ctx, ts, member, None)
            elif ts <= done:
                ctx.count(Count.LATE)
            else:
                self.add(ctx, ts, member, v)

    def _row(self, ts: int) -> PendingRow:
        """What the members sent for ``ts``."""
        return {key: sent[ts] for key, sent in self.sent.items() if ts in sent}

    def complete(self, ts: int, row: PendingRow) -> bool:
        """Whether ``row`` (what was sent for ``ts``) can be computed without waiting for more."""
        raise NotImplementedError

    def flush(self, ctx: Context) -> None:
        """Decide the waiting timestamps that are complete or have a later one (after each record).

        Deciding only after the whole record has been read lets every member in it join first.
        """
        if not self.changed:  # nothing new: it would stop where it stopped last time
            return
        self.changed = False
        sent = self.sent
        order = sorted(set().union(*sent.values()))
        done = 0
        for ts in order:
            row = self._row(ts)
            if ts >= self.newest and not self.complete(ts, row):
                break  # the newest timestamp, still missing members: wait for them or a later one
            self._finalize(ctx, ts, row)
            done += 1
        if done == len(order):
            sent.clear()
            self._forget_through(self.done_ts)
            ctx.unwait(self)
        elif done:  # keep the rest
            kept = order[done:]
            for key, samples in sent.items():
                sent[key] = {ts: samples[ts] for ts in kept if ts in samples}
            self._forget_through(self.done_ts)

    def _forget_through(self, ts: int) -> None:
        """Drop what the group noted about timestamps up to ``ts`` (decided)."""

    def _finalize(self, ctx: Context, ts: int, row: PendingRow) -> None:
        """Compute one timestamp, or give it up."""
        self.done_ts = ts
        if None in row.values():  # stale markers: the derived series end, the state is forgotten
            if self.live:
                for out in self.outs:
                    ctx.emit(out, [(ts, None)])
                self.live = False
            rest: Row = {key: value for key, value in row.items() if value is not None}
            self.prev = rest or None  # a single bucket going away: the others carry on from here
            return
        values = cast(Row, row)
        if not self.required <= values.keys():
            ctx.count(Count.INCOMPLETE_GROUP)
            return
        prev = self.prev
        if prev is not None and not prev.keys() <= values.keys():
            ctx.count(Count.INCOMPLETE_GROUP)  # some bucket is missing: nothing to compare it with
        else:
            self._compute(ctx, prev, values, ts)
        self.prev = values

    def _compute(self, ctx: Context, prev: Row | None, row: Row, ts: int) -> None:
        raise NotImplementedError

    def leave(self, ctx: Context, member: Member) -> None:
        """``member`` is forgotten; the group too when it was the last reference."""
        self.changed = True
        self.refs -= 1
        if self.refs <= 0:
            ctx.drop_group(self)
