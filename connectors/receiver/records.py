"""A decoded write request as ``vigil.samples`` records: raw series, one message per partition.

Ingest keeps no series state: what leaves here is what the sender sent, minus what cannot be sent on,
each series in the ``"kind": "raw"`` shape of :mod:`engine.samples`:

* a series without the service label (``labels.service``, or ``labels.default_service`` when it is set)
  is dropped and counted (``no_service``): its key could not be formed;
* the stale marker (a NaN with the exact bits ``0x7ff0000000000002``) becomes ``null``, as does a stale
  native histogram's ``sum``; other NaN and ±Inf values are dropped and counted (``nonfinite``) — JSON has
  no such numbers, and orjson would write them as ``null``, a stale marker;
* samples more than ``detection.max_future_s`` ahead were already dropped (and counted) by the decoder.

The key is :func:`~engine.samples.sample_key` (service, :func:`~engine.samples.family_of` ``__name__``) and
the partition :func:`~engine.samples.partition_for` it, with the partition count the topic has. The series
of one partition go into one message, in the order of the request (split in order when over
:data:`MAX_MESSAGE_BYTES`), so the points of one series reach Kafka in the order the sender sent them.

Remote-write 1.0 metadata (sent in requests of its own) becomes records of the metadata topic: key = the
family, value ``{"family", "type"}``. Remote-write 2.0 metadata travels with its series (``type``,
``created_ms``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from engine.config import LabelsConfig
from engine.preparation.names import is_stale_nan
from engine.raw import Labels, MetricKind, NativeHistogram, RawSeries, WriteRequest
from engine.samples import encode_raw_batch, family_of, partition_for, sample_key

#: Largest ``vigil.samples`` message value: below Kafka's default ``message.max.bytes`` (1 MB).
MAX_MESSAGE_BYTES: Final = 900 * 1024
NO_SERVICE: Final = "no_service"
NONFINITE: Final = "nonfinite"
_CACHE_SIZE: Final = 1 << 18  # label sets whose key, partition and JSON are remembered


@dataclass(frozen=True, slots=True)
class Message:
    """One record to produce. ``partition`` None lets Kafka's partitioner pick (by ``key``)."""

    topic: str
    partition: int | None
    key: bytes | None
    value: bytes
    points: int = 0  # samples and native histograms in it


@dataclass(slots=True)
class Records:
    """What one request becomes: the messages, and what was kept and dropped on the way."""

    messages: list[Message] = field(default_factory=list)
    samples: int = 0
    histograms: int = 0
    samples_dropped: Counter[str] = field(default_factory=Counter)  # by reason
    histograms_dropped: Counter[str] = field(default_factory=Counter)
    series_dropped: Counter[str] = field(default_factory=Counter)
    metadata: dict[str, str] = field(default_factory=dict)  # family -> type, in the messages


@dataclass(frozen=True, slots=True)
class _Where:
    key: bytes
    partition: int
    labels: orjson.Fragment


_UNKNOWN: Final = _Where(b"", -1, orjson.Fragment(b"{}"))  # not in the cache yet


class RecordBuilder:
    """Turns decoded requests into messages. Remembers only derived facts of label sets (their key,
    partition and JSON), never series state: two builders given the same request build the same records."""

    def __init__(self, labels: LabelsConfig, samples_topic: str, metadata_topic: str) -> None:
        self._service_label = labels.service
        self._default_service = labels.default_service or None
        self._samples_topic = samples_topic
        self._metadata_topic = metadata_topic
        self._where: dict[Labels, _Where | None] = {}
        self._partitions = 0

    def build(self, request: WriteRequest, partitions: int, known: dict[str, str] | None = None) -> Records:
        """The records of ``request`` for a samples topic of ``partitions`` partitions. Metadata whose type
        ``known`` already holds (published before) is left out."""
        if partitions != self._partitions:
            self._where.clear()
            self._partitions = partitions
        out = Records()
        by_partition: dict[int, list[dict[str, Any]]] = {}
        keys: dict[int, bytes | None] = {}
        points: dict[int, int] = {}
        cache = self._where
        for raw in request.series:
            where = cache.get(raw.labels, _UNKNOWN)
            if where is _UNKNOWN:
                where = self._locate(raw)
            if where is None:
                out.series_dropped[NO_SERVICE] += 1
                if raw.samples:
                    out.samples_dropped[NO_SERVICE] += len(raw.samples)
                if raw.histograms:
                    out.histograms_dropped[NO_SERVICE] += len(raw.histograms)
                continue
            item = self._series(raw, where, out)
            if item is None:
                continue
            n = len(item["samples"]) + len(item.get("histograms", ()))
            p = where.partition
            members = by_partition.get(p)
            if members is None:
                by_partition[p] = [item]
                keys[p] = where.key
                points[p] = n
            else:
                members.append(item)
                points[p] += n
                if keys[p] != where.key:
                    keys[p] = None
        for p, members in by_partition.items():
            key = keys[p]
            out.messages.extend(
                Message(self._samples_topic, p, key, value, n)
                for value, n in encode_chunks(members, points=points[p])
            )
        for family, kind in _families(request.metadata).items():
            if known is not None and known.get(family) == kind:
                continue
            out.metadata[family] = kind
            value = orjson.dumps({"family": family, "type": kind})
            out.messages.append(Message(self._metadata_topic, None, family.encode(), value))
        return out

    def _locate(self, raw: RawSeries) -> _Where | None:
        service = self._default_service
        name = ""
        for label, value in raw.labels:
            if label == self._service_label and value:
                service = value
            elif label == "__name__":
                name = value
        where = None
        if service is not None:
            key = sample_key(service, family_of(name))
            labels = orjson.Fragment(orjson.dumps(dict(raw.labels)))
            where = _Where(key, partition_for(key, self._partitions), labels)
        if len(self._where) >= _CACHE_SIZE:
            self._where.clear()
        self._where[raw.labels] = where
        return where

    @staticmethod
    def _series(raw: RawSeries, where: _Where, out: Records) -> dict[str, Any] | None:
        samples: Sequence[tuple[int, float | None]] = raw.samples
        for _, value in raw.samples:
            if value - value != 0.0:  # NaN or ±Inf: off the fast path
                samples = _finite_or_stale(raw.samples, out)
                break
        item: dict[str, Any] = {"labels": where.labels, "samples": samples}
        if raw.kind is not None:
            item["type"] = raw.kind.value
        if raw.created_ms > 0:  # 0: unknown; negative: nonsense a worker would refuse
            item["created_ms"] = raw.created_ms
        if raw.histograms:
            histograms = [h for h in map(_histogram, raw.histograms) if h is not None]
            if len(histograms) < len(raw.histograms):
                out.histograms_dropped[NONFINITE] += len(raw.histograms) - len(histograms)
            if histograms:
                item["histograms"] = histograms
            out.histograms += len(histograms)
        if not samples and "histograms" not in item:
            return None
        out.samples += len(samples)
        return item


