"""Series preparation: rates, histogram quantiles, staleness, naming, types, memory bounds."""

from __future__ import annotations

import doctest
import math
import struct
from collections.abc import Sequence
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine.preparation.names
import engine.preparation.quantiles
from engine.config import LabelsConfig
from engine.preparation import Count, Prepared, Preparer
from engine.raw import Labels, MetricKind, NativeHistogram, RawSeries, WriteRequest
from engine.samples import Point

STALE = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
T0 = 1_700_000_000_000
S = 15_000  # scrape interval, ms


def labels(name: str, job: str | None = "api", instance: str | None = "a:1", **extra: str) -> Labels:
    pairs = {"__name__": name, **extra}
    if job is not None:
        pairs["job"] = job
    if instance is not None:
        pairs["instance"] = instance
    return tuple(sorted(pairs.items()))


def raw(
    name: str,
    samples: Sequence[tuple[int, float]],
    job: str | None = "api",
    instance: str | None = "a:1",
    **extra: str,
) -> RawSeries:
    return RawSeries(labels(name, job, instance, **extra), list(samples))


def preparer(default_service: str | None = None, **kwargs: int) -> Preparer:
    return Preparer(LabelsConfig(default_service=default_service), (0.5, 0.9, 0.99), **kwargs)


def run(p: Preparer, *series: RawSeries, metadata: dict[str, MetricKind] | None = None) -> Prepared:
    return p.prepare(WriteRequest(list(series), metadata or {}))


def by_metric(prepared: Prepared) -> dict[str, list[Point]]:
    out: dict[str, list[Point]] = {}
    for s in prepared.series:
        assert s.metric not in out, f"{s.metric} split over several Series"
        out[s.metric] = list(s.points)
    return out


def approx_points(points: list[Point]) -> list[tuple[int, object]]:
    return [(ts, None if v is None else pytest.approx(v)) for ts, v in points]


@pytest.mark.parametrize(
    "module", [engine.preparation.quantiles, engine.preparation.names], ids=lambda m: m.__name__
)
def test_doctests(module: ModuleType) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0


# --- gauges and counters ---


def test_gauge_passes_through_with_service_instance_and_selector() -> None:
    p = preparer()
    got = run(p, raw("temperature_celsius", [(T0, 21.5), (T0 + S, 22.0)], room="lab"))
    [s] = got.series
    assert (s.service, s.metric, s.instance) == ("api", 'temperature_celsius{room="lab"}', "a:1")
    assert list(s.points) == [(T0, 21.5), (T0 + S, 22.0)]
    assert got.counts == {}


def test_counter_rate_with_first_sample_and_reset() -> None:
    p = preparer()
    first = run(p, raw("http_requests_total", [(T0, 100.0)]))
    assert first.series == []
    assert first.counts == {Count.FIRST_SAMPLE: 1}
    got = run(p, raw("http_requests_total", [(T0 + S, 130.0), (T0 + 2 * S, 160.0), (T0 + 3 * S, 15.0)]))
    assert by_metric(got) == {
        "http_requests_total:rate": approx_points([(T0 + S, 2.0), (T0 + 2 * S, 2.0), (T0 + 3 * S, 1.0)])
    }
    assert got.counts == {Count.COUNTER_RESET: 1}


def test_created_timestamp_gives_a_rate_from_zero() -> None:
    p = preparer()
    s = raw("jobs_total", [(T0, 30.0)])
    s.created_ms = T0 - 10_000
    assert by_metric(run(p, s)) == {"jobs_total:rate": approx_points([(T0, 3.0)])}
    old = raw("jobs_total", [(T0, 30.0)], instance="b:1")
    old.created_ms = T0 - 3_600_000  # created long ago: the average since then says nothing about now
    assert run(p, old).series == []


def test_out_of_order_and_duplicates_are_dropped_and_counted() -> None:
    p = preparer()
    run(p, raw("up", [(T0, 1.0), (T0 + S, 1.0)]))
    got = run(p, raw("up", [(T0 + S, 1.0), (T0, 1.0), (T0 + 2 * S, 0.0), (T0 + 2 * S, 1.0)]))
    assert by_metric(got) == {"up": [(T0 + 2 * S, 0.0)]}
    assert got.counts == {Count.DUPLICATE: 2, Count.OUT_OF_ORDER: 1}


