"""Series preparation: raw remote-write series in, the series Vigil's detectors learn from out.

A :class:`Preparer` keeps the state of the raw series it has seen (in the worker: one per sample key,
see :mod:`engine.bank`). It is stateful across requests — rates and histogram increments need the
previous sample — and memory-bounded. Pure Python: no I/O, no clock (time is the newest sample timestamp
seen).

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

**Split histograms.** Prometheus shards series and sends 500 per request, and ingest replicas split them
further, so the buckets of one classic histogram at one timestamp may arrive in several records. They are
collected per (histogram, timestamp) and computed when ``+Inf``, ``_count`` and every bucket seen at the
previous timestamp are there, or when a later timestamp of the histogram arrives (any bucket, ``_sum`` or
``_count``); then a timestamp missing a bucket of the previous one is dropped (``incomplete_group``) and
the histogram carries on from the buckets it had (see :mod:`engine.preparation.groups`).

**Memory.** At most ``max_series`` raw series are tracked (more are refused: ``series_limit``), and a series
that has not been seen for ``forget_after_ms`` of sample time is forgotten.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from engine.config import LabelsConfig
from engine.preparation import state
from engine.preparation.context import NEVER, Context
from engine.preparation.counters import CounterTrack
from engine.preparation.counts import Count
from engine.preparation.groups import Group
from engine.preparation.histograms import BucketTrack, MeanGroup, QuantileGroup
from engine.preparation.names import Role, format_selector, parse_float, quantile_suffix, role_of
from engine.preparation.tracks import DropTrack, GaugeTrack, Track
from engine.preparation.types import FamilyTypes
from engine.raw import Labels, MetricKind, RawSeries, WriteRequest
from engine.samples import Series

__all__ = ["Prepared", "Preparer"]

_IDLE_TICKS: Final = 4  # a series untouched for this many ticks (forget_after_ms / 4 each) is forgotten


@dataclass(slots=True)
class Prepared:
    """The outcome of one request: prepared series and what happened on the way (non-zero counts only)."""

    series: list[Series]
    counts: dict[str, int]

    @property
    def points(self) -> int:
        return sum(len(s.points) for s in self.series)


class Preparer:
    """Turns write requests into prepared series; keeps what that needs between requests.

    Not thread-safe: one per event loop. ``types`` may be shared by many preparers (metadata is per
    family, not per series); by default each has its own.
    """

    def __init__(
        self,
        labels: LabelsConfig,
        quantiles: Sequence[float],
        *,
        max_series: int = 200_000,
        forget_after_ms: int = 15 * 60_000,
        types: FamilyTypes | None = None,
    ) -> None:
        qs = tuple(sorted(set(quantiles)))
        if not qs or any(not 0 < q < 1 for q in qs):
            raise ValueError("quantiles must be numbers between 0 and 1 (exclusive)")
        if max_series < 1 or forget_after_ms < 4:
            raise ValueError("max_series must be positive and forget_after_ms at least 4")
        self._service_label = labels.service
        self._instance_label = labels.instance
        self._default_service = labels.default_service
        self._max_series = max_series
        self._tick_ms = forget_after_ms // _IDLE_TICKS
        self._ctx = Context(qs, types if types is not None else FamilyTypes())
        self._types_seen = self._ctx.types.generation
        self._tracks: dict[Labels, Track] = {}
        self._epoch = 0
        self._clock = NEVER  # newest sample timestamp seen
        self._next_tick = NEVER

    @property
    def tracked(self) -> int:
        """Raw series currently tracked (bounded by ``max_series``)."""
        return len(self._tracks)

    @property
    def held(self) -> dict[str, int]:
        """What this preparer holds: raw series, prepared series and groups (for metrics and tests)."""
        ctx = self._ctx
        return {"series": len(self._tracks), "outputs": len(ctx.outputs), "groups": len(ctx.groups)}

    def prepare(self, request: WriteRequest) -> Prepared:
        """Prepare one request. Never raises for bad data: it is dropped and counted."""
        ctx = self._ctx
        for out in ctx.touched:  # only left over if a previous call raised
            out.points = None
        ctx.touched = []
        if request.metadata:
            ctx.types.learn(request.metadata)
        if ctx.types.generation != self._types_seen:
            self._types_seen = ctx.types.generation
            self._retype_all()
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
                track.feed(ctx, s.samples, s.created_ms)
                if track.last_ts > clock:
                    clock = track.last_ts
            if s.histograms:
                clock = max(clock, track.feed_histograms(ctx, s.histograms))
        self._clock = clock
        if ctx.waiting:
            for group in list(ctx.waiting):
                group.flush(ctx)
        series = []
        for out in ctx.touched:
            assert out.points is not None
            series.append(Series(out.service, out.metric, out.instance, out.points))
            out.points = None
        ctx.touched = []
        counts, ctx.counts = ctx.counts, {}
        self._tick()
        return Prepared(series, counts)

    # --- identity: parsed once per label set ---

    def _track_for(self, s: RawSeries, old: Track | None) -> Track | None:
        if old is not None:  # the series' own kind changed
            return self._retype(s.labels, old, s.kind)
        if len(self._tracks) >= self._max_series:
            self._ctx.count(Count.SERIES_LIMIT, len(s.samples) + len(s.histograms))
            return None
        track = self._parse(s.labels, s.kind)
        track.kind_in = s.kind
        track.epoch = self._epoch
        self._tracks[s.labels] = track
        return track

    def _retype(self, labels: Labels, old: Track, series_kind: MetricKind | None) -> Track:
        """Read a tracked series anew; its time order (and native histogram state) carries over."""
        native, old.native = old.native, None
        old.release(self._ctx)
        track = self._parse(labels, series_kind)
        track.kind_in = series_kind
        track.epoch = old.epoch
        track.last_ts = old.last_ts
        track.native = native
        self._tracks[labels] = track
        self._ctx.count(Count.RETYPED)
        return track

    def _parse(self, labels: Labels, series_kind: MetricKind | None) -> Track:
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
            return DropTrack(name, Count.NO_NAME)
        if service is None:
            if self._default_service is None:
                return DropTrack(name, Count.NO_SERVICE)
            service = self._default_service
        kind: MetricKind | None = series_kind if series_kind is not MetricKind.UNKNOWN else None
        if kind is None:
            kind = self._ctx.kind_of(name)
        role, family = role_of(name, le is not None, quantile is not None, kind)
        track = self._build(role, name, family, service, instance, rest, le, quantile)
        track.shape = (le is not None, quantile is not None)
        return track

    def _build(
        self,
        role: Role,
        name: str,
        family: str,
        service: str,
        instance: str,
        rest: list[tuple[str, str]],
        le: str | None,
        quantile: str | None,
    ) -> Track:
        ctx = self._ctx
        if role is Role.CREATED:
            return DropTrack(name, Count.CREATED, role)
        if role is Role.BUCKET or role is Role.GAUGE_BUCKET:
            sel = format_selector(kv for kv in rest if kv[0] != "le")
            bound = parse_float(le)
            if bound is None:
                return DropTrack(name, Count.BAD_LABEL, role)
            absolute = role is Role.GAUGE_BUCKET
            q_key = ("q", service, family, instance, sel, "abs" if absolute else "inc")
            outs = [ctx.acquire(service, f"{family}:{suffix}{sel}", instance) for suffix in ctx.suffixes]
            group = ctx.group(q_key, lambda: QuantileGroup(q_key, outs, ctx.quantiles, absolute))
            if group.outs is not outs:  # an existing group: give the extra references back
                for out in outs:
                    ctx.release(out)
            return BucketTrack(name, service, instance, sel, role, group, bound)
        if role is Role.SUMMARY_QUANTILE:
            sel = format_selector(kv for kv in rest if kv[0] != "quantile")
            q = parse_float(quantile)
            if q is None or not 0 <= q <= 1:
                return DropTrack(name, Count.BAD_LABEL, role)
            out = ctx.acquire(service, f"{family}:{quantile_suffix(q)}{sel}", instance)
            return GaugeTrack(name, service, instance, sel, role, out)
        sel = format_selector(rest)
        if role is Role.GAUGE:
            return GaugeTrack(name, service, instance, sel, role, ctx.acquire(service, name + sel, instance))
        out = ctx.acquire(service, f"{name}:rate{sel}", instance)
        mean: Group | None = None
        if role is Role.COUNT or role is Role.SUM:
            key = ("mean", service, family, instance, sel)
            mean_out = ctx.acquire(service, f"{family}:mean{sel}", instance)
            mean = ctx.group(key, lambda: MeanGroup(key, [mean_out]))
            if mean.refs > 1:  # an existing group: give the extra reference back
                ctx.release(mean_out)
        histogram = ("q", service, family, instance, sel, "inc") if mean is not None else None
        return CounterTrack(name, service, instance, sel, role, out, mean, histogram)

    # --- metadata and memory ---

    def _retype_all(self) -> None:
        """Metadata changed: read anew the series whose role it changes."""
        kind_of = self._ctx.kind_of
        retyped = [
            labels
            for labels, track in self._tracks.items()
            if track.role is not None
            and track.kind_in is None
            and role_of(track.name, *track.shape, kind_of(track.name))[0] is not track.role
        ]
        for labels in retyped:
            self._retype(labels, self._tracks[labels], None)

    def _tick(self) -> None:
        """Every ``forget_after_ms / 4`` of sample time: forget series untouched for four ticks."""
        if self._clock < self._next_tick:
            return
        if self._next_tick != NEVER:
            self._epoch += 1
            cutoff = self._epoch - _IDLE_TICKS
            idle = [labels for labels, track in self._tracks.items() if track.epoch < cutoff]
            for labels in idle:
                self._tracks.pop(labels).release(self._ctx)
        self._next_tick = self._clock + self._tick_ms

    # --- checkpoints ---

    def state(self) -> dict[str, Any]:
        """Everything this preparer knows, as plain data (numbers, strings, lists): see :mod:`.state`."""
        return state.dump(self._tracks, self._ctx, [self._epoch, self._clock, self._next_tick])

    def restore(self, doc: Any) -> None:
        """Take the state of :meth:`state` back, into a fresh preparer; ``ValueError`` when it is damaged."""
        if self._tracks:
            raise ValueError("restore() needs a fresh preparer")
        try:
            self._epoch, self._clock, self._next_tick = (int(v) for v in doc["clock"])
            for labels, track_doc in state.tracks_of(doc):
                kind = track_doc.kind
                track = self._parse(labels, kind)
                track.kind_in = kind
                self._tracks[labels] = track
                if not state.apply_track(track, track_doc, self._ctx):
                    self._ctx.count(Count.RETYPED)
            state.apply_shared(doc, self._ctx)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            for track in self._tracks.values():
                track.release(self._ctx)
            self._tracks.clear()
            raise ValueError(f"preparation state is damaged: {exc!r}") from None
