"""Native histograms from either protocol version (both define the same ``Histogram`` message)."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import accumulate

from connectors.remote_write.errors import BAD_REQUEST, DecodeError
from connectors.remote_write.proto import remote_v1_pb2, remote_v2_pb2
from engine.raw import NativeHistogram

_RESET_HINTS = range(4)  # unknown, yes, no, gauge: the same numbers in 1.0 and 2.0


def native_histogram(
    message: remote_v1_pb2.Histogram | remote_v2_pb2.Histogram, where: str
) -> NativeHistogram:
    """Bucket counts made absolute: integer histograms send deltas, float histograms absolute counts.
    ``where`` names the series in reasons."""
    h = message
    if h.WhichOneof("count") == "count_float":
        if h.WhichOneof("zero_count") == "zero_count_int" or h.positive_deltas or h.negative_deltas:
            raise DecodeError(BAD_REQUEST, f"float histogram with integer counts in series {where}")
        count = h.count_float
        zero_count = h.zero_count_float
        positive = tuple(h.positive_counts)
        negative = tuple(h.negative_counts)
    else:
        if h.WhichOneof("zero_count") == "zero_count_float" or h.positive_counts or h.negative_counts:
            raise DecodeError(BAD_REQUEST, f"integer histogram with float counts in series {where}")
        count = float(h.count_int)
        zero_count = float(h.zero_count_int)
        positive = _absolute(h.positive_deltas, where)
        negative = _absolute(h.negative_deltas, where)
    positive_spans = tuple((span.offset, span.length) for span in h.positive_spans)
    negative_spans = tuple((span.offset, span.length) for span in h.negative_spans)
    for side, spans, counts in (
        ("positive", positive_spans, positive),
        ("negative", negative_spans, negative),
    ):
        covered = sum(length for _, length in spans)
        if covered != len(counts):
            raise DecodeError(
                BAD_REQUEST,
                f"histogram {side} spans cover {covered} buckets but {len(counts)} counts were sent "
                f"in series {where}",
            )
    return NativeHistogram(
        timestamp_ms=h.timestamp,
        schema=h.schema,
        zero_threshold=h.zero_threshold,
        zero_count=zero_count,
        count=count,
        sum=h.sum,
        positive_spans=positive_spans,
        positive_counts=positive,
        negative_spans=negative_spans,
        negative_counts=negative,
        reset_hint=h.reset_hint if h.reset_hint in _RESET_HINTS else 0,
    )


def _absolute(deltas: Iterable[int], where: str) -> tuple[float, ...]:
    counts = tuple(accumulate(deltas))
    if counts and min(counts) < 0:
        raise DecodeError(BAD_REQUEST, f"integer histogram with a negative bucket count in series {where}")
    return tuple(map(float, counts))
