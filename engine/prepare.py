"""Series preparation: raw remote-write series in, the series Vigil's detectors learn from out.

One :class:`Preparer` lives in each receiver process (and later the PromQL poller). It is stateful across
requests — rates and histogram increments need the previous sample — and memory-bounded. Pure Python: no
I/O, no clock (time is the newest sample timestamp seen).

**Analysis key and instance.** The service is the value of the configured service label (``job`` by
default), the instance the value of the instance label (``instance``; ``""`` when absent). A series without
the service label is dropped (counted as ``no_service``) unless ``default_service`` is configured. Labels
with empty values count as absent, as in Prometheus.

**Derived metric names.** Every label other than ``__name__``, the service and instance labels, and the
``le`` / ``quantile`` label a histogram bucket / summary quantile is made of, is kept by appending a
canonical selector (sorted by name, values escaped as PromQL does), so each distinct series gets its own
model:

==========================================  =================================================================
input                                       prepared series
==========================================  =================================================================
gauge ``g{a="1"}``                          ``g{a="1"}``, values as they are
counter ``x_total{code="500"}``             ``x_total:rate{code="500"}``: per-second rate between consecutive
                                            samples, resets handled as ``rate()`` does (a drop means the
                                            counter restarted from 0); the first sample gives nothing, unless
                                            a created timestamp (remote-write 2.0) up to 5 minutes old lets
                                            the rate start from 0
classic histogram ``h_bucket{le=...}``      ``h:p50``, ``h:p90``, ``h:p99`` (the configured quantiles):
                                            ``histogram_quantile(q, rate(h_bucket[...]))`` over the bucket
                                            increments between consecutive timestamps
``h_count`` / ``h_sum`` (histogram or       ``h_count:rate``, ``h_sum:rate``, and ``h:mean`` = Δsum / Δcount
summary)                                    (the average observation, e.g. mean latency)
native histogram ``h``                      ``h:p50`` … from the increment between consecutive histograms
                                            (exponential interpolation as Prometheus 3), ``h:rate``
                                            (observations per second), ``h:mean``
summary ``s{quantile="0.99"}``              ``s:p99``, values as they are
``*_created`` series                        dropped
==========================================  =================================================================

Quantile suffixes are ``p`` and the percentage: 0.5 → ``p50``, 0.999 → ``p99.9``. An interval without
observations (no traffic) yields no quantile and no mean: never 0, never NaN.

**Types** come from the series' own metadata (remote-write 2.0), else from metadata of the family sent in
this or an earlier request (remote-write 1.0 sends it separately; it is remembered), else from the name:
``_total`` is a counter, ``_count`` / ``_sum`` are counter halves of a histogram or summary, ``_bucket``
with ``le`` a classic histogram bucket, a ``quantile`` label a summary quantile, anything else a gauge.
Metadata ``unknown`` means "not known" (the name decides); ``info`` and ``stateset`` are gauges. When
metadata arriving later changes how a tracked series is read, its state is dropped (``retyped``).

**Staleness.** A stale marker (NaN with the exact bits ``0x7ff0000000000002``) ends a series: every prepared
series derived from it gets a point with value ``None`` and its state is forgotten. Other NaN and ±Inf
samples are dropped and counted. Out-of-order and duplicate timestamps are dropped and counted, and the
points of one prepared series are strictly increasing in time, also across requests (when two sources
derive the same prepared series, e.g. a classic and a native version of one histogram, the first point
for a timestamp wins and the other is counted as ``collision``).

**Split histograms.** Prometheus shards series and sends 500 per request, so the buckets of one classic
histogram at one timestamp may arrive in several requests. They are collected per (histogram, timestamp)
and computed once every known bucket is there; a timestamp that some bucket skipped (that bucket already
sent a newer one), or that waited more than a minute of sample time, is computed if it still covers the
buckets of the previous timestamp, else dropped (``incomplete_group``).

**Memory.** At most ``max_series`` raw series are tracked (more are refused: ``series_limit``), and a series
that has not been seen for ``forget_after_ms`` of sample time is forgotten.
"""

