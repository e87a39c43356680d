"""Remote-write 1.0 and 2.0 decoding: round trips, the bad-input matrix, limits and the label cache."""

from __future__ import annotations

import gc
import math
import pickle
import struct
import tracemalloc
from collections.abc import Callable

import pytest

from connectors.remote_write import Decoded, DecodeError, Decoder, Limits, bare_decode, protocol_version
from connectors.remote_write.labels import LabelCache
from connectors.remote_write.proto import remote_v1_pb2, remote_v2_pb2
from engine.config import ReceiverConfig
from engine.raw import MetricKind, NativeHistogram, RawSeries
from tests.fixtures.remote_write import (
    BASE_MS,
    SNAPPY,
    STALE_NAN,
    STALE_NAN_BITS,
    V1_CONTENT_TYPE,
    V2_CONTENT_TYPE,
    Series,
    body,
    content_type,
    dense_shape,
    labels_of,
    prometheus_shape,
    shape_series,
    snappy,
    v1_body,
    v1_message,
    v2_body,
    v2_message,
    varint,
    wire_field,
    wire_sample,
    wire_series_v1,
)

VERSIONS = ("1.0", "2.0")
NOW = BASE_MS + 60_000
UP = labels_of(name="up", instance="a:9100", job="node")
#: Timestamps the fast paths read (6-byte varints) and ones only protobuf reads (small, negative, far).
STAMPS = (BASE_MS, BASE_MS + 15_000)
ODD_STAMPS = (0, 1, 1_000, -5, 1 << 45)


def decode(
    payload: bytes, version: str = "1.0", *, now_ms: int = NOW, limits: Limits | None = None
) -> Decoded:
    return Decoder(limits or Limits()).decode(payload, content_type(version), SNAPPY, now_ms)


def bits(value: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", value))[0])


def only(decoded: Decoded) -> RawSeries:
    assert len(decoded.request.series) == 1
    return decoded.request.series[0]


# --- round trips ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("stamps", [STAMPS, ODD_STAMPS], ids=["fast", "protobuf"])
def test_samples_round_trip(version: str, stamps: tuple[int, ...]) -> None:
    samples = [(stamp, 1.5 * i) for i, stamp in enumerate(stamps)]  # includes a 0.0, which proto3 omits
    series = [
        Series(labels=UP, samples=samples),
        Series(labels=labels_of(name="node_load1", instance="b:9100"), samples=samples[:1]),
    ]
    decoded = decode(body(version, series), version, now_ms=max(stamps))
    assert decoded.version == version
    assert decoded.future_rejected == 0
    assert [(s.labels, s.samples) for s in decoded.request.series] == [
        (UP, samples),
        (labels_of(name="node_load1", instance="b:9100"), samples[:1]),
    ]
    assert decoded.request.sample_count == len(stamps) + 1
    assert decoded.request.exemplars == 0


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("stamp", [BASE_MS, 7], ids=["fast", "protobuf"])
def test_special_values_survive_bit_exact(version: str, stamp: int) -> None:
    other_nan = struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000001))[0]
    values = [STALE_NAN, other_nan, -0.0, 0.0, math.inf, -math.inf, 5e-324]
    series = [
        Series(labels=labels_of(name="m", i=str(i)), samples=[(stamp, v)]) for i, v in enumerate(values)
    ]
    decoded = decode(body(version, series), version)
    got = [s.samples[0] for s in decoded.request.series]
    assert [t for t, _ in got] == [stamp] * len(values)
    assert [bits(v) for _, v in got] == [bits(v) for v in values]
    assert bits(got[0][1]) == STALE_NAN_BITS


@pytest.mark.parametrize("version", VERSIONS)
def test_several_samples_with_zero_values_and_stale_marker(version: str) -> None:
    samples = [(BASE_MS + i * 1000, v) for i, v in enumerate([1.0, 0.0, STALE_NAN, 0.0, 2.5])]
    series = only(decode(body(version, [Series(labels=UP, samples=samples)]), version))
    assert [t for t, _ in series.samples] == [t for t, _ in samples]
    assert [bits(v) for _, v in series.samples] == [bits(v) for _, v in samples]


