"""Wire format v2 of vigil.samples as the worker reads it: raw and prepared kinds, v1, strict checks."""

from __future__ import annotations

import math
import struct
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import BadRecord
from engine.raw import MetricKind, NativeHistogram, RawSeries
from engine.records import (
    MAX_BUCKETS,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    LabelCache,
    decode_record,
    encode_raw,
)
from engine.samples import PREPARED_KIND, RAW_KIND, Series, encode_batch

NOW = 1_700_000_000_000
FUTURE = 600_000


def decode(doc: Any) -> Any:
    raw = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return decode_record(raw, now_ms=NOW, max_future_ms=FUTURE)


def raw_record(*series: dict[str, Any]) -> dict[str, Any]:
    return {"v": 2, "kind": "raw", "series": list(series)}


def good(**extra: Any) -> dict[str, Any]:
    return {"labels": {"__name__": "x_total", "job": "api"}, "samples": [[NOW, 1.0]], **extra}


def is_stale(value: float) -> bool:
    return struct.pack("<d", value) == struct.pack("<Q", 0x7FF0000000000002)


def test_raw_series_become_raw_series_with_sorted_labels_and_stale_markers() -> None:
    doc = raw_record(
        {
            "labels": {"job": "api", "__name__": "x_total", "code": "500"},
            "samples": [[NOW, 1027], [NOW + 15_000, None]],
            "type": "counter",
            "created_ms": NOW - 60_000,
        }
    )
    got = decode(doc)
    assert got.kind == RAW_KIND
    assert got.rejected == []
    assert got.prepared == []
    [s] = got.raw
    assert s.labels == (("__name__", "x_total"), ("code", "500"), ("job", "api"))
    assert s.samples[0] == (NOW, 1027.0)
    assert type(s.samples[0][1]) is float
    assert is_stale(s.samples[1][1])
    assert (s.kind, s.created_ms) == (MetricKind.COUNTER, NOW - 60_000)


def test_native_histograms_with_a_null_sum_are_stale() -> None:
    h = {
        "timestamp_ms": NOW,
        "schema": 3,
        "zero_threshold": 1e-128,
        "zero_count": 0.0,
        "count": 12.0,
        "sum": None,
        "positive_spans": [[0, 2]],
        "positive_counts": [5.0, 7.0],
        "negative_spans": [],
        "negative_counts": [],
        "reset_hint": 0,
    }
    [s] = decode(raw_record({"labels": {"__name__": "h", "job": "a"}, "histograms": [h]})).raw
    [native] = s.histograms
    assert is_stale(native.sum)
    assert native.positive_spans == ((0, 2),)
    assert native.positive_counts == (5.0, 7.0)


def test_encode_raw_round_trips_and_drops_other_nan() -> None:
    stale = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
    series = RawSeries(
        (("__name__", "h_bucket"), ("job", "a"), ("le", "+Inf")),
        [(NOW, 1.0), (NOW + 1, math.nan), (NOW + 2, stale), (NOW + 3, math.inf)],
        [NativeHistogram(NOW, 0, 0.001, 1.0, 3.0, 2.0, ((0, 1),), (2.0,))],
        MetricKind.HISTOGRAM,
        NOW - 5,
    )
    [back] = decode(encode_raw([series])).raw
    assert back.labels == series.labels
    assert back.kind is MetricKind.HISTOGRAM
    assert len(back.samples) == 2
    assert back.samples[0] == (NOW, 1.0)
    assert is_stale(back.samples[1][1])
    assert back.histograms == series.histograms