from __future__ import annotations

import math
import re
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Final, cast

from engine.config import LabelsConfig
from engine.raw import Labels, MetricKind, NativeHistogram, RawSeries, WriteRequest
from engine.samples import Point, Series

__all__ = [
    "Count",
    "Prepared",
    "Preparer",
    "bucket_quantiles",
    "format_selector",
    "is_stale_nan",
    "native_quantile",
    "quantile_suffix",
]

_NEVER: Final = -(1 << 62)  # "no timestamp yet"; below any real one
_INF: Final = math.inf
_STALE_BITS: Final = struct.pack("<Q", 0x7FF0000000000002)
_pack_double: Final = struct.Struct("<d").pack
_CREATED_WINDOW_MS: Final = 5 * 60_000  # a created timestamp older than this says nothing about the rate now
_MAX_WAIT_MS: Final = 60_000  # how long (sample time) a histogram timestamp waits for missing buckets
_MAX_PENDING: Final = 8  # timestamps a histogram may have waiting at once
_IDLE_TICKS: Final = 4  # a series untouched for this many ticks (forget_after_ms / 4 each) is forgotten
_MAX_FAMILIES: Final = 100_000  # remembered metadata entries
_FAMILY_SUFFIXES: Final = ("_total", "_bucket", "_count", "_sum", "_created", "_gcount", "_gsum", "_info")
_LEGACY_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_SMALL_DELTA: Final = 1e-12  # Prometheus' smallDeltaTolerance for bucket counts
_MIN_NORMAL: Final = sys.float_info.min


class Count(StrEnum):
    """What :meth:`Preparer.prepare` counts (keys of :attr:`Prepared.counts`), in samples or events."""

    NO_NAME = "no_name"  #: series without ``__name__``: dropped
    NO_SERVICE = "no_service"  #: series without the service label (and no default): dropped
    CREATED = "created_series"  #: ``*_created`` series: dropped
    BAD_LABEL = "bad_label"  #: ``le`` / ``quantile`` label that is not a number: dropped
    SERIES_LIMIT = "series_limit"  #: new series refused, ``max_series`` already tracked
    RETYPED = "retyped"  #: tracked series whose state was dropped because new metadata changed its type
    OUT_OF_ORDER = "out_of_order"
    DUPLICATE = "duplicate"
    STALE = "stale"  #: stale markers seen
    NAN = "nan"  #: NaN samples that are not stale markers: dropped
    INF = "inf"  #: ±Inf samples: dropped
    FIRST_SAMPLE = "first_sample"  #: counter samples without a predecessor: no rate yet
    COUNTER_RESET = "counter_reset"
    NO_TRAFFIC = "no_traffic"  #: intervals without observations: no quantile, no mean
    INCOMPLETE_GROUP = "incomplete_group"  #: histogram timestamps missing buckets (or _sum/_count): dropped
    LATE = "late"  #: bucket or _sum/_count samples for a timestamp already computed: dropped
    HISTOGRAM_INVALID = "histogram_invalid"  #: native histograms that are malformed or non-finite: dropped
    HISTOGRAM_UNSUPPORTED = "histogram_unsupported"  #: native histograms with a schema not in -4..8
    HISTOGRAM_INCOMPATIBLE = "histogram_incompatible"  #: intervals whose zero bucket width changed: skipped
    COLLISION = "collision"  #: derived points for a timestamp another source already gave


@dataclass(slots=True)
class Prepared:
    """The outcome of one request: prepared series and what happened on the way (non-zero counts only)."""

    series: list[Series]
    counts: dict[str, int]

    @property
    def points(self) -> int:
        return sum(len(s.points) for s in self.series)


# --- small pure helpers ---------------------------------------------------------------------------------