def _histograms() -> tuple[NativeHistogram, NativeHistogram]:
    integer = NativeHistogram(
        timestamp_ms=BASE_MS,
        schema=3,
        zero_threshold=1e-128,
        zero_count=2.0,
        count=19.0,
        sum=42.5,
        positive_spans=((0, 2), (3, 1)),
        positive_counts=(4.0, 7.0, 1.0),
        negative_spans=((-1, 2),),
        negative_counts=(3.0, 2.0),
        reset_hint=2,
    )
    floating = NativeHistogram(
        timestamp_ms=BASE_MS + 15_000,
        schema=-2,
        zero_threshold=0.001,
        zero_count=0.5,
        count=10.25,
        sum=-3.0,
        positive_spans=((1, 3),),
        positive_counts=(0.25, 4.5, 5.0),
        reset_hint=3,
    )
    return integer, floating


@pytest.mark.parametrize("version", VERSIONS)
def test_native_histograms_integer_and_float(version: str) -> None:
    integer, floating = _histograms()
    series = [
        Series(labels=labels_of(name="rpc_seconds", job="a"), histograms=[integer]),
        Series(labels=labels_of(name="rpc_seconds", job="b"), histograms=[floating], float_histograms=True),
    ]
    decoded = decode(body(version, series), version)
    assert [s.histograms for s in decoded.request.series] == [[integer], [floating]]
    assert decoded.request.histogram_count == 2
    assert decoded.request.sample_count == 0


def test_integer_histogram_deltas_are_made_absolute() -> None:
    message = remote_v1_pb2.WriteRequest()
    ts = message.timeseries.add()
    ts.labels.add(name="__name__", value="h")
    h = ts.histograms.add(count_int=9, zero_count_int=0, timestamp=BASE_MS)
    h.positive_spans.add(offset=0, length=3)
    h.positive_deltas.extend([2, 3, -4])  # absolute 2, 5, 1
    decoded = decode(snappy(message.SerializeToString()))
    assert only(decoded).histograms[0].positive_counts == (2.0, 5.0, 1.0)


def test_v1_metadata() -> None:
    metadata = {"http_requests_total": MetricKind.COUNTER, "node_load1": MetricKind.GAUGE}
    message = v1_message([Series(labels=UP, samples=[(BASE_MS, 1.0)])], metadata)
    message.metadata.add(type=9, metric_family_name="future_type")  # a type this decoder does not know
    message.metadata.add(type=1, metric_family_name="")  # nameless: skipped
    decoded = decode(snappy(message.SerializeToString()))
    assert decoded.request.metadata == {**metadata, "future_type": MetricKind.UNKNOWN}
    assert only(decoded).kind is None


@pytest.mark.parametrize("kind", list(MetricKind))
def test_v2_metadata_kind(kind: MetricKind) -> None:
    series = Series(labels=UP, samples=[(BASE_MS, 1.0)], kind=kind, help="Up or not.", unit="seconds")
    expected = None if kind is MetricKind.UNKNOWN else kind  # METRIC_TYPE_UNSPECIFIED
    assert only(decode(v2_body([series]), "2.0")).kind is expected


@pytest.mark.parametrize("stamp", [BASE_MS, 3], ids=["fast", "protobuf"])
def test_v2_created_timestamp_and_metadata_without_samples_confusion(stamp: int) -> None:
    series = [
        Series(labels=UP, samples=[(stamp, 1.0)], kind=MetricKind.COUNTER, created_ms=BASE_MS - 3_600_000),
        Series(labels=labels_of(name="x"), samples=[(stamp, 2.0)], created_ms=-1),
        Series(labels=labels_of(name="y"), samples=[(stamp, 3.0), (stamp + 1, 4.0)], kind=MetricKind.GAUGE),
    ]
    decoded = decode(v2_body(series), "2.0", now_ms=stamp + 10)
    assert [(s.created_ms, s.kind, len(s.samples)) for s in decoded.request.series] == [
        (BASE_MS - 3_600_000, MetricKind.COUNTER, 1),
        (-1, None, 1),
        (0, MetricKind.GAUGE, 2),
    ]


