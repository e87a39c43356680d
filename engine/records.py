"""Reading and writing ``vigil.samples`` records of both kinds (the format is in :mod:`engine.samples`).

Everything read here comes from Kafka, so it is checked strictly and never trusted: every field has one
type (a bool is not a number, a number is finite, a string is bounded), sizes are bounded, and anything
else is refused with a reason. A refused series, or point, goes to the dead-letter topic; the rest of the
record is processed.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from engine.errors import BadRecord
from engine.raw import Labels, MetricKind, NativeHistogram, RawSeries
from engine.samples import (
    PREPARED_KIND,
    RAW_KIND,
    Rejected,
    Series,
    decode_prepared,
    encode_raw_batch,
    load_record,
)

__all__ = [
    "MAX_BUCKETS",
    "MAX_LABELS",
    "MAX_LABEL_NAME",
    "MAX_LABEL_VALUE",
    "STALE_NAN",
    "Decoded",
    "LabelCache",
    "decode_record",
    "encode_raw",
]

#: Prometheus' stale marker, a NaN with one exact bit pattern (``null`` on the wire).
STALE_NAN: Final = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
#: Bounds on what one raw series may carry (ingest's own limits are lower; these only stop hostile records).
MAX_LABELS: Final = 256
MAX_LABEL_NAME: Final = 1024
MAX_LABEL_VALUE: Final = 16 * 1024
MAX_BUCKETS: Final = 4096  # per side (spans, counts) of a native histogram
_RAW_FIELDS: Final = frozenset({"labels", "samples", "type", "created_ms", "histograms"})
_HIST_FIELDS: Final = frozenset(
    {
        "timestamp_ms",
        "schema",
        "zero_threshold",
        "zero_count",
        "count",
        "sum",
        "positive_spans",
        "positive_counts",
        "negative_spans",
        "negative_counts",
        "reset_hint",
    }
)
_KINDS: Final = {k.value: k for k in MetricKind}
_INT64: Final = 1 << 63
#: Label sets a :class:`LabelCache` holds at most (then it starts again, empty).
LABEL_CACHE: Final = 200_000
_SEQUENCES: Final = (list, tuple)  # JSON arrays are lists; an absent field is the empty tuple


@dataclass(slots=True)
class Decoded:
    """One record: its kind, its series (prepared or raw) and what was refused of it."""

    kind: str  # engine.samples.RAW_KIND or PREPARED_KIND (version 1 records are prepared)
    prepared: list[Series] = field(default_factory=list)
    raw: list[RawSeries] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


class LabelCache:
    """Label sets already checked and sorted, by their pairs as sent.

    A worker reads the same series in record after record, and checking and sorting their labels every
    time was a fifth of its work per sample. A label set that was valid once is valid again, so it is
    checked once; after that the pairs as sent find the same :data:`~engine.raw.Labels` tuple, which also
    makes the look-ups by it further on (sample key, preparation track) compare by identity. Only valid
    label sets are kept, at most ``limit`` (then it starts again, empty).
    """

    __slots__ = ("_known", "limit")

    def __init__(self, limit: int = LABEL_CACHE) -> None:
        self._known: dict[tuple[tuple[str, Any], ...], Labels] = {}
        self.limit = limit

    def __len__(self) -> int:
        return len(self._known)

    def labels(self, given: Any) -> Labels:
        """The checked, sorted labels of a series' ``labels`` object; :class:`BadRecord` if they are bad."""
        if type(given) is not dict:
            return _labels(given)
        pairs = tuple(given.items())
        try:
            found = self._known.get(pairs)
        except TypeError:  # an unhashable value (a list, an object): never a valid label set
            return _labels(given)
        if found is None:
            found = _labels(given)  # raises BadRecord: nothing bad is kept
            known = self._known
            if len(known) >= self.limit:
                known.clear()
            known[pairs] = found
        return found


def decode_record(
    raw: bytes | None, *, now_ms: int, max_future_ms: int, labels: LabelCache | None = None
) -> Decoded:
    """Decode and check one message value of either kind and version 1 or 2.

    Raises :class:`BadRecord` when the whole record is unusable; refused series and points are returned
    in :attr:`Decoded.rejected`, each with its reason. With ``labels``, label sets seen before are not
    checked again (a worker passes the same cache with every record).
    """
    doc = load_record(raw)
    items: list[Any] = doc["series"]
    if doc["v"] == 1 or doc["kind"] == PREPARED_KIND:
        prepared, rejected = decode_prepared(items, now_ms=now_ms, max_future_ms=max_future_ms)
        return Decoded(PREPARED_KIND, prepared=prepared, rejected=rejected)
    out = Decoded(RAW_KIND)
    limit = now_ms + max_future_ms
    read_labels = _labels if labels is None else labels.labels
    for item in items:
        try:
            series, bad = _raw_series(item, limit, read_labels)
        except BadRecord as exc:
            out.rejected.append(Rejected(str(exc), item))
            continue
        if bad:
            out.rejected.append(
                Rejected(bad[0][0], {"labels": item["labels"], "refused": [p for _, p in bad]})
            )
        if series.samples or series.histograms:
            out.raw.append(series)
    return out