def is_stale_nan(value: float) -> bool:
    """Whether ``value`` is Prometheus' stale marker, a NaN with one exact bit pattern.

    >>> is_stale_nan(struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0])
    True
    >>> is_stale_nan(math.nan), is_stale_nan(1.0)
    (False, False)
    """
    return _pack_double(value) == _STALE_BITS


def quantile_suffix(q: float) -> str:
    """The name suffix of quantile ``q``: ``p`` and the percentage, without float noise.

    >>> [quantile_suffix(q) for q in (0.5, 0.9, 0.99, 0.999, 0.25, 0.001)]
    ['p50', 'p90', 'p99', 'p99.9', 'p25', 'p0.1']
    """
    return "p" + f"{q * 100:.6f}".rstrip("0").rstrip(".")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_selector(labels: Iterable[tuple[str, str]]) -> str:
    r"""Labels as a canonical PromQL selector: sorted by name, values escaped, ``""`` when there are none.

    Label names that are not legacy identifiers are quoted, as Prometheus 3 writes UTF-8 names.

    >>> format_selector([("method", "GET"), ("code", "500")])
    '{code="500",method="GET"}'
    >>> print(format_selector([("path", 'say "hi"\n'), ("k8s.pod", "a")]))
    {"k8s.pod"="a",path="say \"hi\"\n"}
    >>> format_selector([])
    ''
    """
    parts = [
        f'{name if _LEGACY_NAME.fullmatch(name) else chr(34) + _escape(name) + chr(34)}="{_escape(value)}"'
        for name, value in sorted(labels)
    ]
    return "{" + ",".join(parts) + "}" if parts else ""


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
    prev = counts[0]
    for i in range(1, len(counts)):  # ensureMonotonicAndIgnoreSmallDeltas
        cur = counts[i]
        if cur == prev:
            continue
        if _almost_equal(prev, cur, _SMALL_DELTA) or cur < prev:
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


# --- series roles ---------------------------------------------------------------------------------------


class _Role(Enum):
    GAUGE = "gauge"
    COUNTER = "counter"
    COUNT = "count"  # _count of a histogram or summary: rate, and half of the mean
    SUM = "sum"
    BUCKET = "bucket"
    GAUGE_BUCKET = "gauge_bucket"  # bucket of a gauge histogram: quantiles of the absolute counts
    SUMMARY_QUANTILE = "summary_quantile"
    CREATED = "created"


_GAUGE_KINDS: Final = frozenset({MetricKind.GAUGE, MetricKind.INFO, MetricKind.STATESET})


def _role(name: str, has_le: bool, has_quantile: bool, kind: MetricKind | None) -> tuple[_Role, str]:
    """How a series is read and the family its derived names start with.

    >>> _role("http_requests_total", False, False, None)
    (<_Role.COUNTER: 'counter'>, 'http_requests_total')
    >>> _role("latency_seconds_bucket", True, False, None)
    (<_Role.BUCKET: 'bucket'>, 'latency_seconds')
    >>> _role("rpc_seconds", False, True, MetricKind.SUMMARY)
    (<_Role.SUMMARY_QUANTILE: 'summary_quantile'>, 'rpc_seconds')
    >>> _role("temperature", False, False, MetricKind.COUNTER)
    (<_Role.COUNTER: 'counter'>, 'temperature')
    """
    if kind in _GAUGE_KINDS:
        return _Role.GAUGE, name
    if kind is None or kind is MetricKind.SUMMARY or kind is MetricKind.HISTOGRAM:
        if name.endswith("_created"):
            return _Role.CREATED, name
        if has_quantile and kind is not MetricKind.HISTOGRAM:
            return _Role.SUMMARY_QUANTILE, name
        if has_le and name.endswith("_bucket") and kind is not MetricKind.SUMMARY:
            return _Role.BUCKET, name[: -len("_bucket")]
        if kind is None and name.endswith("_total"):
            return _Role.COUNTER, name
        if name.endswith("_count"):
            return _Role.COUNT, name[: -len("_count")]
        if name.endswith("_sum"):
            return _Role.SUM, name[: -len("_sum")]
        return _Role.GAUGE, name  # e.g. the float samples of a native histogram series
    if kind is MetricKind.COUNTER:
        return (_Role.CREATED if name.endswith("_created") else _Role.COUNTER), name
    if kind is MetricKind.GAUGE_HISTOGRAM and has_le and name.endswith("_bucket"):
        return _Role.GAUGE_BUCKET, name[: -len("_bucket")]
    return _Role.GAUGE, name