@pytest.mark.parametrize("version", VERSIONS)
def test_exemplars_are_counted(version: str) -> None:
    series = [
        Series(labels=UP, samples=[(BASE_MS, 1.0)], exemplars=2),
        Series(labels=labels_of(name="b"), samples=[(BASE_MS, 1.0)], exemplars=1),
        Series(labels=labels_of(name="c"), samples=[(BASE_MS, 1.0)]),
    ]
    decoded = decode(body(version, series), version)
    assert decoded.request.exemplars == 3
    assert decoded.request.sample_count == 3


@pytest.mark.parametrize("version", VERSIONS)
def test_empty_request(version: str) -> None:
    decoded = decode(body(version, []), version)
    assert decoded.request.series == []
    assert decoded.future_rejected == 0


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("base", [BASE_MS, 10_000], ids=["fast", "protobuf"])
def test_future_samples_are_dropped_and_counted(version: str, base: int) -> None:
    limits = Limits(max_future_ms=1_000)
    series = [
        Series(labels=labels_of(name="ok"), samples=[(base, 1.0)]),
        Series(labels=labels_of(name="all_future"), samples=[(base + 5_000, 1.0)]),
        Series(labels=labels_of(name="mixed"), samples=[(base, 1.0), (base + 999, 2.0), (base + 1_001, 3.0)]),
    ]
    decoded = decode(body(version, series), version, now_ms=base, limits=limits)
    assert decoded.future_rejected == 2
    assert [(s.name, s.samples) for s in decoded.request.series] == [
        ("ok", [(base, 1.0)]),
        ("mixed", [(base, 1.0), (base + 999, 2.0)]),
    ]


@pytest.mark.parametrize("version", VERSIONS)
def test_future_histograms_are_dropped_and_counted(version: str) -> None:
    integer, floating = _histograms()
    series = [Series(labels=UP, histograms=[integer, floating])]
    decoded = decode(
        body(version, series), version, now_ms=integer.timestamp_ms, limits=Limits(max_future_ms=0)
    )
    assert decoded.future_rejected == 1
    assert only(decoded).histograms == [integer]


@pytest.mark.parametrize("version", VERSIONS)
def test_utf8_label_names_and_values(version: str) -> None:
    labels = labels_of(name="http.requests", **{"größe": "groß", "service.name": "checkout 🛒"})
    assert (
        only(decode(body(version, [Series(labels=labels, samples=[(BASE_MS, 1.0)])]), version)).labels
        == labels
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_shapes_decode_completely(version: str) -> None:
    assert decode(prometheus_shape(0, version), version).request.sample_count == 500
    assert decode(dense_shape(0, version), version).request.sample_count == 10_000
    assert bare_decode(prometheus_shape(0, version), version) == 500
    assert bare_decode(dense_shape(1, version), version) == 10_000


def test_bare_decode_rejects_unknown_version() -> None:
    with pytest.raises(ValueError, match="unknown remote-write version"):
        bare_decode(prometheus_shape(0), "3.0")


@pytest.mark.parametrize("version", VERSIONS)
def test_repeated_label_sets_come_from_the_cache(version: str) -> None:
    decoder = Decoder(Limits())
    first = decoder.decode(prometheus_shape(0, version), content_type(version), SNAPPY, NOW)
    cached = decoder.cached_label_sets
    second = decoder.decode(prometheus_shape(0, version), content_type(version), SNAPPY, NOW)
    assert decoder.cached_label_sets == cached
    assert all(a.labels is b.labels for a, b in zip(first.request.series, second.request.series, strict=True))


def test_label_cache_stays_bounded_and_keeps_recent_entries() -> None:
    cache = LabelCache(4)
    for i in range(10):
        cache.rotate()
        cache.young[i] = (("__name__", str(i)),)
        assert len(cache) <= 4 + 1
    assert cache.young.get(9) is not None or cache.old.get(9) is not None
    assert cache.recall(9) is not None or cache.young.get(9) is not None
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(ValueError, match="at least 2"):
        LabelCache(1)


def test_decoder_cache_is_bounded_across_requests() -> None:
    decoder = Decoder(Limits(), cache_size=600)
    for index in range(12):
        decoder.decode(prometheus_shape(index), V1_CONTENT_TYPE, SNAPPY, NOW)
        assert decoder.cached_label_sets <= 600 + 500


def test_limits_from_config() -> None:
    config = ReceiverConfig(
        max_body_bytes=2048, max_labels=3, max_label_name_length=9, max_label_value_length=7
    )
    assert Limits.from_config(config, max_future_ms=5) == Limits(2048, 3, 9, 7, 5)


# --- negotiation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type_header", "version"),
    [
        ("application/x-protobuf", "1.0"),
        ("Application/X-Protobuf", "1.0"),
        ("application/x-protobuf;proto=prometheus.WriteRequest", "1.0"),
        ("application/x-protobuf; charset=utf-8", "1.0"),
        ("application/x-protobuf;", "1.0"),
        ("application/x-protobuf;proto=io.prometheus.write.v2.Request", "2.0"),
        (' application/x-protobuf ;  PROTO = "io.prometheus.write.v2.Request" ', "2.0"),
        ("application/x-protobuf;foo=bar;proto=io.prometheus.write.v2.request", "2.0"),
    ],
)
def test_content_types_accepted(content_type_header: str, version: str) -> None:
    assert protocol_version(content_type_header, "snappy") == version
    assert protocol_version(content_type_header, " SNAPPY ") == version