# --- raw series ------------------------------------------------------------------------------------------


def _raw_series(
    item: Any, limit_ms: int, read_labels: Callable[[Any], Labels]
) -> tuple[RawSeries, list[tuple[str, Any]]]:
    """One raw series; the points refused (reason, point) beside it. ``read_labels`` checks its labels."""
    if type(item) is not dict:
        raise BadRecord(f"series must be an object, got {type(item).__name__}")
    # The usual series has labels and samples only, so there is no other field to check.
    usual = len(item) == 2 and "labels" in item and "samples" in item
    if not usual:
        extra = item.keys() - _RAW_FIELDS
        if extra:
            raise BadRecord(f"unknown series fields {sorted(extra)!r:.200}")
    labels = read_labels(item.get("labels"))
    kind: MetricKind | None = None
    created = 0
    samples_in: Any = item.get("samples", ())
    histograms_in: Any = ()
    if not usual:
        if "type" in item:
            given = item["type"]
            if type(given) is not str or given not in _KINDS:
                raise BadRecord(f"'type' must be one of {sorted(_KINDS)}, got {given!r:.80}")
            kind = _KINDS[given]
        created = item.get("created_ms", 0)
        if type(created) is not int or not 0 <= created <= limit_ms:
            raise BadRecord("'created_ms' must be a non-negative integer (Unix ms), not in the future")
        histograms_in = item.get("histograms", ())
    if type(samples_in) not in _SEQUENCES or type(histograms_in) not in _SEQUENCES:
        raise BadRecord("'samples' and 'histograms' must be lists")
    bad: list[tuple[str, Any]] = []
    samples: list[tuple[int, float]] = []
    append = samples.append
    for p in samples_in:
        # Fast path for the usual [int, float] sample; anything else gets the full check and a reason.
        if type(p) is list and len(p) == 2:
            ts, value = p
            if type(ts) is int and 0 <= ts <= limit_ms and type(value) is float and value - value == 0.0:
                append((ts, value))
                continue
        reason = _sample_problem(p, limit_ms)
        if reason:
            bad.append((reason, p))
        else:
            append((p[0], STALE_NAN if p[1] is None else float(p[1])))
    histograms: list[NativeHistogram] = []
    for h in histograms_in:
        try:
            histograms.append(_histogram(h, limit_ms))
        except BadRecord as exc:
            bad.append((str(exc), h))
    return RawSeries(labels, samples, histograms, kind, created), bad


def _labels(given: Any) -> tuple[tuple[str, str], ...]:
    if type(given) is not dict:
        raise BadRecord(f"'labels' must be an object of strings, got {type(given).__name__}")
    if len(given) > MAX_LABELS:
        raise BadRecord(f"{len(given)} labels, at most {MAX_LABELS} allowed")
    for name, value in given.items():
        if not name or len(name) > MAX_LABEL_NAME:
            raise BadRecord(f"label names must have 1 to {MAX_LABEL_NAME} characters, got {name[:80]!r}")
        if type(value) is not str:
            raise BadRecord(f"label {name[:80]!r} must be a string, got {type(value).__name__}")
        if len(value) > MAX_LABEL_VALUE:
            raise BadRecord(f"label {name[:80]!r} is longer than {MAX_LABEL_VALUE} characters")
    name = given.get("__name__")
    if not name:
        raise BadRecord("a raw series needs a non-empty '__name__' label")
    return tuple(sorted(given.items()))


def _is_number(value: Any) -> bool:
    return type(value) is float or (type(value) is int and -_INT64 <= value < _INT64)


def _sample_problem(p: Any, limit_ms: int) -> str | None:
    if type(p) is not list or len(p) != 2:
        return "a sample must be [timestamp_ms, value]"
    ts, value = p
    if type(ts) is not int or ts < 0:
        return "timestamp must be a non-negative integer (Unix ms)"
    if ts > limit_ms:
        return f"timestamp {ts} is too far in the future"
    if value is None:
        return None
    if not _is_number(value):
        return "value must be a number or null (stale marker)"
    if not math.isfinite(value):
        return "value must be finite"
    return None


