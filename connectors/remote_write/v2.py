"""Remote-write 2.0: an ``io.prometheus.write.v2.Request``.

Series are left encoded by the outer parse and walked field by field: label refs, plain samples, metadata
and the created timestamp are read directly; anything else (histograms, exemplars, unusual layouts) sends
the series to protobuf. Label sets are cached by the tuple of symbol bytes they refer to, which (unlike the
refs) means the same thing in every request.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter

from google.protobuf.message import DecodeError as ProtobufDecodeError

from connectors.remote_write.errors import BAD_REQUEST, DecodeError
from connectors.remote_write.histograms import native_histogram
from connectors.remote_write.labels import LabelCache
from connectors.remote_write.limits import Limits
from connectors.remote_write.proto import lazy_pb2, remote_v2_pb2
from connectors.remote_write.series import cached_labels, keep_present
from connectors.remote_write.wire import (
    SAMPLE,
    SAMPLE_ZERO,
    Fallback,
    Stamps,
    read_varint,
    samples_from_bits,
    signed64,
    uint32s,
    unpack_double,
)
from engine.raw import Labels, MetricKind, RawSeries, WriteRequest

_KINDS = {
    remote_v2_pb2.Metadata.MetricType.Value(f"METRIC_TYPE_{kind.value.upper()}"): kind
    for kind in MetricKind
    if kind is not MetricKind.UNKNOWN
}  # METRIC_TYPE_UNSPECIFIED, like a missing metadata field, says nothing: kind None


def decode_v2(raw: bytes, limits: Limits, cache: LabelCache, limit_ms: int) -> tuple[WriteRequest, int]:
    """The request, and how many samples were dropped for being later than ``limit_ms``."""
    try:
        message = lazy_pb2.RequestV2.FromString(raw)
    except ProtobufDecodeError:
        raise DecodeError(BAD_REQUEST, "malformed protobuf: not an io.prometheus.write.v2.Request") from None
    symbols = list(message.symbols)
    if raw and not symbols and not message.timeseries:
        raise DecodeError(
            BAD_REQUEST, "no symbols and no series: is this a 1.0 prometheus.WriteRequest sent as 2.0?"
        )
    if (symbols or message.timeseries) and symbols[:1] != [b""]:
        raise DecodeError(BAD_REQUEST, "the symbol table must start with the empty string")
    request = WriteRequest()
    append = request.series.append
    get = cache.young.get
    stamps = Stamps()
    kinds = _Kinds(len(symbols))
    tails = _Tails(kinds)
    rejected = 0
    for encoded in message.timeseries:
        try:
            if not encoded.startswith(b"\x0a") or len(encoded) < 2 or encoded[1] >= 0x80:
                raise Fallback
            end = 2 + encoded[1]
            if end > len(encoded):
                raise Fallback
            refs = encoded[2:end]
            # One sample, then metadata and created timestamp (their bytes repeat: see _Tails), or not.
            if encoded.startswith(SAMPLE, end) and encoded[end + 11 : end + 12] == b"\x10":
                single = not encoded.startswith(b"\x12", end + 18)
                if single:
                    samples = [(stamps[encoded[end + 12 : end + 18]], unpack_double(encoded, end + 3)[0])]
                    kind, created_ms = tails[encoded[end + 18 :]]
            elif encoded.startswith(SAMPLE_ZERO, end):
                single = not encoded.startswith(b"\x12", end + 9)
                if single:
                    samples = [(stamps[encoded[end + 3 : end + 9]], 0.0)]
                    kind, created_ms = tails[encoded[end + 9 :]]
            else:
                single = False
            if not single:
                samples, kind, created_ms = _walk(encoded, end, stamps, kinds)
            try:
                if not refs.isascii() or len(refs) < 2 or len(refs) & 1:
                    raise IndexError
                key = itemgetter(*refs)(symbols)  # every ref is one byte: the bytes are the refs
            except IndexError:
                key = symbol_key(uint32s(refs), symbols, "labels_refs")
        except Fallback:
            series, dropped, exemplars = _protobuf_series(encoded, symbols, limits, cache, limit_ms)
            rejected += dropped
            request.exemplars += exemplars
            if series is not None:
                append(series)
            continue
        labels = get(key)
        if labels is None:
            labels = _labels(key, limits, cache)
        if samples and (samples[0][0] if single else max(samples)[0]) > limit_ms:
            kept = [sample for sample in samples if sample[0] <= limit_ms]
            rejected += len(samples) - len(kept)
            if not kept:
                continue
            samples = kept
        append(RawSeries(labels, samples, [], kind, created_ms))
    return request, rejected


def _walk(
    encoded: bytes, pos: int, stamps: Stamps, kinds: _Kinds
) -> tuple[list[tuple[int, float]], MetricKind | None, int]:
    """The fields after the label refs, read one by one: samples, metadata (once: protobuf merges repeated
    ones) and the created timestamp."""
    n = len(encoded)
    samples: list[tuple[int, float]] = []
    kind: MetricKind | None = None
    created = 0
    metadata_seen = False
    while pos < n:
        tag = encoded[pos]
        if tag == 0x12:
            if encoded.startswith(SAMPLE, pos) and pos + 18 <= n and encoded[pos + 11] == 0x10:
                samples.append((stamps[encoded[pos + 12 : pos + 18]], unpack_double(encoded, pos + 3)[0]))
                pos += 18
            elif encoded.startswith(SAMPLE_ZERO, pos) and pos + 9 <= n:
                samples.append((stamps[encoded[pos + 3 : pos + 9]], 0.0))
                pos += 9
            else:
                raise Fallback
        elif tag == 0x2A and not metadata_seen and pos + 1 < n and encoded[pos + 1] < 0x80:
            end = pos + 2 + encoded[pos + 1]
            if end > n:
                raise Fallback
            kind = kinds[encoded[pos + 2 : end]]
            metadata_seen = True
            pos = end
        elif tag == 0x30:
            created, pos = read_varint(encoded, pos + 1)
        else:
            raise Fallback
    return samples, kind, signed64(created)


def symbol_key(refs: Sequence[int] | bytes, symbols: list[bytes], what: str) -> tuple[bytes, ...]:
    """The symbols that label refs point to; a 400 for an odd count or a ref out of range."""
    if len(refs) % 2:
        raise DecodeError(BAD_REQUEST, f"{what} has an odd number of entries ({len(refs)})")
    try:
        return tuple(map(symbols.__getitem__, refs))
    except IndexError:
        bad = next(ref for ref in refs if ref >= len(symbols))
        raise DecodeError(
            BAD_REQUEST, f"{what} refers to symbol {bad}, but the symbol table has {len(symbols)} entries"
        ) from None


def _labels(key: tuple[bytes, ...], limits: Limits, cache: LabelCache) -> Labels:
    return cached_labels(key, list(zip(key[0::2], key[1::2], strict=True)), limits, cache)


class _Tails(dict[bytes, tuple[MetricKind | None, int]]):
    """Metadata and created timestamp by the bytes that follow a series' only sample: the series of a
    family mostly end in the same few bytes."""

    def __init__(self, kinds: _Kinds) -> None:
        super().__init__()
        self.kinds = kinds

    def __missing__(self, raw: bytes) -> tuple[MetricKind | None, int]:
        samples, kind, created = _walk(raw, 0, Stamps(), self.kinds)
        if samples:
            raise Fallback
        self[raw] = kind, created
        return kind, created


class _Kinds(dict[bytes, MetricKind | None]):
    """Metric kinds by encoded metadata message: series of one family repeat the same few bytes."""

    def __init__(self, symbol_count: int) -> None:
        super().__init__()
        self.symbol_count = symbol_count

    def __missing__(self, raw: bytes) -> MetricKind | None:
        try:
            metadata = remote_v2_pb2.Metadata.FromString(raw)
        except ProtobufDecodeError:
            raise Fallback from None
        kind = self[raw] = metadata_kind(metadata, self.symbol_count)
        return kind


def metadata_kind(metadata: remote_v2_pb2.Metadata, symbol_count: int) -> MetricKind | None:
    for field, ref in (("help_ref", metadata.help_ref), ("unit_ref", metadata.unit_ref)):
        if ref >= symbol_count:
            raise DecodeError(
                BAD_REQUEST,
                f"metadata {field} refers to symbol {ref}, but the symbol table has {symbol_count} entries",
            )
    return _KINDS.get(metadata.type)


def _protobuf_series(
    encoded: bytes, symbols: list[bytes], limits: Limits, cache: LabelCache, limit_ms: int
) -> tuple[RawSeries | None, int, int]:
    try:
        message = lazy_pb2.TimeSeriesV2.FromString(encoded)
    except ProtobufDecodeError:
        raise DecodeError(
            BAD_REQUEST, "malformed protobuf: unreadable io.prometheus.write.v2.TimeSeries"
        ) from None
    labels = _labels(symbol_key(message.labels_refs, symbols, "labels_refs"), limits, cache)
    for exemplar in message.exemplars:
        symbol_key(exemplar.labels_refs, symbols, "exemplar labels_refs")
    kind = metadata_kind(message.metadata, len(symbols)) if message.HasField("metadata") else None
    samples = samples_from_bits(message.samples)
    where = RawSeries(labels).name
    histograms = [native_histogram(h, where) for h in message.histograms]
    series, rejected = keep_present(labels, samples, histograms, limit_ms)
    if series is not None:
        series.kind = kind
        series.created_ms = message.created_timestamp
    return series, rejected, len(message.exemplars)