def test_points_of_one_series_are_grouped_and_ordered() -> None:
    p = preparer()
    got = run(
        p, raw("queue_depth", [(T0, 1.0)]), raw("queue_depth", [(T0 + S, 2.0)]), raw("other", [(T0, 0.0)])
    )
    assert by_metric(got) == {"queue_depth": [(T0, 1.0), (T0 + S, 2.0)], "other": [(T0, 0.0)]}


def test_nan_and_inf_samples_are_dropped_and_counted() -> None:
    p = preparer()
    got = run(
        p, raw("load", [(T0, math.nan), (T0 + S, math.inf), (T0 + 2 * S, -math.inf), (T0 + 3 * S, 0.5)])
    )
    assert by_metric(got) == {"load": [(T0 + 3 * S, 0.5)]}
    assert got.counts == {Count.NAN: 1, Count.INF: 2}


# --- staleness ---


def test_stale_marker_ends_a_gauge() -> None:
    p = preparer()
    got = run(p, raw("load", [(T0, 0.5), (T0 + S, STALE)]))
    assert by_metric(got) == {"load": [(T0, 0.5), (T0 + S, None)]}
    assert got.counts == {Count.STALE: 1}
    again = run(p, raw("load", [(T0 + 2 * S, STALE)]))  # already ended: nothing more to say
    assert again.series == []


def test_stale_marker_ends_a_counter_and_forgets_its_state() -> None:
    p = preparer()
    run(p, raw("x_total", [(T0, 10.0), (T0 + S, 40.0)]))
    got = run(p, raw("x_total", [(T0 + 2 * S, STALE)]))
    assert by_metric(got) == {"x_total:rate": [(T0 + 2 * S, None)]}
    after = run(p, raw("x_total", [(T0 + 3 * S, 100.0)]))
    assert after.series == []  # the series starts afresh: no rate from the value before the marker
    assert after.counts == {Count.FIRST_SAMPLE: 1}
    assert by_metric(run(p, raw("x_total", [(T0 + 4 * S, 115.0)]))) == {
        "x_total:rate": approx_points([(T0 + 4 * S, 1.0)])
    }


# --- classic histograms ---

BOUNDS = ("0.1", "0.5", "1", "+Inf")


def buckets(
    ts: int, counts: Sequence[float], name: str = "rpc_seconds", *, count: bool = True, **extra: str
) -> list[RawSeries]:
    """A classic histogram's buckets at ``ts``, then (unless ``count`` is false) its _count and _sum."""
    out = [raw(f"{name}_bucket", [(ts, c)], le=le, **extra) for le, c in zip(BOUNDS, counts, strict=True)]
    if count:
        out.append(raw(f"{name}_count", [(ts, counts[-1])], **extra))
        out.append(raw(f"{name}_sum", [(ts, counts[-1] * 0.25)], **extra))
    return out


def quantiles(prepared: Prepared) -> dict[str, list[Point]]:
    """The quantile series of ``prepared`` (not the _count's rate)."""
    return {metric: points for metric, points in by_metric(prepared).items() if ":p" in metric}


def quantile_counts(prepared: Prepared) -> dict[str, int]:
    """The counts of ``prepared`` but the first samples of _sum and _count, which always have their own."""
    return {k: n for k, n in prepared.counts.items() if k != Count.FIRST_SAMPLE}


def test_classic_histogram_quantiles_from_bucket_increments() -> None:
    p = preparer()
    assert run(p, *buckets(T0, [5, 10, 20, 30])).series == []
    got = quantiles(run(p, *buckets(T0 + S, [7, 16, 29, 40])))
    # increments 2, 6, 9, 10: p50 → rank 5 in (0.1, 0.5] → 0.1 + 0.4 * 3/4; p90 → rank 9 = top of (0.5, 1];
    # p99 → rank 9.9 lies in +Inf → the highest finite bound
    assert got == {
        "rpc_seconds:p50": approx_points([(T0 + S, 0.4)]),
        "rpc_seconds:p90": approx_points([(T0 + S, 1.0)]),
        "rpc_seconds:p99": approx_points([(T0 + S, 1.0)]),
    }


def test_histogram_quantiles_keep_labels_except_le() -> None:
    p = preparer()
    run(p, *buckets(T0, [0, 0, 0, 0], method="GET"))
    got = quantiles(run(p, *buckets(T0 + S, [1, 1, 1, 1], method="GET")))
    assert set(got) == {
        'rpc_seconds:p50{method="GET"}',
        'rpc_seconds:p90{method="GET"}',
        'rpc_seconds:p99{method="GET"}',
    }


