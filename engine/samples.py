"""The wire format of ``vigil.samples``: batches of samples, grouped by series.

Version 2 (written by ingest, the poller and ``vigil replay``) carries one of two kinds of series:

* ``"kind": "raw"`` — series exactly as a remote-write sender sent them, **not yet prepared** (the worker
  turns counters into rates and histogram buckets into quantiles)::

    {"v": 2, "kind": "raw", "series": [
      {"labels": {"__name__": "http_requests_total", "code": "500", "instance": "a:80", "job": "checkout"},
       "samples": [[1732530000000, 1027.0], [1732530015000, null]],
       "type": "counter",              # optional: the series' own metadata (remote-write 2.0)
       "created_ms": 1732520000000,    # optional: its created timestamp (remote-write 2.0)
       "histograms": [                 # optional: native histograms, fields as engine.raw.NativeHistogram
         {"timestamp_ms": 1732530000000, "schema": 3, "zero_threshold": 1e-128, "zero_count": 0.0,
          "count": 12.0, "sum": 3.5, "positive_spans": [[0, 2]], "positive_counts": [5.0, 7.0],
          "negative_spans": [], "negative_counts": [], "reset_hint": 0}]}]}

  A ``null`` sample value (or a ``null`` histogram ``sum``) is the stale marker; other NaN and ±Inf samples
  are dropped and counted by the sender's side, never written.
* ``"kind": "prepared"`` — series already computed (PromQL results, CSV replays): analysed as they are::

    {"v": 2, "kind": "prepared", "series": [
      {"service": "checkout", "metric": "error_ratio", "instance": "a:80",
       "points": [[1732530000000, 0.01]]}]}

Version 1 (``{"v": 1, "series": [...]}``, prepared series only) is still read, so a worker can be upgraded
while older records wait on the topic.

**Keys and partitions.** The sample key is :func:`sample_key` (service, metric family): every series of one
family of one service — all buckets of a histogram, its ``_sum`` and ``_count``, every label variant of a
counter — lands in one partition (Kafka's murmur2 partitioner on the key, :func:`partition_for`), so the
worker owning that partition prepares and analyses the whole family. For raw series the service is the value
of the configured service label (``labels.service``, or ``labels.default_service``) and the family is
:func:`family_of` the ``__name__``; for prepared series, :func:`family_of` the metric. A message holds the
series of one partition; its Kafka key is the sample key when it holds one key.

Timestamps are Unix milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from engine.errors import BadRecord

WIRE_VERSION = 2
#: versions a worker reads
READ_VERSIONS = (1, 2)
RAW_KIND = "raw"
PREPARED_KIND = "prepared"
#: Suffixes that :func:`family_of` strips: the series of one histogram, summary or counter share a family.
FAMILY_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")
MAX_NAME_LENGTH = 4096

Point = tuple[int, float | None]
_PREPARED_FIELDS = frozenset({"service", "metric", "instance", "points"})


@dataclass(frozen=True, slots=True)
class Series:
    """Prepared points of one (service, metric, instance), in time order. ``None`` marks staleness."""

    service: str
    metric: str
    instance: str
    points: Sequence[Point]

    @property
    def key(self) -> bytes:
        return analysis_key(self.service, self.metric)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A part of a record that was refused, with the reason; it goes to the dead-letter topic."""

    reason: str
    payload: Any


def analysis_key(service: str, metric: str) -> bytes:
    """The Kafka key of an analysis key.

    >>> analysis_key("checkout", "http_requests_total:rate")
    b'checkout\\x1fhttp_requests_total:rate'
    """
    return f"{service}\x1f{metric}".encode()


def family_of(name: str) -> str:
    """The metric family of a series or prepared metric name: the name before any ``:`` or ``{``, without a
    ``_bucket``, ``_sum``, ``_count``, ``_total`` or ``_created`` suffix.

    >>> family_of("http_request_duration_seconds_bucket")
    'http_request_duration_seconds'
    >>> family_of("http_requests_total:rate{code=\\"500\\"}")
    'http_requests'
    >>> family_of("error_ratio")
    'error_ratio'
    """
    end = len(name)
    for stop in (":", "{"):
        at = name.find(stop)
        if 0 <= at < end:
            end = at
    base = name[:end]
    for suffix in FAMILY_SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)]
    return base