def _histogram(h: Any, limit_ms: int) -> NativeHistogram:
    if type(h) is not dict:
        raise BadRecord(f"a native histogram must be an object, got {type(h).__name__}")
    if h.keys() != _HIST_FIELDS:
        missing, extra = sorted(_HIST_FIELDS - h.keys()), sorted(h.keys() - _HIST_FIELDS)
        raise BadRecord(f"native histogram fields: missing {missing}, unknown {extra!r:.200}")
    ts = h["timestamp_ms"]
    if type(ts) is not int or not 0 <= ts <= limit_ms:
        raise BadRecord("histogram timestamp_ms must be a non-negative integer (Unix ms), not in the future")
    schema, hint = h["schema"], h["reset_hint"]
    if type(schema) is not int or not -53 <= schema <= 52:
        raise BadRecord("histogram schema must be an integer in -53..52")
    if type(hint) is not int or not 0 <= hint <= 3:
        raise BadRecord("histogram reset_hint must be 0, 1, 2 or 3")
    numbers = []
    for name in ("zero_threshold", "zero_count", "count"):
        value = h[name]
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            raise BadRecord(f"histogram {name} must be a finite non-negative number")
        numbers.append(float(value))
    total = h["sum"]
    if total is not None and (not _is_number(total) or not math.isfinite(total)):
        raise BadRecord("histogram sum must be a finite number or null (stale marker)")
    sides = []
    for side in ("positive", "negative"):
        spans, counts = h[f"{side}_spans"], h[f"{side}_counts"]
        if type(spans) is not list or type(counts) is not list:
            raise BadRecord(f"histogram {side}_spans and {side}_counts must be lists")
        if len(spans) > MAX_BUCKETS or len(counts) > MAX_BUCKETS:
            raise BadRecord(f"histogram has more than {MAX_BUCKETS} {side} spans or buckets")
        for span in spans:
            if (
                type(span) is not list
                or len(span) != 2
                or type(span[0]) is not int
                or type(span[1]) is not int
                or not -_INT64 <= span[0] < _INT64
                or not 0 <= span[1] <= MAX_BUCKETS
            ):
                raise BadRecord(f"histogram {side} spans must be [offset, length] integer pairs")
        for count in counts:
            if not _is_number(count) or not math.isfinite(count) or count < 0:
                raise BadRecord(f"histogram {side} counts must be finite non-negative numbers")
        sides.append((tuple((s[0], s[1]) for s in spans), tuple(float(c) for c in counts)))
    return NativeHistogram(
        timestamp_ms=ts,
        schema=schema,
        zero_threshold=numbers[0],
        zero_count=numbers[1],
        count=numbers[2],
        sum=STALE_NAN if total is None else float(total),
        positive_spans=sides[0][0],
        positive_counts=sides[0][1],
        negative_spans=sides[1][0],
        negative_counts=sides[1][1],
        reset_hint=hint,
    )


# --- writing ---------------------------------------------------------------------------------------------


def encode_raw(series: Iterable[RawSeries]) -> bytes:
    """Raw series as one ``vigil.samples`` message value (version 2, ``"kind": "raw"``).

    A stale marker becomes ``null``; other NaN and ±Inf samples are left out (the sender counts them).
    """
    return encode_raw_batch([_raw_doc(s) for s in series])


def _raw_doc(s: RawSeries) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "labels": dict(s.labels),
        "samples": [
            [ts, v if math.isfinite(v) else None] for ts, v in s.samples if math.isfinite(v) or _stale(v)
        ],
    }
    if s.kind is not None:
        doc["type"] = s.kind.value
    if s.created_ms:
        doc["created_ms"] = s.created_ms
    if s.histograms:
        doc["histograms"] = [
            {
                "timestamp_ms": h.timestamp_ms,
                "schema": h.schema,
                "zero_threshold": h.zero_threshold,
                "zero_count": h.zero_count,
                "count": h.count,
                "sum": None if _stale(h.sum) else h.sum,
                "positive_spans": h.positive_spans,
                "positive_counts": h.positive_counts,
                "negative_spans": h.negative_spans,
                "negative_counts": h.negative_counts,
                "reset_hint": h.reset_hint,
            }
            for h in s.histograms
        ]
    return doc


def _stale(value: float) -> bool:
    return struct.pack("<d", value) == struct.pack("<d", STALE_NAN)