def test_histogram_split_across_requests_is_computed_once_complete() -> None:
    p = preparer()
    run(p, *buckets(T0, [5, 10, 20, 30]))
    head, tail = buckets(T0 + S, [7, 16, 29, 40])[:2], buckets(T0 + S, [7, 16, 29, 40])[2:]
    assert run(p, *head).series == []
    got = by_metric(run(p, *tail))
    assert got["rpc_seconds:p50"] == approx_points([(T0 + S, 0.4)])


def test_histogram_buckets_from_two_shards_are_computed_once_all_are_there() -> None:
    p = preparer()
    for step, (low, high) in enumerate([([5, 10], [20, 30]), ([7, 16], [29, 40]), ([7, 16], [29, 40])]):
        ts = T0 + step * S
        first = run(
            p, *[raw("rpc_seconds_bucket", [(ts, c)], le=le) for le, c in zip(BOUNDS[:2], low, strict=True)]
        )
        assert first.series == []  # no +Inf, no _count yet: waits
        rest = [raw("rpc_seconds_bucket", [(ts, c)], le=le) for le, c in zip(BOUNDS[2:], high, strict=True)]
        got = run(p, *rest, raw("rpc_seconds_count", [(ts, high[-1])]), raw("rpc_seconds_sum", [(ts, 1.0)]))
        if step == 1:  # increments 2, 6, 9, 10 (step 0 is the baseline, decided by step 1's buckets)
            assert quantiles(got)["rpc_seconds:p50"] == approx_points([(ts, 0.4)])
        if step == 2:
            assert quantiles(got) == {}
            assert quantile_counts(got) == {Count.NO_TRAFFIC: 2}  # no quantiles, no mean


def test_a_later_timestamp_decides_a_histogram_timestamp_that_misses_buckets() -> None:
    p = preparer()
    run(p, *buckets(T0, [5, 10, 20, 30]))
    run(p, *buckets(T0 + S, [7, 16, 29, 40]))
    # T0+2S: the 0.5 bucket and the _count are missing; it waits
    partial = [s for s in buckets(T0 + 2 * S, [8, 17, 30, 41]) if dict(s.labels).get("le") != "0.5"]
    waiting = run(p, *[s for s in partial if not s.name.endswith("_count")])
    assert quantiles(waiting) == {}
    assert quantile_counts(waiting) == {}
    # a later timestamp of the histogram (here only its _count) decides it: a bucket of the previous
    # timestamp is missing, so it is dropped and counted, and the histogram carries on without that bucket
    later = run(p, raw("rpc_seconds_count", [(T0 + 3 * S, 42)]))
    assert quantiles(later) == {}
    assert quantile_counts(later) == {Count.INCOMPLETE_GROUP: 2}  # the quantiles and the mean (no _count)
    assert run(p, raw("rpc_seconds_bucket", [(T0 + 2 * S, 17)], le="0.5")).counts == {Count.LATE: 1}
    got = run(p, *[s for s in buckets(T0 + 3 * S, [9, 18, 31, 42]) if not s.name.endswith("_count")])
    # over the buckets it has in common with T0+2S: increments 1, 1, 1 → p50 in (0, 0.1]
    assert quantiles(got)["rpc_seconds:p50"] == approx_points([(T0 + 3 * S, 0.05)])


def test_buckets_that_never_share_a_timestamp_are_given_up_and_counted() -> None:
    # each bucket 7 ms after the previous one: every timestamp lacks +Inf or the buckets before it, and
    # the next one decides it
    p = preparer()
    request = [raw("rpc_seconds_bucket", [(T0 + j * 7, j + 1.0)], le=le) for j, le in enumerate(BOUNDS)]
    got = run(p, *request)
    assert got.series == []
    assert got.counts == {Count.INCOMPLETE_GROUP: 3}  # the last one still waits


def _histograms_waiting_at_once(methods: Sequence[str]) -> list[WriteRequest]:
    """Several histograms whose +Inf buckets always come one request late: all wait, then all complete."""
    requests = []
    for step in range(3):
        ts = T0 + step * S
        split = [buckets(ts, [1 + step, 2 + 3 * step, 3 + 5 * step, 4 + 7 * step], method=m) for m in methods]
        requests.append(WriteRequest([s for histogram in split for s in histogram[:3]]))
        requests.append(WriteRequest([s for histogram in split for s in histogram[3:]]))
    return requests


