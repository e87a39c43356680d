"""Remote-write 1.0: a ``prometheus.WriteRequest``.

Series are left encoded by the outer parse. The common series (labels seen before, then one sample) is
read from its last 18 (or 9) bytes and a cache lookup of the bytes before them; a series with known labels
and several plain samples costs one pass over its label fields and a few C-level calls; anything else
(exemplars, histograms, unusual layouts, timestamps before 1971 or after 2109) is parsed by protobuf.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.message import DecodeError as ProtobufDecodeError

from connectors.remote_write.errors import BAD_REQUEST, DecodeError
from connectors.remote_write.histograms import native_histogram
from connectors.remote_write.labels import LabelCache
from connectors.remote_write.limits import Limits
from connectors.remote_write.proto import lazy_pb2, remote_v1_pb2
from connectors.remote_write.series import cached_labels, keep_present
from connectors.remote_write.wire import (
    SAMPLE,
    SAMPLE_ZERO,
    Fallback,
    Stamps,
    read_samples,
    read_varint,
    samples_from_bits,
    unpack_double,
)
from engine.raw import Labels, MetricKind, RawSeries, WriteRequest

_KINDS = {remote_v1_pb2.MetricMetadata.MetricType.Value(kind.value.upper()): kind for kind in MetricKind}


def decode_v1(raw: bytes, limits: Limits, cache: LabelCache, limit_ms: int) -> tuple[WriteRequest, int]:
    """The request, and how many samples were dropped for being later than ``limit_ms``."""
    try:
        message = lazy_pb2.WriteRequestV1.FromString(raw)
    except ProtobufDecodeError:
        raise DecodeError(BAD_REQUEST, "malformed protobuf: not a prometheus.WriteRequest") from None
    if raw and not message.timeseries and not message.metadata:
        raise DecodeError(BAD_REQUEST, "no series and no metadata: is this a 2.0 request sent as 1.0?")
    request = WriteRequest(metadata=_metadata(message.metadata))
    append = request.series.append
    get = cache.young.get
    stamps = Stamps()
    rejected = 0
    for encoded in message.timeseries:
        n = len(encoded)
        if n >= 18 and encoded.startswith(SAMPLE, n - 18) and encoded[n - 7] == 0x10:
            cut = n - 18
        elif n >= 9 and encoded.startswith(SAMPLE_ZERO, n - 9):
            cut = n - 9
        else:
            cut = -1
        if cut >= 0 and (labels := get(encoded[:cut])) is not None:
            try:
                stamp = stamps[encoded[n - 6 :]]
            except Fallback:
                pass
            else:
                if stamp > limit_ms:
                    rejected += 1
                else:
                    value = unpack_double(encoded, n - 15)[0] if cut == n - 18 else 0.0
                    append(RawSeries(labels, [(stamp, value)]))
                continue
        series, dropped, exemplars = _series(encoded, limits, cache, stamps, limit_ms)
        rejected += dropped
        request.exemplars += exemplars
        if series is not None:
            append(series)
    return request, rejected


def _series(
    encoded: bytes, limits: Limits, cache: LabelCache, stamps: Stamps, limit_ms: int
) -> tuple[RawSeries | None, int, int]:
    """One series off the fastest path: (series or None if every sample was dropped, dropped, exemplars)."""
    end = _labels_end(encoded)
    try:
        samples, rejected = read_samples(encoded, end, stamps, limit_ms) if end < len(encoded) else ([], 0)
    except Fallback:
        return _protobuf_series(encoded, limits, cache, limit_ms)
    # Only sample fields follow, so every label is in the prefix.
    labels = _prefix_labels(encoded[:end], limits, cache)
    if rejected and not samples:
        return None, rejected, 0
    return RawSeries(labels, samples), rejected, 0


def _labels_end(encoded: bytes) -> int:
    """Where the leading label fields (field 1, length-delimited) end."""
    pos, n = 0, len(encoded)
    while pos + 1 < n and encoded[pos] == 0x0A:
        length = encoded[pos + 1]
        if length < 0x80:
            end = pos + 2 + length
        else:
            try:
                length, start = read_varint(encoded, pos + 1)
            except Fallback:
                return pos
            end = start + length
        if end > n:
            return pos
        pos = end
    return pos


def _prefix_labels(key: bytes, limits: Limits, cache: LabelCache) -> Labels:
    """The labels encoded by ``key``, a run of complete label fields."""
    labels = cache.young.get(key)
    if labels is None:
        labels = cache.recall(key)
    if labels is None:
        try:
            message = lazy_pb2.TimeSeriesV1.FromString(key)
        except ProtobufDecodeError:
            raise DecodeError(BAD_REQUEST, "malformed protobuf: unreadable label in a series") from None
        labels = cached_labels(key, [(label.name, label.value) for label in message.labels], limits, cache)
    return labels


def _protobuf_series(
    encoded: bytes, limits: Limits, cache: LabelCache, limit_ms: int
) -> tuple[RawSeries | None, int, int]:
    try:
        message = lazy_pb2.TimeSeriesV1.FromString(encoded)
    except ProtobufDecodeError:
        raise DecodeError(BAD_REQUEST, "malformed protobuf: unreadable prometheus.TimeSeries") from None
    pairs = tuple((label.name, label.value) for label in message.labels)
    labels = cached_labels(pairs, pairs, limits, cache)
    samples = samples_from_bits(message.samples)
    where = RawSeries(labels).name
    histograms = [native_histogram(h, where) for h in message.histograms]
    series, rejected = keep_present(labels, samples, histograms, limit_ms)
    return series, rejected, len(message.exemplars)


def _metadata(entries: Iterable[remote_v1_pb2.MetricMetadata]) -> dict[str, MetricKind]:
    """Metric family name -> kind; unknown type numbers read as ``unknown``, nameless entries are skipped."""
    return {
        entry.metric_family_name: _KINDS.get(entry.type, MetricKind.UNKNOWN)
        for entry in entries
        if entry.metric_family_name
    }
