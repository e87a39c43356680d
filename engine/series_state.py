"""Per-series state of :mod:`engine.prepare`: one track per raw series, one output per prepared series.

A track caches how its series is read (labels are parsed once) and keeps what the next sample needs: the
previous counter value, the previous native histogram. Outputs collect the points of the current request
and are shared by every source deriving the same prepared series. Tracks call back into the
:class:`~engine.prepare.Preparer` that owns them to count, emit points and give outputs back.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

from engine.histograms import Hist, bucket_list, expand_spans, hist_increase, native_quantile
from engine.prepare_counts import Count
from engine.raw import MetricKind, NativeHistogram
from engine.samples import Point
from engine.series_names import Role, is_stale_nan

if TYPE_CHECKING:
    from engine.prepare import Preparer
    from engine.series_groups import Group

__all__ = ["NEVER", "BucketTrack", "CounterTrack", "DropTrack", "GaugeTrack", "Output", "Track"]

NEVER: Final = -(1 << 62)  # "no timestamp yet"; below any real one
_CREATED_WINDOW_MS: Final = 5 * 60_000  # a created timestamp older than this says nothing about the rate now


class Output:
    """One prepared series: where its points of the current request collect. Shared by every source."""

    __slots__ = ("instance", "last_ts", "metric", "points", "refs", "service")

    def __init__(self, service: str, metric: str, instance: str) -> None:
        self.service = service
        self.metric = metric
        self.instance = instance
        self.points: list[Point] | None = None
        self.last_ts = NEVER
        self.refs = 0


class Track:
    """One raw series: how it is read (cached, so labels are parsed once) and the state that needs."""

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
        self.native: _Native | None = None

    def feed(self, p: Preparer, samples: list[tuple[int, float]], created_ms: int) -> None:
        raise NotImplementedError

    def feed_histograms(self, p: Preparer, histograms: list[NativeHistogram]) -> int:
        native = self.native
        if native is None:
            native = self.native = _Native(p, self)
        return native.feed(p, histograms, self.kind_in or p._kind_of(self.name))

    def release(self, p: Preparer) -> None:
        if self.native is not None:
            self.native.release(p)
            self.native = None


class DropTrack(Track):
    __slots__ = ("reason",)

    def __init__(self, name: str, reason: Count, role: Role | None = None) -> None:
        super().__init__(name, "", "", "", role)
        self.reason = reason

    def feed(self, p: Preparer, samples: list[tuple[int, float]], created_ms: int) -> None:
        p._count(self.reason, len(samples))

    def feed_histograms(self, p: Preparer, histograms: list[NativeHistogram]) -> int:
        p._count(self.reason, len(histograms))
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

    def feed(self, p: Preparer, samples: list[tuple[int, float]], created_ms: int) -> None:
        last = self.last_ts
        live = self.live
        new: list[Point] = []
        for sample in samples:
            ts, v = sample
            if ts <= last:
                p._disorder(ts == last)
                continue
            if v - v:  # NaN or ±Inf (v - v is 0 for every finite v): rare, off the fast path
                if p._nonfinite(v):
                    if live:
                        new.append((ts, None))
                        live = False
                    if self.native is not None:  # Prometheus may end a histogram series with a float marker
                        self.native.end(p, ts)
                    last = ts
                continue
            new.append(sample)
            live = True
            last = ts
        self.last_ts = last
        self.live = live
        if new:
            p._emit(self.out, new)

    def release(self, p: Preparer) -> None:
        super().release(p)
        p._release(self.out)


class CounterTrack(Track):
    """Counters (and the _count / _sum halves of histograms and summaries, which also feed a mean)."""

    __slots__ = ("group", "key", "last_v", "out")

    def __init__(
        self,
        name: str,
        service: str,
        instance: str,
        selector: str,
        role: Role,
        out: Output,
        group: Group | None,
    ) -> None:
        super().__init__(name, service, instance, selector, role)
        self.out = out
        self.group = group
        self.key: float | str = "sum" if role is Role.SUM else "count"
        self.last_v: float | None = None

    def feed(self, p: Preparer, samples: list[tuple[int, float]], created_ms: int) -> None:
        last_ts = self.last_ts
        last_v = self.last_v
        group = self.group
        new: list[Point] = []
        if last_v is not None and created_ms > last_ts:  # created anew since our last sample
            last_v = None
            p._count(Count.COUNTER_RESET)
        for ts, v in samples:
            if ts <= last_ts:
                p._disorder(ts == last_ts)
                continue
            if v - v:
                if p._nonfinite(v):
                    if last_v is not None:
                        new.append((ts, None))
                    if group is not None:
                        self.last_ts = ts
                        group.add(p, ts, self, None)
                    last_v = None
                    last_ts = ts
                continue
            if last_v is None:
                if 0 < created_ms < ts and ts - created_ms <= _CREATED_WINDOW_MS:
                    new.append((ts, v * 1000.0 / (ts - created_ms)))
                else:
                    p._count(Count.FIRST_SAMPLE)
            else:
                increase = v - last_v
                if increase < 0:
                    increase = v
                    p._count(Count.COUNTER_RESET)
                new.append((ts, increase * 1000.0 / (ts - last_ts)))
            if group is not None:
                self.last_ts = ts
                group.add(p, ts, self, v)
            last_ts = ts
            last_v = v
        self.last_ts = last_ts
        self.last_v = last_v
        if new:
            p._emit(self.out, new)

    def release(self, p: Preparer) -> None:
        super().release(p)
        p._release(self.out)
        if self.group is not None:
            self.group.leave(self)
            p._unref_group(self.group)


class BucketTrack(Track):
    """One ``_bucket{le=...}`` series: its samples go to the histogram's group."""

    __slots__ = ("group", "key")

    def __init__(
        self, name: str, service: str, instance: str, selector: str, role: Role, group: Group, le: float
    ) -> None:
        super().__init__(name, service, instance, selector, role)
        self.group = group
        self.key: float | str = le

    def feed(self, p: Preparer, samples: list[tuple[int, float]], created_ms: int) -> None:
        self.group.collect(p, self, samples)

    def release(self, p: Preparer) -> None:
        super().release(p)
        self.group.leave(self)
        p._unref_group(self.group)