def test_two_preparers_fed_the_same_stream_give_identical_output() -> None:
    methods = [f"m{i:02}" for i in range(40)]
    first, second = preparer(), preparer()
    got = [first.prepare(request) for request in _histograms_waiting_at_once(methods)]
    assert got == [second.prepare(request) for request in _histograms_waiting_at_once(methods)]
    # the histograms are computed in the order they started waiting, not in an order of memory addresses
    p50s = [s.metric for s in got[-1].series if s.metric.startswith("rpc_seconds:p50")]
    assert p50s == [f'rpc_seconds:p50{{method="{m}"}}' for m in methods]


def test_histogram_without_traffic_gives_nothing() -> None:
    p = preparer()
    run(p, *buckets(T0, [5, 10, 20, 30]))
    got = run(p, *buckets(T0 + S, [5, 10, 20, 30]))
    assert quantiles(got) == {}
    assert got.counts == {Count.NO_TRAFFIC: 2}  # no quantiles, no mean


def test_histogram_with_only_the_inf_bucket_gives_no_quantile() -> None:
    p = preparer()
    run(p, raw("rpc_seconds_bucket", [(T0, 3)], le="+Inf"))
    assert run(p, raw("rpc_seconds_bucket", [(T0 + S, 9)], le="+Inf")).series == []


def test_histogram_reset_uses_the_new_counts() -> None:
    p = preparer()
    run(p, *buckets(T0, [50, 100, 200, 300]))
    got = run(p, *buckets(T0 + S, [2, 8, 9, 10]))
    assert by_metric(got)["rpc_seconds:p50"] == approx_points([(T0 + S, 0.1 + 0.4 * 3 / 6)])
    assert got.counts == {Count.COUNTER_RESET: 3}  # the buckets, the _count and the _sum


def test_histogram_timestamp_a_bucket_skipped_is_dropped() -> None:
    p = preparer()
    run(p, *buckets(T0, [5, 10, 20, 30]))
    partial = [s for s in buckets(T0 + S, [7, 16, 29, 40]) if dict(s.labels).get("le") != "1"]
    skipper = raw("rpc_seconds_bucket", [(T0 + 2 * S, 30)], le="1")  # sent T0+2S but never T0+S
    got = run(p, *partial, skipper)
    assert quantiles(got) == {}
    assert got.counts == {Count.INCOMPLETE_GROUP: 1}
    late = run(p, raw("rpc_seconds_bucket", [(T0 + S, 29)], le="0.5", instance="a:1"))
    assert late.counts == {Count.DUPLICATE: 1}


def test_histogram_sum_and_count_give_rates_and_mean() -> None:
    p = preparer()
    run(p, raw("rpc_seconds_sum", [(T0, 10.0)]), raw("rpc_seconds_count", [(T0, 100.0)]))
    got = by_metric(
        run(p, raw("rpc_seconds_count", [(T0 + S, 130.0)]), raw("rpc_seconds_sum", [(T0 + S, 13.0)]))
    )
    assert got == {
        "rpc_seconds_count:rate": approx_points([(T0 + S, 2.0)]),
        "rpc_seconds_sum:rate": approx_points([(T0 + S, 0.2)]),
        "rpc_seconds:mean": approx_points([(T0 + S, 0.1)]),
    }


def test_histogram_stale_markers_end_the_quantile_series() -> None:
    p = preparer()
    run(p, *buckets(T0, [5, 10, 20, 30]))
    run(p, *buckets(T0 + S, [7, 16, 29, 40]))
    got = quantiles(run(p, *buckets(T0 + 2 * S, [STALE] * 4)))
    assert got == {f"rpc_seconds:{q}": [(T0 + 2 * S, None)] for q in ("p50", "p90", "p99")}


def test_gauge_histogram_uses_absolute_counts() -> None:
    p = preparer()
    meta = {"queue_wait_seconds": MetricKind.GAUGE_HISTOGRAM}
    first = run(p, *buckets(T0, [2, 6, 9, 10], name="queue_wait_seconds", count=False), metadata=meta)
    assert first.series == []  # the first timestamp is decided by the next: which buckets exist?
    got = by_metric(run(p, *buckets(T0 + S, [1, 1, 1, 2], name="queue_wait_seconds", count=False)))
    assert got["queue_wait_seconds:p50"] == approx_points([(T0, 0.4), (T0 + S, 0.1)])


