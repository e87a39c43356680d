from __future__ import annotations

import contextlib

import orjson
import pytest
from aiokafka.partitioner import murmur2 as kafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import BadRecord
from engine.samples import Series, analysis_key, decode_batch, encode_batch, murmur2, partition_for

NOW = 1_700_000_000_000
FUTURE = 600_000


def decode(raw: bytes | None) -> tuple[list[Series], list[object]]:
    kept, rejected = decode_batch(raw, now_ms=NOW, max_future_ms=FUTURE)
    return kept, list(rejected)


def test_round_trip_keeps_series_and_stale_markers() -> None:
    series = [Series("checkout", "latency:p99", "pod-a", [(NOW - 2000, 0.25), (NOW - 1000, None)])]
    kept, rejected = decode(encode_batch(series))
    assert rejected == []
    assert kept == [Series("checkout", "latency:p99", "pod-a", [(NOW - 2000, 0.25), (NOW - 1000, None)])]


@given(st.binary(max_size=64))
def test_our_murmur2_is_kafkas(data: bytes) -> None:
    assert murmur2(data) == kafka_murmur2(data) & 0x7FFFFFFF


def test_a_key_always_lands_in_the_same_partition() -> None:
    key = analysis_key("checkout", "http_requests_total:rate")
    assert {partition_for(key, 12) for _ in range(3)} == {partition_for(key, 12)}
    assert 0 <= partition_for(key, 12) < 12


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty record"),
        (b"\x00\xff\xfe garbage", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"v": 3, "series": []}', "unsupported wire version"),
        (b'{"v": 2, "series": []}', "'kind' must be"),
        (b'{"v": 1}', "'series' must be a list"),
        (b'{"v": 1, "series": [[NaN]]}', "not JSON"),
        (b'{"v": 1, "series": [{"points": [[1, 1e999]]}]}', "not JSON"),
        (b"{" * 100_000, "not JSON"),
    ],
)
def test_unusable_records_raise_bad_record(raw: bytes | None, reason: str) -> None:
    with pytest.raises(BadRecord, match=reason):
        decode(raw)


def _doc(*series: object) -> bytes:
    return orjson.dumps({"v": 1, "series": list(series)})


GOOD = {"service": "s", "metric": "m", "instance": "i", "points": [[NOW, 1.0]]}


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("not an object", "series must be an object"),
        ({**GOOD, "service": 7}, "'service' must be a string"),
        ({**GOOD, "metric": ""}, "non-empty service and metric"),
        ({**GOOD, "instance": "x" * 5000}, "'instance' must be a string of at most"),
        ({**GOOD, "points": "many"}, "'points' must be a list"),
    ],
)
def test_a_bad_series_is_rejected_and_the_good_one_beside_it_kept(bad: object, reason: str) -> None:
    kept, rejected = decode(_doc(bad, GOOD))
    assert [s.metric for s in kept] == ["m"]
    assert len(rejected) == 1
    assert reason in rejected[0].reason  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("point", "reason"),
    [
        ([NOW + FUTURE + 1, 1.0], "too far in the future"),
        ([-5, 1.0], "non-negative integer"),
        ([1.5, 1.0], "non-negative integer"),
        ([True, 1.0], "non-negative integer"),
        ([NOW, "1.0"], "value must be a number"),
        ([NOW, True], "value must be a number"),
        ([NOW], "a point must be"),
        ({"ts": NOW}, "a point must be"),
    ],
)
def test_bad_points_are_rejected_and_good_points_kept(point: object, reason: str) -> None:
    series = {**GOOD, "points": [[NOW - 1000, 2.0], point]}
    kept, rejected = decode(_doc(series))
    assert kept[0].points == [(NOW - 1000, 2.0)]
    assert reason in rejected[0].reason  # type: ignore[attr-defined]


@given(st.binary(max_size=256))
def test_arbitrary_bytes_never_raise_anything_but_bad_record(raw: bytes) -> None:
    with contextlib.suppress(BadRecord):
        decode(raw)


def test_an_oversized_record_is_decoded_without_trouble() -> None:
    big = [
        {**GOOD, "instance": f"i{n}", "points": [[NOW - k, float(k)] for k in range(100)]} for n in range(500)
    ]
    kept, rejected = decode(_doc(*big))
    assert len(kept) == 500
    assert rejected == []