@pytest.mark.parametrize("v", [1, 2])
def test_prepared_series_of_both_versions_are_read(v: int) -> None:
    series = {"service": "s", "metric": "m:rate", "instance": "i", "points": [[NOW, 0.5]]}
    doc: dict[str, Any] = {"v": v, "series": [series]}
    if v == 2:
        doc["kind"] = "prepared"
    got = decode(doc)
    assert got.kind == PREPARED_KIND
    assert got.prepared == [Series("s", "m:rate", "i", [(NOW, 0.5)])]
    assert decode(encode_batch(got.prepared)).prepared == got.prepared


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"v": 3, "kind": "raw", "series": []}', "unsupported wire version"),
        (b'{"v": true, "kind": "raw", "series": []}', "unsupported wire version"),
        (b'{"v": 2, "series": []}', "'kind' must be"),
        (b'{"v": 2, "kind": "cooked", "series": []}', "'kind' must be"),
        (b'{"v": 1, "kind": "raw", "series": []}', "version 1 record has no 'kind'"),
        (b'{"v": 2, "kind": "raw", "series": {}}', "'series' must be a list"),
        (b'{"v": 2, "kind": "raw", "series": [], "extra": 1}', "unknown record fields"),
        (b"[" * 5000 + b"]" * 5000, "not JSON"),  # nesting deeper than the parser takes
    ],
)
def test_broken_records_are_refused_whole_with_a_reason(doc: bytes, reason: str) -> None:
    with pytest.raises(BadRecord, match=reason):
        decode(doc)


HUGE = "x" * (MAX_LABEL_VALUE + 1)


BAD_SERIES: list[tuple[Any, str]] = [
    ("not an object", "series must be an object"),
    ({"samples": [[NOW, 1.0]]}, "'labels' must be an object"),
    ({"labels": ["__name__", "x"], "samples": []}, "'labels' must be an object"),
    ({"labels": {"job": "a"}, "samples": [[NOW, 1.0]]}, "non-empty '__name__'"),
    ({"labels": {"__name__": "x", "job": 1}, "samples": []}, "must be a string"),
    ({"labels": {"__name__": "x", "job": {"deep": {"er": []}}}, "samples": []}, "must be a string"),
    ({"labels": {"__name__": "x", "job": HUGE}, "samples": []}, "longer than"),
    ({"labels": {"__name__": "x", "y" * 2000: "a"}, "samples": []}, "label names must have"),
    ({"labels": {"__name__": "x", **{f"l{i}": "v" for i in range(MAX_LABELS)}}}, "labels, at most"),
    (good(type="countr"), "'type' must be one of"),
    (good(type=1), "'type' must be one of"),
    (good(created_ms=-1), "'created_ms'"),
    (good(created_ms=True), "'created_ms'"),
    (good(created_ms=NOW + 2 * FUTURE), "'created_ms'"),
    (good(samples={"a": 1}), "must be lists"),
    (good(unexpected=1), "unknown series fields"),
]


@pytest.mark.parametrize(("series", "reason"), BAD_SERIES)
def test_bad_raw_series_are_refused_with_a_reason_and_the_rest_is_kept(series: Any, reason: str) -> None:
    got = decode(raw_record(series, good()))
    assert len(got.raw) == 1  # the good one beside it
    [rejected] = got.rejected
    assert reason in rejected.reason
    assert rejected.payload == series


@pytest.mark.parametrize(("series", "reason"), BAD_SERIES)
def test_bad_raw_series_are_refused_every_time_through_a_label_cache(series: Any, reason: str) -> None:
    cache = LabelCache()
    for _ in range(3):
        got = decode_record(
            orjson.dumps(raw_record(series, good())), now_ms=NOW, max_future_ms=FUTURE, labels=cache
        )
        assert len(got.raw) == 1
        [rejected] = got.rejected
        assert reason in rejected.reason
    assert len(cache) == 1  # the good label set only: nothing refused is remembered


def test_a_label_cache_checks_a_label_set_once_and_hands_out_the_same_sorted_labels() -> None:
    cache = LabelCache()
    labels = {"job": "api", "__name__": "x_total", "code": "500"}
    records = [raw_record({"labels": labels, "samples": [[NOW + i, 1.0]]}) for i in range(2)]
    first, second = (
        decode_record(orjson.dumps(r), now_ms=NOW, max_future_ms=FUTURE, labels=cache) for r in records
    )
    assert first.raw[0].labels == (("__name__", "x_total"), ("code", "500"), ("job", "api"))
    assert second.raw[0].labels is first.raw[0].labels
    assert second.raw[0].samples == [(NOW + 1, 1.0)]
    reordered = raw_record({"labels": dict(reversed(labels.items())), "samples": [[NOW, 1.0]]})
    got = decode_record(orjson.dumps(reordered), now_ms=NOW, max_future_ms=FUTURE, labels=cache)
    assert got.raw[0].labels == first.raw[0].labels
    uncached = decode(records[0])
    assert uncached.raw == first.raw


