"""Counters → per-second rates: where a counter's previous value is kept and resets are handled.

A ``_count`` or ``_sum`` of a histogram or summary is a counter too: it gets its own rate and also feeds the
mean of its family (:class:`~engine.preparation.histograms.MeanGroup`).
"""

from __future__ import annotations

from typing import Final, cast

from engine.preparation.context import Context, Output
from engine.preparation.counts import Count
from engine.preparation.groups import Group
from engine.preparation.names import Role
from engine.preparation.tracks import Track
from engine.samples import Point

__all__ = ["CounterTrack"]

_CREATED_WINDOW_MS: Final = 5 * 60_000  # a created timestamp older than this says nothing about the rate now


class CounterTrack(Track):
    """Counters (and the _count / _sum halves of histograms and summaries, which also feed a mean)."""

    __slots__ = ("group", "histogram", "key", "last_v", "out")

    def __init__(
        self,
        name: str,
        service: str,
        instance: str,
        selector: str,
        role: Role,
        out: Output,
        group: Group | None,
        histogram: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(name, service, instance, selector, role)
        self.out = out
        self.group = group
        self.histogram = histogram  # the key of the classic histogram whose _count or _sum this is
        self.key: float | str = "sum" if role is Role.SUM else "count"
        self.last_v: float | None = None

    def feed(self, ctx: Context, samples: list[tuple[int, float]], created_ms: int) -> None:
        last_ts = self.last_ts
        last_v = self.last_v
        group = self.group
        histogram = self._histogram(ctx)
        counted = self.key == "count"
        new: list[Point] = []
        if last_v is not None and created_ms > last_ts:  # created anew since our last sample
            last_v = None
            ctx.count(Count.COUNTER_RESET)
        for ts, v in samples:
            if ts <= last_ts:
                ctx.disorder(ts == last_ts)
                continue
            if v - v:
                if ctx.nonfinite(v):
                    if last_v is not None:
                        new.append((ts, None))
                    if group is not None:
                        self.last_ts = ts
                        group.add(ctx, ts, self, None)
                        if histogram is not None:
                            histogram.note(ctx, ts, counted)
                    last_v = None
                    last_ts = ts
                continue
            if last_v is None:
                if 0 < created_ms < ts and ts - created_ms <= _CREATED_WINDOW_MS:
                    new.append((ts, v * 1000.0 / (ts - created_ms)))
                else:
                    ctx.count(Count.FIRST_SAMPLE)
            else:
                increase = v - last_v
                if increase < 0:
                    increase = v
                    ctx.count(Count.COUNTER_RESET)
                new.append((ts, increase * 1000.0 / (ts - last_ts)))
            if group is not None:
                self.last_ts = ts
                group.add(ctx, ts, self, v)
                if histogram is not None:
                    histogram.note(ctx, ts, counted)
            last_ts = ts
            last_v = v
        self.last_ts = last_ts
        self.last_v = last_v
        if new:
            ctx.emit(self.out, new)

    def _histogram(self, ctx: Context) -> Group | None:
        """The group of this _count's or _sum's classic histogram, if it has buckets (not a summary)."""
        if self.histogram is None:
            return None
        return cast(Group | None, ctx.find_group(self.histogram))

    def release(self, ctx: Context) -> None:
        super().release(ctx)
        ctx.release(self.out)
        if self.group is not None:
            self.group.leave(ctx, self)
