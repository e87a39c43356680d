"""Property tests for the remote-write decoders.

Whatever bytes arrive, the only exception is a :class:`DecodeError` with status 400 or 413 (415 depends on
headers alone). Valid requests decode to exactly what protobuf itself reads from them, whichever of the
decoder's fast paths they take, with a cold or a warm label cache.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from google.protobuf.message import DecodeError as ProtobufDecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.remote_write import Decoded, DecodeError, Decoder, Limits
from connectors.remote_write.histograms import native_histogram
from connectors.remote_write.proto import lazy_pb2, remote_v1_pb2, remote_v2_pb2
from engine.raw import MetricKind, NativeHistogram, RawSeries
from tests.fixtures.remote_write import (
    BASE_MS,
    SNAPPY,
    STALE_NAN,
    Series,
    content_type,
    dense_shape,
    prometheus_shape,
    snappy,
    v1_message,
    v2_message,
)

VERSIONS = ("1.0", "2.0")
NOW = BASE_MS + 3_600_000
LIMITS = Limits(max_body_bytes=1 << 20, max_future_ms=60_000)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies ---------------------------------------------------------------------------------------------

names = st.text(min_size=1, max_size=10).filter(lambda name: name != "__name__")
label_sets = st.builds(
    lambda metric, rest: tuple(sorted({**rest, "__name__": metric}.items(), key=lambda kv: kv[0].encode())),
    st.text(min_size=1, max_size=12),
    st.dictionaries(names, st.text(max_size=16), max_size=5),
)
stamps = st.one_of(
    st.integers(BASE_MS - 10**9, NOW + 120_000),  # the 6-byte varints the fast paths read
    st.integers(-(2**63), 2**63 - 1),
)
values = st.one_of(st.floats(), st.sampled_from([0.0, -0.0, STALE_NAN, 1.0]))
samples = st.lists(st.tuples(stamps, values), max_size=4)


@st.composite
def histograms(draw: st.DrawFn) -> NativeHistogram:
    def side() -> tuple[tuple[tuple[int, int], ...], tuple[float, ...]]:
        spans = tuple(draw(st.lists(st.tuples(st.integers(-5, 5), st.integers(0, 3)), max_size=2)))
        width = sum(length for _, length in spans)
        return spans, tuple(
            float(c) for c in draw(st.lists(st.integers(0, 1000), min_size=width, max_size=width))
        )

    positive_spans, positive = side()
    negative_spans, negative = side()
    return NativeHistogram(
        timestamp_ms=draw(stamps),
        schema=draw(st.integers(-4, 8)),
        zero_threshold=draw(st.floats(0, 1)),
        zero_count=float(draw(st.integers(0, 100))),
        count=float(draw(st.integers(0, 10**6))),
        sum=draw(st.floats(allow_nan=False)),
        positive_spans=positive_spans,
        positive_counts=positive,
        negative_spans=negative_spans,
        negative_counts=negative,
        reset_hint=draw(st.integers(0, 3)),
    )


series_strategy = st.builds(
    Series,
    labels=label_sets,
    samples=samples,
    histograms=st.lists(histograms(), max_size=1),
    float_histograms=st.booleans(),
    exemplars=st.integers(0, 2),
    kind=st.none() | st.sampled_from(list(MetricKind)),
    help=st.text(max_size=8),
    unit=st.text(max_size=4),
    created_ms=st.integers(-(2**63), 2**63 - 1) | st.just(0),
)
requests = st.lists(series_strategy, max_size=6)

# --- the oracle: protobuf's own reading, without the decoder's fast paths -----------------------------------

_V1_KINDS = {remote_v1_pb2.MetricMetadata.MetricType.Value(k.value.upper()): k for k in MetricKind}
_V2_KINDS = {
    remote_v2_pb2.Metadata.MetricType.Value(f"METRIC_TYPE_{k.value.upper()}"): k
    for k in MetricKind
    if k is not MetricKind.UNKNOWN
}


def _keep(series: RawSeries, limit: int) -> tuple[RawSeries | None, int]:
    kept = [s for s in series.samples if s[0] <= limit]
    kept_h = [h for h in series.histograms if h.timestamp_ms <= limit]
    dropped = len(series.samples) - len(kept) + len(series.histograms) - len(kept_h)
    if dropped and not kept and not kept_h:
        return None, dropped
    series.samples, series.histograms = kept, kept_h
    return series, dropped


def oracle(raw: bytes, version: str, now_ms: int) -> Any:
    """What protobuf's generated classes read from ``raw`` (labels unvalidated), as comparable data."""
    limit = now_ms + LIMITS.max_future_ms
    out: list[RawSeries] = []
    dropped = exemplars = 0
    metadata: dict[str, MetricKind] = {}
    if version == "1.0":
        m1 = remote_v1_pb2.WriteRequest.FromString(raw)
        metadata = {m.metric_family_name: _V1_KINDS.get(m.type, MetricKind.UNKNOWN) for m in m1.metadata}
        metadata.pop("", None)
        for ts in m1.timeseries:
            labels = tuple((label.name, label.value) for label in ts.labels)
            series = RawSeries(labels, [(s.timestamp, s.value) for s in ts.samples])
            series.histograms = [native_histogram(h, "") for h in ts.histograms]
            exemplars += len(ts.exemplars)
            kept, gone = _keep(series, limit)
            dropped += gone
            if kept is not None:
                out.append(kept)
    else:
        m2 = lazy_pb2.RequestV2.FromString(raw)  # symbols as bytes: only those labels use must be UTF-8
        symbols = list(m2.symbols)
        for encoded in m2.timeseries:
            ts2 = remote_v2_pb2.TimeSeries.FromString(encoded)
            refs = list(ts2.labels_refs)
            labels = tuple(
                (symbols[refs[i]].decode(), symbols[refs[i + 1]].decode()) for i in range(0, len(refs), 2)
            )
            series = RawSeries(labels, [(s.timestamp, s.value) for s in ts2.samples])
            series.histograms = [native_histogram(h, "") for h in ts2.histograms]
            series.kind = _V2_KINDS.get(ts2.metadata.type) if ts2.HasField("metadata") else None
            series.created_ms = ts2.created_timestamp
            exemplars += len(ts2.exemplars)
            kept, gone = _keep(series, limit)
            dropped += gone
            if kept is not None:
                out.append(kept)
    return comparable(out, metadata, exemplars, dropped)