@pytest.mark.parametrize(
    ("content_type_header", "encoding", "reason"),
    [
        (None, "snappy", "missing Content-Type"),
        ("", "snappy", "missing Content-Type"),
        ("application/json", "snappy", "unsupported Content-Type 'application/json'"),
        ("application/x-protobuf-text", "snappy", "unsupported Content-Type"),
        ("application/x-protobuf;proto=io.prometheus.write.v3.Request", "snappy", "unsupported proto="),
        ("application/x-protobuf;proto=", "snappy", "unsupported proto=''"),
        ("application/x-protobuf;proto", "snappy", "malformed Content-Type"),
        (
            "application/x-protobuf;proto=prometheus.WriteRequest;proto=prometheus.WriteRequest",
            "snappy",
            "twice",
        ),
        (V1_CONTENT_TYPE, None, "missing Content-Encoding"),
        (V1_CONTENT_TYPE, "", "missing Content-Encoding"),
        (V1_CONTENT_TYPE, "gzip", "unsupported Content-Encoding 'gzip'"),
        (V2_CONTENT_TYPE, "snappy-framed", "unsupported Content-Encoding"),
        (V1_CONTENT_TYPE, "snappy, gzip", "unsupported Content-Encoding"),
    ],
)
def test_unsupported_media_is_415(content_type_header: str | None, encoding: str | None, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        Decoder(Limits()).decode(prometheus_shape(0), content_type_header, encoding, NOW)
    assert caught.value.status == 415
    assert reason in str(caught.value)
    assert not caught.value.retriable


# --- the bad-input matrix ----------------------------------------------------------------------------------


def _v1_raw(*series: bytes) -> bytes:
    return snappy(b"".join(series))


def _labels_v1(*pairs: tuple[str, str]) -> list[Series]:
    return [Series(labels=pairs, samples=[(BASE_MS, 1.0)])]


def _v2_request(symbols: list[str], refs: list[int], metadata: remote_v2_pb2.Metadata | None = None) -> bytes:
    message = remote_v2_pb2.Request(symbols=symbols)
    ts = message.timeseries.add(labels_refs=refs, metadata=metadata)
    ts.samples.add(timestamp=BASE_MS, value=1.0)
    return snappy(message.SerializeToString())


LONG = Limits(max_labels=4, max_label_name_length=10, max_label_value_length=12)
BAD_LABELS: list[tuple[str, list[tuple[str, str]], str]] = [
    ("unsorted", [("__name__", "up"), ("job", "a"), ("instance", "b")], "not sorted by name: 'instance'"),
    ("duplicate", [("__name__", "up"), ("job", "a"), ("job", "b")], "duplicate label 'job'"),
    ("empty name", [("", "x"), ("__name__", "up")], "empty label name"),
    ("no metric name", [("instance", "a"), ("job", "b")], "no __name__"),
    ("empty metric name", [("__name__", ""), ("job", "b")], "empty __name__"),
    (
        "too many",
        [("__name__", "up")] + [(f"l{i}", "v") for i in range(4)],
        "has 5 labels, more than the limit of 4",
    ),
    ("long name", [("__name__", "up"), ("abcdefghijk", "v")], "label name 'abcdefghijk' is 11 bytes"),
    ("long value", [("__name__", "up"), ("job", "x" * 13)], "label 'job' has a value of 13 bytes"),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("stamp", [BASE_MS, 5], ids=["fast", "protobuf"])
@pytest.mark.parametrize(("case", "pairs", "reason"), BAD_LABELS, ids=[c[0] for c in BAD_LABELS])
def test_bad_labels_are_400_and_name_the_label(
    version: str, stamp: int, case: str, pairs: list[tuple[str, str]], reason: str
) -> None:
    payload = body(version, [Series(labels=pairs, samples=[(stamp, 1.0)])])
    with pytest.raises(DecodeError) as caught:
        decode(payload, version, limits=LONG)
    assert caught.value.status == 400, case
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("stamp", [BASE_MS, 5], ids=["fast", "protobuf"])
@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        (b"__name__", b"up\xff", "value of label '__name__' is not valid UTF-8: b'up\\xff'"),
        (b"jo\xc3", b"x", "label name is not valid UTF-8: b'jo\\xc3'"),
        (b"job", b"\xed\xa0\x80", "value of label 'job' is not valid UTF-8"),  # a UTF-16 surrogate
    ],
)
def test_invalid_utf8_is_400_and_names_the_label(stamp: int, name: bytes, value: bytes, reason: str) -> None:
    payload = _v1_raw(
        wire_series_v1([(b"__name__", b"up"), (name, value)][name == b"__name__" :], [(stamp, 1.0)])
    )
    with pytest.raises(DecodeError) as caught:
        decode(payload)
    assert caught.value.status == 400
    assert reason in str(caught.value)