# --- prepared outputs and per-series state --------------------------------------------------------------


class _Output:
    """One prepared series: where its points of the current request collect. Shared by every source."""

    __slots__ = ("instance", "last_ts", "metric", "points", "refs", "service")

    def __init__(self, service: str, metric: str, instance: str) -> None:
        self.service = service
        self.metric = metric
        self.instance = instance
        self.points: list[Point] | None = None
        self.last_ts = _NEVER
        self.refs = 0


class _Track:
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

    def __init__(self, name: str, service: str, instance: str, selector: str, role: _Role | None) -> None:
        self.name = name
        self.service = service
        self.instance = instance
        self.selector = selector
        self.role = role
        self.shape = (False, False)  # (has le, has quantile): what retyping needs besides the name
        self.kind_in: MetricKind | None = None  # the series' own kind this was parsed with
        self.epoch = 0
        self.last_ts = _NEVER
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


class _DropTrack(_Track):
    __slots__ = ("reason",)

    def __init__(self, name: str, reason: Count, role: _Role | None = None) -> None:
        super().__init__(name, "", "", "", role)
        self.reason = reason

    def feed(self, p: Preparer, samples: list[tuple[int, float]], created_ms: int) -> None:
        p._count(self.reason, len(samples))

    def feed_histograms(self, p: Preparer, histograms: list[NativeHistogram]) -> int:
        p._count(self.reason, len(histograms))
        return _NEVER


