"""One track per raw series: how it is read (labels are parsed once) and the state its next sample needs.

The kinds of track live beside what they compute: gauges and summary quantiles pass through (here),
counters become rates (:mod:`.counters`), classic histogram buckets go to their histogram's group
(:mod:`.histograms`), native histograms keep their previous histogram (:mod:`.native`).
"""

from __future__ import annotations

from engine.preparation.context import NEVER, Context, Output
from engine.preparation.counts import Count
from engine.preparation.names import Role
from engine.preparation.native import NativeState
from engine.raw import MetricKind, NativeHistogram
from engine.samples import Point

__all__ = ["DropTrack", "GaugeTrack", "Track"]


class Track:
    """One raw series: how it is read (cached, so labels are parsed once) and the state that needs.

    ``last_ts`` is the raw series' watermark: a sample at or before it is a duplicate or out of order.
    """

    __slots__ = (
        "epoch",
        "instance",
        "kind_in",
        "last_ts",
        "name",
        "native",
        "role",
        "selector",
        "service",
        "shape",
    )

    def __init__(self, name: str, service: str, instance: str, selector: str, role: Role | None) -> None:
        self.name = name
        self.service = service
        self.instance = instance
        self.selector = selector
        self.role = role
        self.shape = (False, False)  # (has le, has quantile): what retyping needs besides the name
        self.kind_in: MetricKind | None = None  # the series' own kind this was parsed with
        self.epoch = 0
        self.last_ts = NEVER
        self.native: NativeState | None = None

    def feed(self, ctx: Context, samples: list[tuple[int, float]], created_ms: int) -> None:
        raise NotImplementedError

    def feed_histograms(self, ctx: Context, histograms: list[NativeHistogram]) -> int:
        native = self.native
        if native is None:
            native = self.native = NativeState(ctx, self.name, self.selector, self.service, self.instance)
        return native.feed(ctx, histograms, self.kind_in or ctx.kind_of(self.name))

    def release(self, ctx: Context) -> None:
        if self.native is not None:
            self.native.release(ctx)
            self.native = None


class DropTrack(Track):
    __slots__ = ("reason",)

    def __init__(self, name: str, reason: Count, role: Role | None = None) -> None:
        super().__init__(name, "", "", "", role)
        self.reason = reason

    def feed(self, ctx: Context, samples: list[tuple[int, float]], created_ms: int) -> None:
        ctx.count(self.reason, len(samples))

    def feed_histograms(self, ctx: Context, histograms: list[NativeHistogram]) -> int:
        ctx.count(self.reason, len(histograms))
        return NEVER


class GaugeTrack(Track):
    """Gauges and summary quantiles: values pass through."""

    __slots__ = ("live", "out")

    def __init__(
        self, name: str, service: str, instance: str, selector: str, role: Role, out: Output
    ) -> None:
        super().__init__(name, service, instance, selector, role)
        self.out = out
        self.live = False

    def feed(self, ctx: Context, samples: list[tuple[int, float]], created_ms: int) -> None:
        last = self.last_ts
        live = self.live
        new: list[Point] = []
        for sample in samples:
            ts, v = sample
            if ts <= last:
                ctx.disorder(ts == last)
                continue
            if v - v:  # NaN or ±Inf (v - v is 0 for every finite v): rare, off the fast path
                if ctx.nonfinite(v):
                    if live:
                        new.append((ts, None))
                        live = False
                    if self.native is not None:  # Prometheus may end a histogram series with a float marker
                        self.native.end(ctx, ts)
                    last = ts
                continue
            new.append(sample)
            live = True
            last = ts
        self.last_ts = last
        self.live = live
        if new:
            ctx.emit(self.out, new)

    def release(self, ctx: Context) -> None:
        super().release(ctx)
        ctx.release(self.out)