def test_v2_invalid_utf8_symbol_is_400_and_names_the_label() -> None:
    raw = wire_field(4, b"") + wire_field(4, b"__name__") + wire_field(4, b"up\xfe")
    series = wire_field(1, bytes([1, 2])) + wire_field(2, wire_sample(BASE_MS, 1.0))
    with pytest.raises(DecodeError) as caught:
        decode(snappy(raw + wire_field(5, series)), "2.0")
    assert caught.value.status == 400
    assert "value of label '__name__' is not valid UTF-8" in str(caught.value)


V2_BAD: list[tuple[str, Callable[[], bytes], str]] = [
    (
        "symbols not starting with ''",
        lambda: _v2_request(["__name__", "up"], [0, 1]),
        "must start with the empty",
    ),
    ("no symbols", lambda: _v2_request([], []), "must start with the empty string"),
    ("odd labels_refs", lambda: _v2_request(["", "__name__", "up"], [1, 2, 1]), "odd number of entries (3)"),
    (
        "ref out of range",
        lambda: _v2_request(["", "__name__", "up"], [1, 3]),
        "refers to symbol 3, but the symbol",
    ),
    (
        "big ref out of range",
        lambda: _v2_request(["", "__name__", "up"], [1, 300]),
        "refers to symbol 300, but the symbol table has 3 entries",
    ),
    (
        "help ref out of range",
        lambda: _v2_request(["", "__name__", "up"], [1, 2], metadata=remote_v2_pb2.Metadata(help_ref=7)),
        "metadata help_ref refers to symbol 7",
    ),
    (
        "unit ref out of range",
        lambda: _v2_request(["", "__name__", "up"], [1, 2], metadata=remote_v2_pb2.Metadata(unit_ref=3)),
        "metadata unit_ref refers to symbol 3",
    ),
]