def comparable(series: list[RawSeries], metadata: dict[str, MetricKind], exemplars: int, dropped: int) -> Any:
    """Floats as their bits, so NaNs compare."""

    def b(value: float) -> int:
        return int(struct.unpack("<Q", struct.pack("<d", value))[0])

    return (
        [
            (
                s.labels,
                [(t, b(v)) for t, v in s.samples],
                [
                    (h.timestamp_ms, h.positive_counts, h.negative_counts, b(h.count), b(h.sum))
                    for h in s.histograms
                ],
                s.kind,
                s.created_ms,
            )
            for s in series
        ],
        metadata,
        exemplars,
        dropped,
    )


def of(decoded: Decoded) -> Any:
    r = decoded.request
    return comparable(r.series, r.metadata, r.exemplars, decoded.future_rejected)


def raw_request(version: str, series: list[Series]) -> bytes:
    if version == "1.0":
        return v1_message(series, {"up": MetricKind.GAUGE}).SerializeToString()
    return v2_message(series).SerializeToString()


def attempt(decoder: Decoder, payload: bytes, version: str, now_ms: int = NOW) -> Decoded | int:
    """The decoded request, or the status of the :class:`DecodeError` (nothing else may come out)."""
    try:
        return decoder.decode(payload, content_type(version), SNAPPY, now_ms)
    except DecodeError as error:
        caught = error
    assert caught.status in (400, 413), caught
    assert str(caught)
    assert "\n" not in str(caught)
    return caught.status


# --- valid requests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@FUZZ
@given(series=requests, now_offset=st.integers(-(10**9), 10**9))
def test_valid_requests_decode_as_protobuf_reads_them(
    version: str, series: list[Series], now_offset: int
) -> None:
    raw = raw_request(version, series)
    expected = oracle(raw, version, NOW + now_offset)
    cold = Decoder(LIMITS)
    first = cold.decode(snappy(raw), content_type(version), SNAPPY, NOW + now_offset)
    assert of(first) == expected
    again = cold.decode(snappy(raw), content_type(version), SNAPPY, NOW + now_offset)  # warm cache now
    assert of(again) == expected


# --- arbitrary and damaged bytes ---------------------------------------------------------------------------

_WARM = {version: Decoder(LIMITS) for version in VERSIONS}
_CORPUS: dict[str, list[bytes]] = {}


def corpus(version: str) -> list[bytes]:
    """Valid uncompressed requests of several kinds; the warm decoder has seen them all."""
    if version not in _CORPUS:
        up = (("__name__", "up"), ("instance", "a:9100"), ("job", "node"))
        special = [
            Series(labels=up, samples=[(BASE_MS, 1.0)], kind=MetricKind.GAUGE),
            Series(labels=(("__name__", "zero"),), samples=[(BASE_MS, 0.0)], created_ms=BASE_MS - 1),
            Series(labels=(("__name__", "z"),), samples=[(BASE_MS, 0.0), (BASE_MS + 1, STALE_NAN)]),
            Series(labels=(("__name__", "h"), ("le", "1")), histograms=[_HIST], exemplars=1, created_ms=5),
            Series(labels=(("__name__", "small"), ("x", "y")), samples=[(3, 1.0)], help="h", unit="u"),
        ]
        shapes = (prometheus_shape(0, version), dense_shape(0, version))
        bodies = [raw_request(version, special), *(snappy_decompress(shape) for shape in shapes)]
        _CORPUS[version] = bodies
        for raw in bodies:
            _WARM[version].decode(snappy(raw), content_type(version), SNAPPY, NOW)
    return _CORPUS[version]