# --- native histograms ---


def native(
    ts: int, counts: Sequence[float], *, schema: int = 0, sum_: float = 0.0, **kw: object
) -> NativeHistogram:
    fields: dict[str, object] = {
        "timestamp_ms": ts,
        "schema": schema,
        "zero_threshold": 1e-3,
        "zero_count": 0.0,
        "count": float(sum(counts)),
        "sum": sum_,
        "positive_spans": ((1, len(counts)),),
        "positive_counts": tuple(float(c) for c in counts),
    }
    fields.update(kw)
    return NativeHistogram(**fields)  # type: ignore[arg-type]


def native_series(*hs: NativeHistogram, name: str = "rpc_duration_seconds") -> RawSeries:
    return RawSeries(labels(name), histograms=list(hs))


def test_native_histogram_quantiles_rate_and_mean() -> None:
    p = preparer()
    assert run(p, native_series(native(T0, [2, 2], sum_=10.0))).series == []
    got = by_metric(run(p, native_series(native(T0 + S, [6, 6], sum_=30.0))))
    # increment: 4 in (1, 2], 4 in (2, 4]; p50 → the boundary 2; p90 → 90 % of the way through (2, 4] on a
    # log scale: 2 ** 1.8; p99 → 2 ** 1.98
    assert got == {
        "rpc_duration_seconds:p50": approx_points([(T0 + S, 2.0)]),
        "rpc_duration_seconds:p90": approx_points([(T0 + S, 2**1.8)]),
        "rpc_duration_seconds:p99": approx_points([(T0 + S, 2**1.98)]),
        "rpc_duration_seconds:rate": approx_points([(T0 + S, 8 / 15)]),
        "rpc_duration_seconds:mean": approx_points([(T0 + S, 2.5)]),
    }


def test_native_histogram_zero_and_negative_buckets() -> None:
    p = Preparer(LabelsConfig(), (0.25, 0.5))
    run(p, native_series(native(T0, [0])))
    zero = native(T0 + S, [4], zero_count=4.0, count=8.0)
    got = by_metric(run(p, native_series(zero)))
    # only positive buckets: the zero bucket is [0, 0.001], so p25 is halfway through it, linearly
    assert got["rpc_duration_seconds:p25"] == approx_points([(T0 + S, 0.0005)])
    assert got["rpc_duration_seconds:p50"] == approx_points([(T0 + S, 1.0)])
    negative = native(
        T0 + 2 * S, [8], zero_count=4.0, count=16.0, negative_spans=((1, 1),), negative_counts=(4.0,)
    )
    got = by_metric(run(p, native_series(negative)))
    # increment: 4 in [-2, -1), 4 more in (1, 2]: p25 is halfway through [-2, -1) on a log scale
    assert got["rpc_duration_seconds:p25"] == approx_points([(T0 + 2 * S, -(2**0.5))])


def test_native_histogram_schema_change_falls_back_to_the_coarser_schema() -> None:
    p = preparer()
    run(p, native_series(native(T0, [1, 1], schema=1)))  # (1, 1.41], (1.41, 2]
    got = by_metric(run(p, native_series(native(T0 + S, [10], schema=0))))  # (1, 2]
    assert got["rpc_duration_seconds:p50"] == approx_points([(T0 + S, 2**0.5)])
    assert got["rpc_duration_seconds:rate"] == approx_points([(T0 + S, 8 / 15)])


def test_native_gauge_histogram_and_stale_marker() -> None:
    p = preparer()
    got = by_metric(run(p, native_series(native(T0, [4, 4], reset_hint=3))))
    assert got["rpc_duration_seconds:p50"] == approx_points([(T0, 2.0)])
    stale = run(p, native_series(native(T0 + S, [4, 4], reset_hint=3, sum=STALE)))
    assert by_metric(stale) == {
        f"rpc_duration_seconds:{name}": [(T0 + S, None)] for name in ("p50", "p90", "p99", "rate", "mean")
    }
    assert stale.counts == {Count.STALE: 1}


def test_native_histogram_ended_by_a_float_stale_marker() -> None:
    p = preparer()
    run(p, native_series(native(T0, [1, 1])))
    run(p, native_series(native(T0 + S, [2, 2])))
    got = run(p, RawSeries(labels("rpc_duration_seconds"), [(T0 + 2 * S, STALE)]))
    assert by_metric(got) == {
        f"rpc_duration_seconds:{name}": [(T0 + 2 * S, None)] for name in ("p50", "p90", "p99", "rate", "mean")
    }
    assert run(p, native_series(native(T0 + 3 * S, [3, 3]))).counts == {Count.FIRST_SAMPLE: 1}


