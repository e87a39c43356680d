"""Series that are computed together per timestamp: the buckets of a classic histogram, a _sum/_count pair.

Prometheus shards series over requests, so the members of a group may arrive in different requests; a
group collects their samples and computes each timestamp once, in time order, when every member has sent
it or will not send it anymore.

Cheap on purpose (it sees most samples of a histogram-heavy request): a bucket's samples go in with one
dict update per request, a group nothing was sent to since its last flush is not looked at again, and the
timestamps given up in bulk are only counted, except the few that can still give something.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import ClassVar, Final, Protocol, cast

from engine.preparation.context import NEVER, Context, Output
from engine.preparation.counts import Count

__all__ = ["Group", "Member"]

_MAX_WAIT_MS: Final = 60_000  # how long (sample time) a histogram timestamp waits for missing buckets
_MAX_PENDING: Final = 8  # timestamps a histogram may have waiting at once
_NO_MEMBER: Final = 1 << 62  # "the oldest member" of none: later than any timestamp


class Member(Protocol):
    """A series that sends samples to a group (a bucket, a _sum or a _count), known by its ``key``."""

    key: float | str
    last_ts: int


Row = dict[float | str, float]
PendingRow = dict[float | str, float | None]  # None: that member's stale marker
_Sent = dict[int, float | None]  # one member key's waiting samples by timestamp (None: its stale marker)


class Group:
    """Series that are computed together per timestamp: the buckets of a histogram, or a _sum/_count pair.

    Their samples may arrive in different requests; a timestamp is computed once every member has sent it
    (or will not send it anymore), in time order.
    """

    __slots__ = (
        "changed",
        "done_ts",
        "key",
        "live",
        "members",
        "newest",
        "outs",
        "prev",
        "refs",
        "sent",
        "stale",
    )

    required: ClassVar[frozenset[float | str]]  # the members no timestamp is computed without (never none)

    def __init__(self, key: tuple[str, ...], outs: list[Output]) -> None:
        self.key = key
        self.outs = outs
        self.members: dict[float | str, Member] = {}
        # the waiting samples by member key, then timestamp (not by timestamp, then key): a bucket's samples
        # of one request go in with one update, and a timestamp's row is only put together when looked at
        self.sent: dict[float | str, _Sent] = {}
        self.stale: set[int] = set()  # waiting timestamps with a stale marker (or that had one)
        self.prev: Row | None = None
        self.done_ts = NEVER
        self.newest = NEVER
        self.live = False
        self.refs = 0
        self.changed = False  # a member sent something or left since the last flush

    def add(self, ctx: Context, ts: int, member: Member, value: float | None) -> None:
        """Collect a member's sample; ``None`` is its stale marker."""
        self.changed = True
        if ts <= self.done_ts:
            ctx.count(Count.LATE)
            return
        key = member.key
        members = self.members
        if members.get(key) is not member:
            members[key] = member  # (re)joining, e.g. after a stale marker
        sent = self.sent.get(key)
        if sent is None:
            sent = self.sent[key] = {}
        sent[ts] = value
        if value is None:
            self.stale.add(ts)
        else:
            self.live = True
        if ts > self.newest:
            self.newest = ts
        ctx.wait(self)

    def collect(self, ctx: Context, member: Member, samples: list[tuple[int, float]]) -> None:
        """A bucket's samples of one request, as sent: :meth:`add` for the ones newer than the bucket's last
        that are finite or a stale marker; the others are counted (out of order, NaN, ±Inf).

        One call per series rather than per sample: most samples are buckets. When they are all in order,
        finite and not late (the usual case), they go in with one update.
        """
        if not samples:
            return
        self.changed = True  # also when nothing is added: a newer last timestamp may decide waiting ones
        last = member.last_ts
        newest = max(last, self.done_ts)
        for ts, v in samples:
            if ts <= newest or v - v:  # out of order, late, NaN or ±Inf (v - v is 0 for every finite v)
                self._collect_each(ctx, member, samples)
                return
            newest = ts
        key = member.key
        sent = self.sent.get(key)
        if sent is None:
            self.sent[key] = dict(samples)
        else:
            sent.update(samples)
        member.last_ts = newest
        members = self.members
        if members.get(key) is not member:
            members[key] = member
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

    def flush(self, ctx: Context) -> None:
        """Compute the waiting timestamps that are complete or will not complete (after each request).

        Deciding only after the whole request has been read lets a new histogram's buckets all join first.
        In time order: a timestamp every member sent is computed. One that is over a minute older than the
        newest, or that more than ``_MAX_PENDING`` later ones would be left waiting behind, is computed
        with what it has, after dropping the members that sent nothing since. Any other waits, with all
        later ones, while some member may still send it.
        """
        if not self.changed:  # nothing new: it would stop where it stopped last time
            return
        self.changed = False
        sent = self.sent
        order = sorted(set().union(*sent.values()))
        # the first timestamps will not wait any longer: too many behind them, or too old
        forced = max(len(order) - _MAX_PENDING, bisect_left(order, self.newest - _MAX_WAIT_MS))
        oldest = _oldest(self.members)  # the oldest last timestamp of a member
        if forced > 0:
            oldest = self._give_up(ctx, order, forced, oldest)
        members = self.members
        required = self.required
        done = forced
        for ts in order[forced:]:
            row = self._row(ts)
            complete = len(row) >= len(members) and row.keys() >= required
            if not complete and (oldest < ts or not members.keys() >= required):
                break  # some member may still send it (a new histogram's +Inf bucket may be unknown yet)
            done += 1
            oldest = self._finalize(ctx, ts, row, complete=complete, oldest=oldest)
        if done == len(order):
            sent.clear()
            self.stale.clear()
            ctx.unwait(self)
        elif done:  # keep the rest (at most _MAX_PENDING timestamps)
            kept = order[done:]
            for key, samples in sent.items():
                sent[key] = {ts: samples[ts] for ts in kept if ts in samples}
            if self.stale:
                self.stale.intersection_update(kept)

    def _give_up(self, ctx: Context, order: list[int], forced: int, oldest: int) -> int:
        """Decide the first ``forced`` of the waiting timestamps ``order``, which cannot wait any longer.

        Each would drop the members that sent nothing since (unless it is complete) and be computed with
        what it has, which gives nothing (but a count) unless it has every required member or a stale
        marker: only those are looked at, and the members are dropped when one is, in one go for the
        timestamps given up before it.
        """
        members = self.members
        required = self.required
        last = forced - 1  # the last of them
        candidates = set(self.stale)
        for key in required:
            candidates.update(self.sent.get(key, ()))
        looked = -1  # the last one looked at
        for ts in sorted(t for t in candidates if t <= order[last]):
            row = self._row(ts)
            if not (row.keys() >= required or None in row.values()):
                continue  # e.g. a _sum without its _count: given up like the others
            i = bisect_left(order, ts, looked + 1, forced)
            if i > looked + 1:  # the ones given up since the last one looked at
                ctx.count(Count.INCOMPLETE_GROUP, i - looked - 1)
                if oldest < order[i - 1]:
                    oldest = _drop_older(members, order[i - 1])
            looked = i
            complete = len(row) >= len(members) and row.keys() >= required
            if not complete and oldest < ts:
                oldest = _drop_older(members, ts)
                complete = len(row) >= len(members) and row.keys() >= required
            oldest = self._finalize(ctx, ts, row, complete=complete, oldest=oldest)
        if last > looked:
            ctx.count(Count.INCOMPLETE_GROUP, last - looked)
            if oldest < order[last]:
                oldest = _drop_older(members, order[last])
        self.done_ts = order[last]
        return oldest

    def _finalize(self, ctx: Context, ts: int, row: PendingRow, *, complete: bool, oldest: int) -> int:
        """Compute one timestamp, or give it up; ``oldest`` (the oldest last timestamp of a member) after."""
        self.done_ts = ts
        if None in row.values():  # stale markers: the derived series end, the state is forgotten
            for key, value in row.items():
                if value is None:
                    self.members.pop(key, None)
            if self.live:
                for out in self.outs:
                    ctx.emit(out, [(ts, None)])
                self.live = False
            rest = {key: value for key, value in row.items() if value is not None}
            self.prev = rest or None  # a single bucket going away: the others carry on from here
            return _oldest(self.members)
        values = cast(Row, row)
        prev = self.prev
        if not complete and not (
            self.required <= values.keys() and (prev is None or prev.keys() <= values.keys())
        ):
            ctx.count(Count.INCOMPLETE_GROUP)
            return oldest
        self._compute(ctx, prev, values, ts)
        self.prev = values
        return oldest

    def _compute(self, ctx: Context, prev: Row | None, row: Row, ts: int) -> None:
        raise NotImplementedError

    def leave(self, ctx: Context, member: Member) -> None:
        """``member`` is forgotten; the group too when it was the last reference."""
        self.changed = True
        if self.members.get(member.key) is member:
            del self.members[member.key]
        self.refs -= 1
        if self.refs <= 0:
            ctx.drop_group(self)


def _oldest(members: dict[float | str, Member]) -> int:
    """The oldest last timestamp of ``members``; later than any timestamp when there are none."""
    return min([m.last_ts for m in members.values()], default=_NO_MEMBER)


def _drop_older(members: dict[float | str, Member], ts: int) -> int:
    """Drop the members whose last timestamp is before ``ts``; the oldest last timestamp of the others."""
    for key in [k for k, m in members.items() if m.last_ts < ts]:
        del members[key]
    return _oldest(members)