_HIST = NativeHistogram(BASE_MS, 0, 0.0, 1.0, 4.0, 2.0, ((0, 2),), (1.0, 2.0), ((1, 1),), (1.0,), 1)


def snappy_decompress(payload: bytes) -> bytes:
    import cramjam

    return bytes(cramjam.snappy.decompress_raw(payload))


@pytest.mark.parametrize("version", VERSIONS)
@FUZZ
@given(payload=st.binary(max_size=300))
def test_arbitrary_bytes_only_ever_give_decode_errors(version: str, payload: bytes) -> None:
    attempt(_WARM[version], payload, version)
    attempt(_WARM[version], snappy(payload), version)


def _damage(draw: st.DrawFn, data: bytes, most: int = 3) -> bytes:
    raw = bytearray(data)
    for _ in range(draw(st.integers(1, most))):
        action = draw(st.sampled_from(["flip", "truncate", "splice", "insert", "delete", "byte"]))
        if not raw:
            break
        at = draw(st.integers(0, len(raw) - 1))
        if action == "flip":
            raw[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "byte":
            raw[at] = draw(st.sampled_from([0x00, 0x01, 0x0A, 0x10, 0x12, 0x2A, 0x7F, 0x80, 0xFF]))
        elif action == "truncate":
            del raw[at:]
        elif action == "splice":
            start = draw(st.integers(0, len(raw) - 1))
            raw[at:at] = raw[start : start + draw(st.integers(1, 40))]
        elif action == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del raw[at : at + draw(st.integers(1, 8))]
    return bytes(raw)


@st.composite
def damaged(draw: st.DrawFn, version: str) -> bytes:
    """A valid request with damage anywhere, or (half the time) inside one series only, the request
    around it re-framed so that the damage reaches the series decoders."""
    raw = draw(st.sampled_from(corpus(version)))
    if draw(st.booleans()):
        return _damage(draw, raw)
    outer = (lazy_pb2.WriteRequestV1 if version == "1.0" else lazy_pb2.RequestV2).FromString(raw)
    if not outer.timeseries:
        return _damage(draw, raw)
    index = draw(st.integers(0, len(outer.timeseries) - 1))
    outer.timeseries[index] = _damage(draw, outer.timeseries[index], most=1)
    return outer.SerializeToString()


@pytest.mark.parametrize("version", VERSIONS)
@settings(FUZZ, max_examples=400)
@given(data=st.data())
def test_damaged_requests_decode_the_same_warm_or_cold_and_as_protobuf_reads_them(
    version: str, data: st.DataObject
) -> None:
    check_consistent(data.draw(damaged(version)), version)


def check_consistent(raw: bytes, version: str) -> None:
    """Warm and cold decoders agree, and a request the decoder takes is one protobuf reads the same way
    (the decoder may refuse more, for its label rules, but never reads differently)."""
    warm = attempt(_WARM[version], snappy(raw), version)
    cold = attempt(Decoder(LIMITS), snappy(raw), version)
    assert _outcome(warm) == _outcome(cold)
    try:
        expected = oracle(raw, version, NOW)
    except (ProtobufDecodeError, DecodeError, UnicodeDecodeError, IndexError):
        assert not isinstance(warm, Decoded), "the decoder took what protobuf cannot read"
        return
    if isinstance(warm, Decoded):
        assert of(warm) == expected


def _outcome(result: Decoded | int) -> Any:
    return of(result) if isinstance(result, Decoded) else result


@pytest.mark.parametrize("version", VERSIONS)
def test_every_small_damage_inside_a_series(version: str) -> None:
    """Exhaustively: each series of a small request cut, shortened, or with a bit flipped at every byte."""
    raw = corpus(version)[0]
    outer = (lazy_pb2.WriteRequestV1 if version == "1.0" else lazy_pb2.RequestV2).FromString(raw)
    for index, encoded in enumerate(list(outer.timeseries)):
        for at in range(len(encoded)):
            flipped = [bytes([*encoded[:at], encoded[at] ^ bit, *encoded[at + 1 :]]) for bit in (0x01, 0x80)]
            for variant in (encoded[:at], encoded[:at] + encoded[at + 1 :], *flipped):
                outer.timeseries[index] = variant
                check_consistent(outer.SerializeToString(), version)
        outer.timeseries[index] = encoded


@pytest.mark.parametrize("version", VERSIONS)
@FUZZ
@given(data=st.data())
def test_damaged_compressed_bodies_only_ever_give_decode_errors(version: str, data: st.DataObject) -> None:
    payload = bytearray(snappy(data.draw(st.sampled_from(corpus(version)))))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(payload) - 1))
        if data.draw(st.booleans()):
            payload[at] ^= 1 << data.draw(st.integers(0, 7))
        else:
            del payload[at:]
        if not payload:
            break
    attempt(_WARM[version], bytes(payload), version)