def test_native_histogram_with_unsupported_schema_is_counted() -> None:
    p = preparer()
    got = run(p, native_series(native(T0, [1], schema=-53)))
    assert got.counts == {Count.HISTOGRAM_UNSUPPORTED: 1}


def test_classic_and_native_versions_of_one_histogram_do_not_duplicate_points() -> None:
    p = preparer()
    run(p, *buckets(T0, [0, 0, 0, 0], name="rpc_duration_seconds"), native_series(native(T0, [0, 0])))
    got = run(
        p, *buckets(T0 + S, [1, 2, 4, 4], name="rpc_duration_seconds"), native_series(native(T0 + S, [2, 2]))
    )
    p50 = [s for s in got.series if s.metric == "rpc_duration_seconds:p50"]
    assert len(p50) == 1
    assert len(p50[0].points) == 1
    assert got.counts[Count.COLLISION] == 4  # 3 quantiles and the mean


# --- summaries ---


def test_summary_quantiles_pass_through_and_sum_count_give_mean() -> None:
    p = preparer()
    meta = {"rpc_latency_seconds": MetricKind.SUMMARY}
    run(
        p,
        raw("rpc_latency_seconds_sum", [(T0, 1.0)]),
        raw("rpc_latency_seconds_count", [(T0, 10.0)]),
        metadata=meta,
    )
    got = by_metric(
        run(
            p,
            raw("rpc_latency_seconds", [(T0 + S, 0.25)], quantile="0.99"),
            raw("rpc_latency_seconds", [(T0 + S, 0.05)], quantile="0.5"),
            raw("rpc_latency_seconds", [(T0 + S, math.nan)], quantile="0.999"),  # no observations yet
            raw("rpc_latency_seconds_sum", [(T0 + S, 4.0)]),
            raw("rpc_latency_seconds_count", [(T0 + S, 40.0)]),
        )
    )
    assert got == {
        "rpc_latency_seconds:p99": [(T0 + S, 0.25)],
        "rpc_latency_seconds:p50": [(T0 + S, 0.05)],
        "rpc_latency_seconds_sum:rate": approx_points([(T0 + S, 0.2)]),
        "rpc_latency_seconds_count:rate": approx_points([(T0 + S, 2.0)]),
        "rpc_latency_seconds:mean": approx_points([(T0 + S, 0.1)]),
    }


# --- naming, services, types ---


def test_missing_service_label_is_dropped_and_counted() -> None:
    p = preparer()
    got = run(p, raw("up", [(T0, 1.0), (T0 + S, 1.0)], job=None))
    assert got.series == []
    assert got.counts == {Count.NO_SERVICE: 2}


def test_default_service_keeps_series_without_the_label() -> None:
    p = preparer(default_service="unlabelled")
    [s] = run(p, raw("up", [(T0, 1.0)], job=None, instance=None)).series
    assert (s.service, s.metric, s.instance) == ("unlabelled", "up", "")


def test_configured_service_and_instance_labels() -> None:
    p = Preparer(LabelsConfig(service="app", instance="pod"), (0.5,))
    [s] = run(p, raw("up", [(T0, 1.0)], app="shop", pod="shop-7f", job="kubernetes-pods")).series
    assert (s.service, s.metric, s.instance) == (
        "shop",
        'up{instance="a:1",job="kubernetes-pods"}',
        "shop-7f",
    )


def test_label_suffix_is_canonical_and_escaped() -> None:
    p = preparer()
    run(p, raw("http_requests_total", [(T0, 1.0)], method="GET", code="500", path='/a"b\\c'))
    got = run(p, raw("http_requests_total", [(T0 + S, 16.0)], method="GET", code="500", path='/a"b\\c'))
    [s] = got.series
    assert s.metric == 'http_requests_total:rate{code="500",method="GET",path="/a\\"b\\\\c"}'


def test_created_series_are_dropped() -> None:
    p = preparer()
    got = run(p, raw("http_requests_created", [(T0, 1.7e9)]))
    assert got.series == []
    assert got.counts == {Count.CREATED: 1}