def sample_key(service: str, family: str) -> bytes:
    """The Kafka key of samples (and of their checkpoint): (service, metric family).

    >>> sample_key("checkout", "http_requests")
    b'checkout\\x1fhttp_requests'
    """
    return f"{service}\x1f{family}".encode()


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (the Java client's default partitioner), as a positive 31-bit int."""
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    r = 24
    h = (seed ^ length) & 0xFFFFFFFF
    full = length - length % 4
    for i in range(0, full, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length % 4
    if rest == 3:
        h ^= data[full + 2] << 16
    if rest >= 2:
        h ^= data[full + 1] << 8
    if rest >= 1:
        h ^= data[full]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h & 0x7FFFFFFF


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key``."""
    return murmur2(key) % partitions


def encode_batch(series: Iterable[Series]) -> bytes:
    """Encode prepared series as one ``vigil.samples`` message value (version 2, ``"kind": "prepared"``)."""
    return orjson.dumps(
        {
            "v": WIRE_VERSION,
            "kind": PREPARED_KIND,
            "series": [
                {"service": s.service, "metric": s.metric, "instance": s.instance, "points": s.points}
                for s in series
            ],
        }
    )


def decode_batch(
    raw: bytes | None, *, now_ms: int, max_future_ms: int
) -> tuple[list[Series], list[Rejected]]:
    """Decode and check one message value of prepared series (version 1, or version 2 ``prepared``).

    Raises :class:`BadRecord` when the whole record is unusable (not JSON, wrong shape, wrong version).
    Series or points that break a rule are returned as :class:`Rejected`; the rest is kept, so one bad
    point never costs the good ones beside it. (:func:`engine.records.decode_record` reads raw series too.)
    """
    doc = load_record(raw)
    if doc.get("v") == 2 and doc.get("kind") != PREPARED_KIND:
        raise BadRecord(f"expected a record of prepared series, got kind {doc.get('kind')!r}")
    return decode_prepared(doc["series"], now_ms=now_ms, max_future_ms=max_future_ms)


def load_record(raw: bytes | None) -> dict[str, Any]:
    """Parse one message value and check its envelope: a JSON object of a known version with a series list.

    Raises :class:`BadRecord` with the reason when it is not one.
    """
    if raw is None:
        raise BadRecord("empty record (no value)")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRecord(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRecord(f"expected a JSON object, got {type(doc).__name__}")
    version = doc.get("v")
    if type(version) is not int or version not in READ_VERSIONS:
        raise BadRecord(f"unsupported wire version {version!r}, expected one of {READ_VERSIONS}")
    if version == 1 and "kind" in doc:
        raise BadRecord("a version 1 record has no 'kind'")
    if version == 2 and doc.get("kind") not in (RAW_KIND, PREPARED_KIND):
        raise BadRecord(f"'kind' must be {RAW_KIND!r} or {PREPARED_KIND!r}, got {doc.get('kind')!r:.80}")
    extra = doc.keys() - {"v", "kind", "series"}
    if extra:
        raise BadRecord(f"unknown record fields {sorted(extra)!r:.200}")
    if not isinstance(doc.get("series"), list):
        raise BadRecord("'series' must be a list")
    return doc


def decode_prepared(
    items: list[Any], *, now_ms: int, max_future_ms: int
) -> tuple[list[Series], list[Rejected]]:
    """The prepared series of a record's ``series`` list, and what was refused of them."""
    kept: list[Series] = []
    rejected: list[Rejected] = []
    limit = now_ms + max_future_ms
    for item in items:
        try:
            series, bad_points = _decode_series(item, limit)
        except BadRecord as exc:
            rejected.append(Rejected(str(exc), item))
            continue
        if bad_points:
            rejected.append(Rejected(bad_points[0][0], {**item, "points": [p for _, p in bad_points]}))
        if series.points:
            kept.append(series)
    return kept, rejected


def _decode_series(item: Any, limit_ms: int) -> tuple[Series, list[tuple[str, Any]]]:
    if not isinstance(item, dict):
        raise BadRecord(f"series must be an object, got {type(item).__name__}")
    extra = item.keys() - _PREPARED_FIELDS
    if extra:
        raise BadRecord(f"unknown series fields {sorted(extra)!r:.200}")
    names = []
    for field in ("service", "metric", "instance"):
        value = item.get(field)
        if not isinstance(value, str) or len(value) > MAX_NAME_LENGTH:
            raise BadRecord(f"series field {field!r} must be a string of at most {MAX_NAME_LENGTH} chars")
        names.append(value)
    if not names[0] or not names[1]:
        raise BadRecord("series needs a non-empty service and metric")
    raw_points = item.get("points")
    if not isinstance(raw_points, list):
        raise BadRecord("'points' must be a list")
    points: list[Point] = []
    bad: list[tuple[str, Any]] = []
    append = points.append
    for p in raw_points:
        # Fast path for the usual [int, float] point; anything else gets the full check and a reason.
        if type(p) is list and len(p) == 2:
            ts, value = p
            if type(ts) is int and 0 <= ts <= limit_ms and type(value) is float and value - value == 0.0:
                append((ts, value))
                continue
        reason = _point_problem(p, limit_ms)
        if reason:
            bad.append((reason, p))
        else:
            append((p[0], p[1]))
    return Series(names[0], names[1], names[2], points), bad


def _point_problem(p: Any, limit_ms: int) -> str | None:
    if not isinstance(p, list) or len(p) != 2:
        return "a point must be [timestamp_ms, value]"
    ts, value = p
    if not isinstance(ts, int) or isinstance(ts, bool) or ts < 0:
        return "timestamp must be a non-negative integer (Unix ms)"
    if ts > limit_ms:
        return f"timestamp {ts} is too far in the future"
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "value must be a number or null (stale marker)"
    if not math.isfinite(value):
        return "value must be finite"
    return None


def encode_raw_batch(series: Sequence[Mapping[str, Any]]) -> bytes:
    """One ``vigil.samples`` message value of ``"kind": "raw"`` series, shaped as the module docstring says.

    Each item is already in the documented shape (``labels``, ``samples`` with ``None`` for the stale marker,
    and the optional ``type``, ``created_ms``, ``histograms``); values may be :class:`orjson.Fragment` (e.g.
    pre-encoded labels). Non-finite floats must be dropped before: JSON has none, orjson would write ``null``,
    which reads as a stale marker.

    >>> encode_raw_batch([{"labels": {"__name__": "up", "job": "a"}, "samples": [(1000, 1.0), (2000, None)]}])
    b'{"v":2,"kind":"raw","series":[{"labels":{"__name__":"up","job":"a"},"samples":[[1000,1.0],[2000,null]]}]}'
    """
    return orjson.dumps({"v": WIRE_VERSION, "kind": RAW_KIND, "series": series})