def _finite_or_stale(samples: list[tuple[int, float]], out: Records) -> list[tuple[int, float | None]]:
    kept: list[tuple[int, float | None]] = []
    for stamp, value in samples:
        if value - value == 0.0:
            kept.append((stamp, value))
        elif is_stale_nan(value):
            kept.append((stamp, None))
        else:
            out.samples_dropped[NONFINITE] += 1
    return kept


def _histogram(h: NativeHistogram) -> dict[str, Any] | None:
    """The documented JSON fields of a native histogram; None when a number in it is not finite (a stale
    marker's ``sum`` becomes ``None``)."""
    numbers = (h.zero_threshold, h.zero_count, h.count, *h.positive_counts, *h.negative_counts)
    if any(x - x != 0.0 for x in numbers):
        return None
    total: float | None = h.sum
    if h.sum - h.sum != 0.0:
        if not is_stale_nan(h.sum):
            return None
        total = None
    return {
        "timestamp_ms": h.timestamp_ms,
        "schema": h.schema,
        "zero_threshold": h.zero_threshold,
        "zero_count": h.zero_count,
        "count": h.count,
        "sum": total,
        "positive_spans": h.positive_spans,
        "positive_counts": h.positive_counts,
        "negative_spans": h.negative_spans,
        "negative_counts": h.negative_counts,
        "reset_hint": h.reset_hint,
    }


def _families(metadata: dict[str, MetricKind]) -> dict[str, str]:
    """1.0 metadata by the family name as sent: ``go_memstats_alloc_bytes`` (a gauge) and
    ``go_memstats_alloc_bytes_total`` (a counter) are two families, though both have the samples' key
    family ``go_memstats_alloc_bytes``. :meth:`~engine.preparation.FamilyTypes.kind_of` looks a series
    name up as is, then without its suffix."""
    return {name: kind.value for name, kind in metadata.items() if name}


def encode_chunks(
    series: Sequence[dict[str, Any]], limit: int = MAX_MESSAGE_BYTES, points: int | None = None
) -> list[tuple[bytes, int]]:
    """Raw ``series`` as message values of at most ``limit`` bytes (a single point may exceed it), in order,
    with the number of points (samples and histograms) in each (``points``: their total, if known)."""
    value = encode_raw_batch(series)
    if len(value) <= limit:
        return [(value, sum(_points(s) for s in series) if points is None else points)]
    if len(series) > 1:
        mid = len(series) // 2
        halves: list[Sequence[dict[str, Any]]] = [series[:mid], series[mid:]]
    elif _points(series[0]) > 1:
        halves = _split(series[0])
    else:
        return [(value, 1)]
    return [chunk for half in halves for chunk in encode_chunks(half, limit)]


def _points(item: dict[str, Any]) -> int:
    return len(item["samples"]) + len(item.get("histograms", ()))


def _split(item: dict[str, Any]) -> list[Sequence[dict[str, Any]]]:
    """One series as two, each with half of its points, the earlier half first: samples, then histograms
    (a series has one or the other in practice)."""
    samples, histograms = list(item["samples"]), list(item.get("histograms", ()))
    both = [("samples", s) for s in samples] + [("histograms", h) for h in histograms]
    mid = len(both) // 2
    halves: list[Sequence[dict[str, Any]]] = []
    for part in (both[:mid], both[mid:]):
        piece = {**item, "samples": [p for what, p in part if what == "samples"]}
        piece.pop("histograms", None)
        hs = [p for what, p in part if what == "histograms"]
        if hs:
            piece["histograms"] = hs
        halves.append([piece])
    return halves