def test_metadata_from_an_earlier_request_decides_the_type() -> None:
    p = preparer()
    run(p, metadata={"temperature": MetricKind.COUNTER, "queue": MetricKind.GAUGE})
    run(p, raw("temperature", [(T0, 1.0)]), raw("queue_total", [(T0, 5.0)]))
    got = by_metric(run(p, raw("temperature", [(T0 + S, 4.0)]), raw("queue_total", [(T0 + S, 7.0)])))
    assert got == {"temperature:rate": approx_points([(T0 + S, 0.2)]), "queue_total": [(T0 + S, 7.0)]}


def test_later_metadata_retypes_a_tracked_series() -> None:
    p = preparer()
    assert by_metric(run(p, raw("bytes_read", [(T0, 100.0)]))) == {"bytes_read": [(T0, 100.0)]}
    got = run(p, raw("bytes_read", [(T0 + S, 400.0)]), metadata={"bytes_read": MetricKind.COUNTER})
    assert got.series == []
    assert got.counts == {Count.RETYPED: 1, Count.FIRST_SAMPLE: 1}
    assert by_metric(run(p, raw("bytes_read", [(T0 + 2 * S, 700.0)]))) == {
        "bytes_read:rate": approx_points([(T0 + 2 * S, 20.0)])
    }


def test_series_kind_wins_and_unknown_falls_back_to_the_name() -> None:
    p = preparer()
    s = raw("errors_total", [(T0, 1.0)])
    s.kind = MetricKind.GAUGE
    assert by_metric(run(p, s)) == {"errors_total": [(T0, 1.0)]}
    u = raw("jobs_total", [(T0, 1.0), (T0 + S, 16.0)])
    u.kind = MetricKind.UNKNOWN
    assert by_metric(run(p, u)) == {"jobs_total:rate": approx_points([(T0 + S, 1.0)])}


# --- memory ---


def test_tracked_series_are_capped() -> None:
    p = preparer(max_series=3)
    got = run(p, *(raw("up", [(T0, 1.0)], instance=f"i{i}") for i in range(5)))
    assert len(got.series) == 3
    assert got.counts == {Count.SERIES_LIMIT: 2}
    assert p.tracked == 3


def test_idle_series_are_forgotten() -> None:
    p = preparer(forget_after_ms=60_000)
    run(p, raw("up", [(T0, 1.0)], instance="gone"), raw("up", [(T0, 1.0)], instance="alive"))
    assert p.tracked == 2
    for i in range(1, 8):
        run(p, raw("up", [(T0 + i * S, 1.0)], instance="alive"))
    assert p.tracked == 1


def test_forgotten_histogram_frees_its_group_and_outputs() -> None:
    p = preparer(forget_after_ms=60_000)
    run(p, *buckets(T0, [1, 2, 3, 4]), raw("rpc_seconds_sum", [(T0, 1.0)]))
    for i in range(1, 8):
        run(p, raw("up", [(T0 + i * S, 1.0)]))
    assert p.tracked == 1
    assert p.held["groups"] == 0
    assert p.held["outputs"] == 1


# --- invariants ---

_NAMES = ("g", "c_total", "h_bucket")


@st.composite
def _requests(draw: st.DrawFn) -> list[WriteRequest]:
    values = st.one_of(
        st.floats(min_value=0, max_value=1e6), st.sampled_from([math.nan, math.inf, STALE, 0.0])
    )
    out = []
    for _ in range(draw(st.integers(1, 6))):
        series = []
        for _ in range(draw(st.integers(0, 6))):
            name = draw(st.sampled_from(_NAMES))
            extra = {"le": draw(st.sampled_from(["1", "+Inf"]))} if name == "h_bucket" else {}
            ts = st.integers(T0, T0 + 20 * S)
            samples = draw(st.lists(st.tuples(ts, values), max_size=4))
            series.append(raw(name, samples, instance=draw(st.sampled_from(["a", "b"])), **extra))
        out.append(WriteRequest(series))
    return out


@settings(max_examples=200, deadline=None)
@given(_requests())
def test_prepared_points_are_strictly_increasing_and_finite(requests: list[WriteRequest]) -> None:
    p = preparer()
    last: dict[tuple[str, str, str], int] = {}
    for request in requests:
        for s in p.prepare(request).series:
            key = (s.service, s.metric, s.instance)
            assert s.points
            for ts, value in s.points:
                assert ts > last.get(key, -1)
                last[key] = ts
                assert value is None or math.isfinite(value)