class _Native:
    """The native-histogram state of one series."""

    __slots__ = ("last_ts", "live", "mean_out", "prev", "prev_ts", "q_outs", "qs", "rate_out")

    def __init__(self, p: Preparer, track: Track) -> None:
        name, sel, service, instance = track.name, track.selector, track.service, track.instance
        self.qs = p._quantiles
        self.q_outs = [p._acquire(service, f"{name}:{suffix}{sel}", instance) for suffix in p._suffixes]
        self.rate_out = p._acquire(service, f"{name}:rate{sel}", instance)
        self.mean_out = p._acquire(service, f"{name}:mean{sel}", instance)
        self.last_ts = NEVER
        self.prev: Hist | None = None
        self.prev_ts = NEVER
        self.live = False

    def feed(self, p: Preparer, histograms: list[NativeHistogram], kind: MetricKind | None) -> int:
        for h in histograms:
            ts = h.timestamp_ms
            if ts <= self.last_ts:
                p._disorder(ts == self.last_ts)
                continue
            self.last_ts = ts
            if is_stale_nan(h.sum):
                p._count(Count.STALE)
                self.end(p, ts)
                continue
            if not -4 <= h.schema <= 8:
                p._count(Count.HISTOGRAM_UNSUPPORTED)
                continue
            positive = expand_spans(h.positive_spans, h.positive_counts)
            negative = expand_spans(h.negative_spans, h.negative_counts)
            if positive is None or negative is None or not math.isfinite(h.count + h.zero_count):
                p._count(Count.HISTOGRAM_INVALID)
                continue
            cur = Hist(h.schema, h.zero_threshold, h.zero_count, h.count, h.sum, positive, negative)
            self.live = True
            if h.reset_hint == 3 or kind is MetricKind.GAUGE_HISTOGRAM:  # gauge histogram: absolute
                self._quantiles(p, ts, cur)
                continue
            prev, prev_ts = self.prev, self.prev_ts
            self.prev, self.prev_ts = cur, ts
            if prev is None:
                p._count(Count.FIRST_SAMPLE)
                continue
            increase = hist_increase(prev, cur, h.reset_hint == 1)
            if increase is None:
                p._count(Count.HISTOGRAM_INCOMPATIBLE)
                continue
            delta, reset = increase
            if reset:
                p._count(Count.COUNTER_RESET)
            p._emit(self.rate_out, [(ts, delta.count * 1000.0 / (ts - prev_ts))])
            if not delta.count > 0:
                p._count(Count.NO_TRAFFIC)
                continue
            mean = delta.sum / delta.count
            if not mean - mean:
                p._emit(self.mean_out, [(ts, mean)])
            self._quantiles(p, ts, delta)
        return self.last_ts

    def _quantiles(self, p: Preparer, ts: int, h: Hist) -> None:
        if not h.count > 0:
            p._count(Count.NO_TRAFFIC)
            return
        buckets = bucket_list(h)
        for q, out in zip(self.qs, self.q_outs, strict=True):
            value = native_quantile(q, buckets, h.count, h.sum)
            if value is not None and not value - value:
                p._emit(out, [(ts, value)])

    def end(self, p: Preparer, ts: int) -> None:
        self.last_ts = max(self.last_ts, ts)
        if self.live:
            for out in (*self.q_outs, self.rate_out, self.mean_out):
                p._emit(out, [(ts, None)])
        self.live = False
        self.prev = None

    def release(self, p: Preparer) -> None:
        for out in (*self.q_outs, self.rate_out, self.mean_out):
            p._release(out)