def test_a_full_label_cache_starts_again_and_still_decodes_right() -> None:
    cache = LabelCache(limit=2)
    for i in range(5):
        doc = raw_record({"labels": {"__name__": "x", "job": f"j{i}"}, "samples": [[NOW, float(i)]]})
        [s] = decode_record(orjson.dumps(doc), now_ms=NOW, max_future_ms=FUTURE, labels=cache).raw
        assert s.labels == (("__name__", "x"), ("job", f"j{i}"))
        assert s.samples == [(NOW, float(i))]
        assert 1 <= len(cache) <= 2


@pytest.mark.parametrize(
    ("sample", "reason"),
    [
        ([NOW], "a sample must be"),
        ("1.0", "a sample must be"),
        ([NOW, True], "value must be a number"),
        ([True, 1.0], "timestamp must be"),
        ([-1, 1.0], "timestamp must be"),
        ([NOW * 1.0, 1.0], "timestamp must be"),
        ([NOW + 2 * FUTURE, 1.0], "too far in the future"),
        ([NOW, "1"], "value must be a number"),
        ([NOW, [1.0]], "value must be a number"),
        ([NOW, 2**62 * 3], "value must be a number"),  # beyond int64 (JSON parsers disagree on those)
    ],
)
def test_bad_samples_are_refused_and_the_good_ones_kept(sample: Any, reason: str) -> None:
    raw = orjson.dumps(raw_record(good(samples=[[NOW - 1, 1.0], sample])))
    got = decode(raw)
    [s] = got.raw
    assert s.samples == [(NOW - 1, 1.0)]
    [rejected] = got.rejected
    assert reason in rejected.reason
    assert rejected.payload["refused"] == [sample]


def native(**change: Any) -> dict[str, Any]:
    h: dict[str, Any] = {
        "timestamp_ms": NOW,
        "schema": 0,
        "zero_threshold": 0.001,
        "zero_count": 0.0,
        "count": 3.0,
        "sum": 1.0,
        "positive_spans": [[0, 1]],
        "positive_counts": [3.0],
        "negative_spans": [],
        "negative_counts": [],
        "reset_hint": 0,
    }
    h.update(change)
    return h


@pytest.mark.parametrize(
    ("h", "reason"),
    [
        ([], "must be an object"),
        ({k: v for k, v in native().items() if k != "count"}, "missing ['count']"),
        (native(extra=1), "unknown"),
        (native(schema=True), "schema"),
        (native(schema=99), "schema"),
        (native(reset_hint=7), "reset_hint"),
        (native(count=-1.0), "count must be"),
        (native(zero_count=False), "zero_count must be"),
        (native(sum="1"), "sum must be"),
        (native(positive_spans=[[0]]), "spans must be"),
        (native(positive_spans=[[0, 1.5]]), "spans must be"),
        (native(positive_counts=[True]), "counts must be"),
        (native(positive_counts=[1.0] * (MAX_BUCKETS + 1)), f"more than {MAX_BUCKETS}"),
        (native(timestamp_ms=NOW + 2 * FUTURE), "timestamp_ms"),
    ],
)
def test_bad_native_histograms_are_refused(h: Any, reason: str) -> None:
    got = decode(raw_record({"labels": {"__name__": "h", "job": "a"}, "histograms": [h, native()]}))
    [s] = got.raw
    assert len(s.histograms) == 1
    [rejected] = got.rejected
    assert reason in rejected.reason


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=30,
    )
)
def test_any_json_in_a_raw_record_is_decoded_or_refused_never_raises_otherwise(junk: Any) -> None:
    for doc in (junk, raw_record(junk), raw_record({"labels": {"__name__": "x"}, "samples": junk})):
        try:
            raw = orjson.dumps(doc)
        except (orjson.JSONEncodeError, TypeError):
            continue
        try:
            got = decode(raw)
        except BadRecord:
            continue
        for s in got.raw:
            assert all(type(ts) is int and type(v) is float for ts, v in s.samples)