class _GaugeTrack(_Track):
    """Gauges and summary quantiles: values pass through."""

    __slots__ = ("live", "out")

    def __init__(
        self, name: str, service: str, instance: str, selector: str, role: _Role, out: _Output
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
            out = self.out
            if out.points is None and new[0][0] > out.last_ts:  # the common case, inlined
                out.points = new
                out.last_ts = new[-1][0]
                p._touched.append(out)
            else:
                p._emit(out, new)

    def release(self, p: Preparer) -> None:
        super().release(p)
        p._release(self.out)


class _CounterTrack(_Track):
    """Counters (and the _count / _sum halves of histograms and summaries, which also feed a mean)."""

    __slots__ = ("group", "key", "last_v", "out")

    def __init__(
        self,
        name: str,
        service: str,
        instance: str,
        selector: str,
        role: _Role,
        out: _Output,
        group: _Group | None,
    ) -> None:
        super().__init__(name, service, instance, selector, role)
        self.out = out
        self.group = group
        self.key: float | str = "sum" if role is _Role.SUM else "count"
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
            out = self.out
            if out.points is None and new[0][0] > out.last_ts:  # the common case, inlined
                out.points = new
                out.last_ts = new[-1][0]
                p._touched.append(out)
            else:
                p._emit(out, new)

    def release(self, p: Preparer) -> None:
        super().release(p)
        p._release(self.out)
        if self.group is not None:
            self.group.leave(self)
            p._unref_group(self.group)


class _BucketTrack(_Track):
    """One ``_bucket{le=...}`` series: its samples go to the histogram's group."""

    __slots__ = ("group", "key")

    def __init__(
        self, name: str, service: str, instance: str, selector: str, role: _Role, group: _Group, le: float
    ) -> None:
        super().__init__(name, service, instance, selector, role)
        self.group = group
        self.key: float | str = le

    def feed(self, p: Preparer, samples: list[tuple[int, float]], created_ms: int) -> None:
        group = self.group
        for ts, v in samples:
            if ts <= self.last_ts:
                p._disorder(ts == self.last_ts)
                continue
            self.last_ts = ts
            if v - v:
                if p._nonfinite(v):
                    group.add(p, ts, self, None)
                continue
            group.add(p, ts, self, v)

    def release(self, p: Preparer) -> None:
        super().release(p)
        self.group.leave(self)
        p._unref_group(self.group)


_Member = _CounterTrack | _BucketTrack
_Row = dict[float | str, float]
_PendingRow = dict[float | str, float | None]  # None: that member's stale marker


class _Group:
    """Series that are computed together per timestamp: the buckets of a histogram, or a _sum/_count pair.

    Their samples may arrive in different requests; a timestamp is computed once every member has sent it
    (or will not send it anymore), in time order.
    """

    __slots__ = ("done_ts", "key", "live", "members", "newest", "outs", "pending", "prev", "refs")

    required: frozenset[float | str] = frozenset()

    def __init__(self, key: tuple[str, ...], outs: list[_Output]) -> None:
        self.key = key
        self.outs = outs
        self.members: dict[float | str, _Member] = {}
        self.pending: dict[int, _PendingRow] = {}
        self.prev: _Row | None = None
        self.done_ts = _NEVER
        self.newest = _NEVER
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


class _QuantileGroup(_Group):
    """The buckets of one classic histogram → its quantile series."""

    __slots__ = ("absolute", "qs")

    required = frozenset({_INF})

    def __init__(
        self, key: tuple[str, ...], outs: list[_Output], qs: tuple[float, ...], absolute: bool
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


class _MeanGroup(_Group):
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


@dataclass(slots=True)
class _Hist:
    """A native histogram with buckets as {index: count} (absolute counts, or an increment)."""

    schema: int
    zero_threshold: float
    zero_count: float
    count: float
    sum: float
    positive: dict[int, float]
    negative: dict[int, float]


def _expand(spans: Sequence[tuple[int, int]], counts: Sequence[float]) -> dict[int, float] | None:
    """Span-encoded buckets → {index: count}; ``None`` when spans and counts disagree.

    >>> _expand([(-1, 2), (3, 1)], [1.0, 2.0, 3.0])
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


def _bucket_list(h: _Hist) -> list[tuple[float, float, float]]:
    """The non-empty buckets of ``h`` as ascending ``(lower, upper, count)``, the zero bucket clipped.

    >>> h = _Hist(0, 0.5, 1.0, 3.0, 2.0, {1: 2.0, 2: 0.0}, {})
    >>> _bucket_list(h)
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


def _increase(prev: _Hist, cur: _Hist, reset_hint: bool) -> tuple[_Hist, bool] | None:
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
    return _Hist(schema, cur.zero_threshold, zero_count, count, sum_, positive, negative), False


class _Native:
    """The native-histogram state of one series."""

    __slots__ = ("last_ts", "live", "mean_out", "prev", "prev_ts", "q_outs", "qs", "rate_out")

    def __init__(self, p: Preparer, track: _Track) -> None:
        name, sel, service, instance = track.name, track.selector, track.service, track.instance
        self.qs = p._quantiles
        self.q_outs = [p._acquire(service, f"{name}:{suffix}{sel}", instance) for suffix in p._suffixes]
        self.rate_out = p._acquire(service, f"{name}:rate{sel}", instance)
        self.mean_out = p._acquire(service, f"{name}:mean{sel}", instance)
        self.last_ts = _NEVER
        self.prev: _Hist | None = None
        self.prev_ts = _NEVER
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
            positive = _expand(h.positive_spans, h.positive_counts)
            negative = _expand(h.negative_spans, h.negative_counts)
            if positive is None or negative is None or not math.isfinite(h.count + h.zero_count):
                p._count(Count.HISTOGRAM_INVALID)
                continue
            cur = _Hist(h.schema, h.zero_threshold, h.zero_count, h.count, h.sum, positive, negative)
            self.live = True
            if h.reset_hint == 3 or kind is MetricKind.GAUGE_HISTOGRAM:  # gauge histogram: absolute
                self._quantiles(p, ts, cur)
                continue
            prev, prev_ts = self.prev, self.prev_ts
            self.prev, self.prev_ts = cur, ts
            if prev is None:
                p._count(Count.FIRST_SAMPLE)
                continue
            increase = _increase(prev, cur, h.reset_hint == 1)
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

    def _quantiles(self, p: Preparer, ts: int, h: _Hist) -> None:
        if not h.count > 0:
            p._count(Count.NO_TRAFFIC)
            return
        buckets = _bucket_list(h)
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


# --- the preparer ---------------------------------------------------------------------------------------


class Preparer:
    """Turns write requests into prepared series; keeps what that needs between requests.

    Not thread-safe: one per receiver (or poller) event loop.
    """

    def __init__(
        self,
        labels: LabelsConfig,
        quantiles: Sequence[float],
        *,
        max_series: int = 200_000,
        forget_after_ms: int = 15 * 60_000,
    ) -> None:
        qs = tuple(sorted(set(quantiles)))
        if not qs or any(not 0 < q < 1 for q in qs):
            raise ValueError("quantiles must be numbers between 0 and 1 (exclusive)")
        if max_series < 1 or forget_after_ms < 4:
            raise ValueError("max_series must be positive and forget_after_ms at least 4")
        self._service_label = labels.service
        self._instance_label = labels.instance
        self._default_service = labels.default_service
        self._quantiles = qs
        self._suffixes = tuple(quantile_suffix(q) for q in qs)
        self._max_series = max_series
        self._tick_ms = forget_after_ms // _IDLE_TICKS
        self._tracks: dict[Labels, _Track] = {}
        self._outputs: dict[tuple[str, str, str], _Output] = {}
        self._groups: dict[tuple[str, ...], _Group] = {}
        self._metadata: dict[str, MetricKind] = {}
        self._waiting: set[_Group] = set()  # groups with timestamps waiting for members
        self._touched: list[_Output] = []  # outputs with points in the current request
        self._counts: dict[str, int] = {}
        self._epoch = 0
        self._clock = _NEVER  # newest sample timestamp seen
        self._next_tick = _NEVER

    @property
    def tracked(self) -> int:
        """Raw series currently tracked (bounded by ``max_series``)."""
        return len(self._tracks)

    def prepare(self, request: WriteRequest) -> Prepared:
        """Prepare one request. Never raises for bad data: it is dropped and counted."""
        for out in self._touched:  # only left over if a previous call raised
            out.points = None
        self._touched = []
        if request.metadata:
            self._learn(request.metadata)
        tracks = self._tracks
        epoch = self._epoch
        clock = self._clock
        for s in request.series:
            track = tracks.get(s.labels)
            if track is None or (s.kind is not None and s.kind is not track.kind_in):
                track = self._track_for(s, track)
                if track is None:
                    continue
            track.epoch = epoch
            if s.samples:
                track.feed(self, s.samples, s.created_ms)
                if track.last_ts > clock:
                    clock = track.last_ts
            if s.histograms:
                clock = max(clock, track.feed_histograms(self, s.histograms))
        self._clock = clock
        if self._waiting:
            for group in list(self._waiting):
                group.flush(self)
        series = []
        for out in self._touched:
            assert out.points is not None
            series.append(Series(out.service, out.metric, out.instance, out.points))
            out.points = None
        self._touched = []
        counts, self._counts = self._counts, {}
        self._tick()
        return Prepared(series, counts)

    # --- helpers the tracks call ---

    def _count(self, key: Count, n: int = 1) -> None:
        self._counts[key] = self._counts.get(key, 0) + n

    def _disorder(self, duplicate: bool) -> None:
        self._count(Count.DUPLICATE if duplicate else Count.OUT_OF_ORDER)

    def _nonfinite(self, value: float) -> bool:
        """Count a NaN or ±Inf sample; ``True`` when it is a stale marker."""
        if value != value:
            if _pack_double(value) == _STALE_BITS:
                self._count(Count.STALE)
                return True
            self._count(Count.NAN)
        else:
            self._count(Count.INF)
        return False

    def _emit(self, out: _Output, new: list[Point]) -> None:
        """Add points (strictly increasing in time) to a prepared series."""
        if new[0][0] <= out.last_ts:
            last = out.last_ts
            kept = [point for point in new if point[0] > last]
            self._count(Count.COLLISION, len(new) - len(kept))
            if not kept:
                return
            new = kept
        out.last_ts = new[-1][0]
        if out.points is None:
            out.points = new
            self._touched.append(out)
        else:
            out.points.extend(new)

    def _kind_of(self, name: str) -> MetricKind | None:
        """The remembered metadata kind of a series name (its family's), ``None`` when unknown."""
        metadata = self._metadata
        kind = metadata.get(name)
        if kind is None:
            for suffix in _FAMILY_SUFFIXES:
                if name.endswith(suffix):
                    kind = metadata.get(name[: -len(suffix)])
                    break
        return None if kind is MetricKind.UNKNOWN else kind

    def _acquire(self, service: str, metric: str, instance: str) -> _Output:
        key = (service, metric, instance)
        out = self._outputs.get(key)
        if out is None:
            out = self._outputs[key] = _Output(service, metric, instance)
        out.refs += 1
        return out

    def _release(self, out: _Output) -> None:
        out.refs -= 1
        if out.refs <= 0:
            self._outputs.pop((out.service, out.metric, out.instance), None)

    def _group(self, key: tuple[str, ...], make: Callable[[], _Group]) -> _Group:
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = make()
        group.refs += 1
        return group

    def _unref_group(self, group: _Group) -> None:
        group.refs -= 1
        if group.refs <= 0:
            self._groups.pop(group.key, None)
            self._waiting.discard(group)
            for out in group.outs:
                self._release(out)

    # --- identity: parsed once per label set ---

    def _track_for(self, s: RawSeries, old: _Track | None) -> _Track | None:
        if old is not None:  # the series' own kind changed
            return self._retype(s.labels, old, s.kind)
        if len(self._tracks) >= self._max_series:
            self._count(Count.SERIES_LIMIT, len(s.samples) + len(s.histograms))
            return None
        track = self._parse(s.labels, s.kind)
        track.kind_in = s.kind
        track.epoch = self._epoch
        self._tracks[s.labels] = track
        return track

    def _retype(self, labels: Labels, old: _Track, series_kind: MetricKind | None) -> _Track:
        """Read a tracked series anew; its time order (and native histogram state) carries over."""
        native, old.native = old.native, None
        old.release(self)
        track = self._parse(labels, series_kind)
        track.kind_in = series_kind
        track.epoch = old.epoch
        track.last_ts = old.last_ts
        track.native = native
        self._tracks[labels] = track
        self._count(Count.RETYPED)
        return track

    def _parse(self, labels: Labels, series_kind: MetricKind | None) -> _Track:
        name = ""
        service: str | None = None
        instance = ""
        le: str | None = None
        quantile: str | None = None
        rest: list[tuple[str, str]] = []
        for key, value in labels:
            if not value:
                continue
            if key == "__name__":
                name = value
            elif key == self._service_label:
                service = value
            elif key == self._instance_label:
                instance = value
            else:
                if key == "le":
                    le = value
                elif key == "quantile":
                    quantile = value
                rest.append((key, value))
        if not name:
            return _DropTrack(name, Count.NO_NAME)
        if service is None:
            if self._default_service is None:
                return _DropTrack(name, Count.NO_SERVICE)
            service = self._default_service
        kind: MetricKind | None = series_kind if series_kind is not MetricKind.UNKNOWN else None
        if kind is None:
            kind = self._kind_of(name)
        role, family = _role(name, le is not None, quantile is not None, kind)
        track = self._build(role, name, family, service, instance, rest, le, quantile)
        track.shape = (le is not None, quantile is not None)
        return track

    def _build(
        self,
        role: _Role,
        name: str,
        family: str,
        service: str,
        instance: str,
        rest: list[tuple[str, str]],
        le: str | None,
        quantile: str | None,
    ) -> _Track:
        if role is _Role.CREATED:
            return _DropTrack(name, Count.CREATED, role)
        if role is _Role.BUCKET or role is _Role.GAUGE_BUCKET:
            sel = format_selector(kv for kv in rest if kv[0] != "le")
            bound = _parse_float(le)
            if bound is None:
                return _DropTrack(name, Count.BAD_LABEL, role)
            absolute = role is _Role.GAUGE_BUCKET
            q_key = ("q", service, family, instance, sel, "abs" if absolute else "inc")
            outs = [self._acquire(service, f"{family}:{suffix}{sel}", instance) for suffix in self._suffixes]
            group = self._group(q_key, lambda: _QuantileGroup(q_key, outs, self._quantiles, absolute))
            if group.outs is not outs:  # an existing group: give the extra references back
                for out in outs:
                    self._release(out)
            return _BucketTrack(name, service, instance, sel, role, group, bound)
        if role is _Role.SUMMARY_QUANTILE:
            sel = format_selector(kv for kv in rest if kv[0] != "quantile")
            q = _parse_float(quantile)
            if q is None or not 0 <= q <= 1:
                return _DropTrack(name, Count.BAD_LABEL, role)
            out = self._acquire(service, f"{family}:{quantile_suffix(q)}{sel}", instance)
            return _GaugeTrack(name, service, instance, sel, role, out)
        sel = format_selector(rest)
        if role is _Role.GAUGE:
            return _GaugeTrack(
                name, service, instance, sel, role, self._acquire(service, name + sel, instance)
            )
        out = self._acquire(service, f"{name}:rate{sel}", instance)
        mean: _Group | None = None
        if role is _Role.COUNT or role is _Role.SUM:
            key = ("mean", service, family, instance, sel)
            mean_out = self._acquire(service, f"{family}:mean{sel}", instance)
            mean = self._group(key, lambda: _MeanGroup(key, [mean_out]))
            if mean.outs[0] is not mean_out:
                self._release(mean_out)
        return _CounterTrack(name, service, instance, sel, role, out, mean)

    # --- metadata and memory ---

    def _learn(self, metadata: dict[str, MetricKind]) -> None:
        changed = False
        remembered = self._metadata
        for family, kind in metadata.items():
            if remembered.get(family) is not kind:
                remembered.pop(family, None)  # re-insert: dict order is the eviction order
                remembered[family] = kind
                changed = True
        if not changed:
            return
        while len(remembered) > _MAX_FAMILIES:
            del remembered[next(iter(remembered))]
        retyped = [
            labels
            for labels, track in self._tracks.items()
            if track.role is not None
            and track.kind_in is None
            and _role(track.name, *track.shape, self._kind_of(track.name))[0] is not track.role
        ]
        for labels in retyped:
            self._retype(labels, self._tracks[labels], None)

    def _tick(self) -> None:
        """Every ``forget_after_ms / 4`` of sample time: forget series untouched for four ticks."""
        if self._clock < self._next_tick:
            return
        if self._next_tick != _NEVER:
            self._epoch += 1
            cutoff = self._epoch - _IDLE_TICKS
            idle = [labels for labels, track in self._tracks.items() if track.epoch < cutoff]
            for labels in idle:
                self._tracks.pop(labels).release(self)
        self._next_tick = self._clock + self._tick_ms


def _parse_float(text: str | None) -> float | None:
    """A label value as a number (``+Inf`` included), ``None`` when it is not one or is NaN."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return None if value != value else value