@pytest.mark.parametrize(("case", "make", "reason"), V2_BAD, ids=[c[0] for c in V2_BAD])
def test_v2_bad_symbol_references_are_400(case: str, make: Callable[[], bytes], reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(make(), "2.0")
    assert caught.value.status == 400, case
    assert reason in str(caught.value)


def test_v2_exemplar_refs_are_checked() -> None:
    message = v2_message([Series(labels=UP, samples=[(BASE_MS, 1.0)], exemplars=1)])
    message.timeseries[0].exemplars[0].labels_refs.append(999)
    message.timeseries[0].exemplars[0].labels_refs.append(1)
    with pytest.raises(DecodeError, match="exemplar labels_refs refers to symbol 999"):
        decode(snappy(message.SerializeToString()), "2.0")


def _bad_histogram(
    version: str, fill: Callable[[remote_v1_pb2.Histogram | remote_v2_pb2.Histogram], None]
) -> bytes:
    if version == "1.0":
        m1 = v1_message([Series(labels=UP)])
        fill(m1.timeseries[0].histograms.add(timestamp=BASE_MS))
        return snappy(m1.SerializeToString())
    m2 = v2_message([Series(labels=UP)])
    fill(m2.timeseries[0].histograms.add(timestamp=BASE_MS))
    return snappy(m2.SerializeToString())


def _spans_mismatch(h: remote_v1_pb2.Histogram | remote_v2_pb2.Histogram) -> None:
    h.count_int = 3
    h.positive_spans.add(offset=0, length=2)
    h.positive_deltas.append(3)


def _mixed_counts(h: remote_v1_pb2.Histogram | remote_v2_pb2.Histogram) -> None:
    h.count_float = 3.0
    h.positive_spans.add(offset=0, length=1)
    h.positive_deltas.append(3)


def _mixed_zero(h: remote_v1_pb2.Histogram | remote_v2_pb2.Histogram) -> None:
    h.count_int = 3
    h.zero_count_float = 1.0


def _negative_bucket(h: remote_v1_pb2.Histogram | remote_v2_pb2.Histogram) -> None:
    h.count_int = 3
    h.positive_spans.add(offset=0, length=2)
    h.positive_deltas.extend([1, -2])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("fill", "reason"),
    [
        (_spans_mismatch, "positive spans cover 2 buckets but 1 counts were sent"),
        (_mixed_counts, "float histogram with integer counts"),
        (_mixed_zero, "integer histogram with float counts"),
        (_negative_bucket, "negative bucket count"),
    ],
)
def test_bad_histograms_are_400(
    version: str, fill: Callable[[remote_v1_pb2.Histogram | remote_v2_pb2.Histogram], None], reason: str
) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(_bad_histogram(version, fill), version)
    assert caught.value.status == 400
    assert reason in str(caught.value)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "corrupt snappy body"),
        (b"\xff" * 12, "corrupt snappy body"),
        (b"\x05abc", "corrupt snappy body"),
        (bytes(body("1.0", _labels_v1(*UP)))[:-3], "corrupt snappy body"),
    ],
    ids=["empty", "bad header", "bad offset", "truncated"],
)
def test_corrupt_snappy_is_400(version: str, payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(payload, version)
    assert caught.value.status == 400
    assert reason in str(caught.value)


GARBAGE: list[tuple[str, bytes]] = [
    ("1.0", b"\x0a\x05\x0a\x03"),  # a series field longer than the body
    ("2.0", b"\x22\x00\x2a\x05\x0a\x03"),
    ("1.0", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"),  # overlong tag varint
    ("2.0", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"),
    ("1.0", b"\x0b"),  # a group start with no end
    ("2.0", b"\x0b"),
    ("1.0", b"\x0f\x00"),  # wire type 7 does not exist
    ("2.0", b"\x0f\x00"),
    ("1.0", b"\x0a\x02\x0a\x05"),  # a label longer than its series
    ("1.0", b"\x0a\x05\x0a\x03\x0a\x05\x41"),  # a label name longer than its label
    ("2.0", b"\x22\x00\x2a\x02\x0a\x05"),  # labels_refs longer than the series
    ("2.0", b"\x22\x00\x2a\x06\x0a\x02\x01\x02\x12\x09"),  # a sample longer than the series
    ("2.0", b"\x22\x00\x2a\x04\x0a\x02\x01\x81"),  # labels_refs ending inside a varint
]


@pytest.mark.parametrize(("version", "raw"), GARBAGE)
def test_garbage_protobuf_is_400(version: str, raw: bytes) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(snappy(raw), version)
    assert caught.value.status == 400
    assert "malformed protobuf" in str(caught.value)


@pytest.mark.parametrize(("sent", "declared"), [("1.0", "2.0"), ("2.0", "1.0")])
def test_a_body_of_the_other_version_is_400(sent: str, declared: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(prometheus_shape(0, sent), declared)
    assert caught.value.status == 400
    assert f"sent as {declared}" in str(caught.value)


def test_body_over_the_limit_is_413() -> None:
    limits = Limits(max_body_bytes=1024)
    payload = v1_body([Series(labels=labels_of(name="m", pad="x" * 2000), samples=[(BASE_MS, 1.0)])])
    with pytest.raises(DecodeError) as caught:
        decode(payload, limits=limits)
    assert caught.value.status == 413
    assert "more than the limit of 1024" in str(caught.value)


def test_compressed_body_that_cannot_fit_is_413_unread() -> None:
    with pytest.raises(DecodeError) as caught:
        decode(b"\x00" * 5000, limits=Limits(max_body_bytes=1024))
    assert caught.value.status == 413


@pytest.mark.parametrize("version", VERSIONS)
def test_decompression_bomb_is_refused_without_allocating(version: str) -> None:
    bomb = varint(1 << 30) + b"\x00\xfe\xff\x00" * 4  # claims 1 GiB, 20-odd bytes long
    assert len(bomb) <= 21
    decoder = Decoder(Limits())
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            with pytest.raises(DecodeError) as caught:
                decoder.decode(bomb, content_type(version), SNAPPY, NOW)
            assert caught.value.status == 413
        grown = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert grown < 10 * 1024 * 1024
    assert "decompresses to 1073741824 bytes" in str(caught.value)


def test_decode_error_is_one_line_and_picklable() -> None:
    error = DecodeError(400, "first line\nsecond line")
    assert str(error) == "first line second line"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.status, str(copy)) == (400, "first line second line")


# --- unusual but valid layouts: the fast paths must hand them to protobuf, never misread them ---------------


UP_A = (("__name__", "up"), ("job", "a"))


def _v1_series(*fields: bytes) -> bytes:
    return snappy(wire_field(1, b"".join(fields)))


def _label(name: bytes, value: bytes) -> bytes:
    return wire_field(1, wire_field(1, name) + wire_field(2, value))


def _sample(stamp: int, value: float) -> bytes:
    return wire_field(2, wire_sample(stamp, value))


def _padded_sample(stamp: int, value: float) -> bytes:
    """A 16-byte Sample whose timestamp is short and whose tail is unknown fields: it looks like the
    common 6-byte-timestamp layout from outside."""
    payload = b"\x09" + struct.pack("<d", value) + b"\x10" + varint(stamp) + b"\x18\x81\x01\x20\x01"
    assert len(payload) == 16
    return wire_field(2, payload)


@pytest.mark.parametrize(
    ("fields", "labels", "samples"),
    [
        (
            (_label(b"__name__", b"up"), _sample(BASE_MS, 1.0), _label(b"job", b"a")),
            UP_A,
            [(BASE_MS, 1.0)],
        ),
        ((_sample(BASE_MS, 1.0), _label(b"__name__", b"up")), UP[:1], [(BASE_MS, 1.0)]),
        (
            (
                wire_field(1, wire_field(2, b"up") + wire_field(1, b"__name__") + b"\x18\x05"),
                _sample(BASE_MS, 2.0),
            ),
            UP[:1],
            [(BASE_MS, 2.0)],
        ),
        ((_label(b"__name__", b"up"), _padded_sample(5, 3.0)), UP[:1], [(5, 3.0)]),
        ((_label(b"__name__", b"up"), _sample(BASE_MS, 1.0), b"\x78\x01"), UP[:1], [(BASE_MS, 1.0)]),
    ],
    ids=["labels around a sample", "sample first", "label fields reversed", "padded sample", "unknown field"],
)
def test_v1_unusual_layouts(fields: tuple[bytes, ...], labels: object, samples: object) -> None:
    decoder = Decoder(Limits())
    for _ in range(2):  # cold, then with what can be cached cached
        series = only(decoder.decode(_v1_series(*fields), V1_CONTENT_TYPE, SNAPPY, NOW))
        assert (series.labels, series.samples) == (labels, samples)


def _v2_body(*series_fields: bytes) -> bytes:
    symbols = b"".join(wire_field(4, s) for s in (b"", b"__name__", b"up", b"job", b"a"))
    return snappy(symbols + wire_field(5, b"".join(series_fields)))


_REFS = wire_field(1, bytes([1, 2]))
_META_COUNTER = wire_field(5, b"\x08\x01")


@pytest.mark.parametrize(
    ("fields", "labels", "samples", "kind"),
    [
        ((_REFS, _sample(BASE_MS, 1.0), _META_COUNTER), UP[:1], [(BASE_MS, 1.0)], MetricKind.COUNTER),
        (
            (_REFS, _sample(BASE_MS, 1.0), _META_COUNTER, _sample(BASE_MS + 1, 2.0)),
            UP[:1],
            [(BASE_MS, 1.0), (BASE_MS + 1, 2.0)],
            MetricKind.COUNTER,
        ),
        ((_REFS, _META_COUNTER, wire_field(5, b"\x18\x00")), UP[:1], [], MetricKind.COUNTER),  # merged
        ((wire_field(1, bytes([1, 2])), wire_field(1, bytes([3, 4]))), UP_A, [], None),
        ((b"\x08\x01\x08\x02\x08\x03\x08\x04",), UP_A, [], None),  # refs not packed
        ((_REFS, _padded_sample(5, 3.0)), UP[:1], [(5, 3.0)], None),
        ((_REFS, _sample(BASE_MS, 1.0), b"\x78\x01"), UP[:1], [(BASE_MS, 1.0)], None),
        ((_sample(BASE_MS, 1.0), _REFS), UP[:1], [(BASE_MS, 1.0)], None),
    ],
    ids=[
        "metadata",
        "sample after metadata",
        "metadata twice",
        "refs in two chunks",
        "refs unpacked",
        "padded sample",
        "unknown field",
        "sample first",
    ],
)
def test_v2_unusual_layouts(fields: tuple[bytes, ...], labels: object, samples: object, kind: object) -> None:
    decoder = Decoder(Limits())
    for _ in range(2):
        series = only(decoder.decode(_v2_body(*fields), V2_CONTENT_TYPE, SNAPPY, NOW))
        assert (series.labels, series.samples, series.kind) == (labels, samples, kind)


def test_shape_series_of_one_target_share_a_timestamp_as_prometheus_sends_them() -> None:
    newest: dict[object, int] = {}
    for index in range(25):  # more than two passes over the pool: histograms split over requests too
        by_target: dict[str, set[int]] = {}
        for series in shape_series(index, series=500, samples=1):
            (stamp, _), *_ = series.samples
            by_target.setdefault(dict(series.labels)["instance"], set()).add(stamp)
            assert newest.get(series.labels, -1) < stamp  # each series moves forward in time
            newest[series.labels] = stamp
        assert all(len(stamps) == 1 for stamps in by_target.values()), by_target
    # a histogram's buckets, wherever the request windows cut, share a timestamp per scrape round
    rounds: dict[tuple[str, int], set[int]] = {}
    for index in range(25):
        for series in shape_series(index, series=500, samples=1):
            labels = dict(series.labels)
            if labels["__name__"] == "http_request_duration_seconds_bucket":
                stamp = series.samples[0][0]
                rounds.setdefault((labels["instance"], (stamp - BASE_MS) // 15_000), set()).add(stamp)
    assert rounds
    assert all(len(stamps) == 1 for stamps in rounds.values())
