"""Native histograms → quantiles, rate and mean: the state of one native histogram series.

Each histogram is compared with the previous one of its series (the increment, as ``rate()`` has it); a
gauge histogram's own counts are the distribution now.
"""

from __future__ import annotations

import math

from engine.preparation.context import NEVER, Context
from engine.preparation.counts import Count
from engine.preparation.names import is_stale_nan
from engine.preparation.quantiles import Hist, bucket_list, expand_spans, hist_increase, native_quantile
from engine.raw import MetricKind, NativeHistogram

__all__ = ["NativeState"]


class NativeState:
    """The native-histogram state of one series."""

    __slots__ = ("last_ts", "live", "mean_out", "prev", "prev_ts", "q_outs", "qs", "rate_out")

    def __init__(self, ctx: Context, name: str, selector: str, service: str, instance: str) -> None:
        self.qs = ctx.quantiles
        self.q_outs = [
            ctx.acquire(service, f"{name}:{suffix}{selector}", instance) for suffix in ctx.suffixes
        ]
        self.rate_out = ctx.acquire(service, f"{name}:rate{selector}", instance)
        self.mean_out = ctx.acquire(service, f"{name}:mean{selector}", instance)
        self.last_ts = NEVER
        self.prev: Hist | None = None
        self.prev_ts = NEVER
        self.live = False

    def feed(self, ctx: Context, histograms: list[NativeHistogram], kind: MetricKind | None) -> int:
        for h in histograms:
            ts = h.timestamp_ms
            if ts <= self.last_ts:
                ctx.disorder(ts == self.last_ts)
                continue
            self.last_ts = ts
            if is_stale_nan(h.sum):
                ctx.count(Count.STALE)
                self.end(ctx, ts)
                continue
            if not -4 <= h.schema <= 8:
                ctx.count(Count.HISTOGRAM_UNSUPPORTED)
                continue
            positive = expand_spans(h.positive_spans, h.positive_counts)
            negative = expand_spans(h.negative_spans, h.negative_counts)
            if positive is None or negative is None or not math.isfinite(h.count + h.zero_count):
                ctx.count(Count.HISTOGRAM_INVALID)
                continue
            cur = Hist(h.schema, h.zero_threshold, h.zero_count, h.count, h.sum, positive, negative)
            self.live = True
            if h.reset_hint == 3 or kind is MetricKind.GAUGE_HISTOGRAM:  # gauge histogram: absolute
                self._quantiles(ctx, ts, cur)
                continue
            prev, prev_ts = self.prev, self.prev_ts
            self.prev, self.prev_ts = cur, ts
            if prev is None:
                ctx.count(Count.FIRST_SAMPLE)
                continue
            increase = hist_increase(prev, cur, h.reset_hint == 1)
            if increase is None:
                ctx.count(Count.HISTOGRAM_INCOMPATIBLE)
                continue
            delta, reset = increase
            if reset:
                ctx.count(Count.COUNTER_RESET)
            ctx.emit(self.rate_out, [(ts, delta.count * 1000.0 / (ts - prev_ts))])
            if not delta.count > 0:
                ctx.count(Count.NO_TRAFFIC)
                continue
            mean = delta.sum / delta.count
            if not mean - mean:
                ctx.emit(self.mean_out, [(ts, mean)])
            self._quantiles(ctx, ts, delta)
        return self.last_ts

    def _quantiles(self, ctx: Context, ts: int, h: Hist) -> None:
        if not h.count > 0:
            ctx.count(Count.NO_TRAFFIC)
            return
        buckets = bucket_list(h)
        for q, out in zip(self.qs, self.q_outs, strict=True):
            value = native_quantile(q, buckets, h.count, h.sum)
            if value is not None and not value - value:
                ctx.emit(out, [(ts, value)])

    def end(self, ctx: Context, ts: int) -> None:
        self.last_ts = max(self.last_ts, ts)
        if self.live:
            for out in (*self.q_outs, self.rate_out, self.mean_out):
                ctx.emit(out, [(ts, None)])
        self.live = False
        self.prev = None

    def release(self, ctx: Context) -> None:
        for out in (*self.q_outs, self.rate_out, self.mean_out):
            ctx.release(out)
