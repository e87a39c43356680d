"""Per-series status on ``kafka.topics.status``: what every series looks like now, changed or not.

``vigil.verdicts`` carries state changes only, so healthy and learning series never appear there. Workers
therefore also publish, every ``status.interval_s``, the latest status of each series that had samples
since the last flush, to a compacted topic keyed by series (:func:`status_key`)::

    {"v": 1, "service": "checkout", "metric": "http_request_duration_seconds:p99", "instance": "pod-1",
     "type": "latency", "state": "normal", "score": 0.31, "value": 0.212,
     "expected": {"low": null, "high": 0.302}, "ts_ms": 1764072180000, "wall_ms": 1764072185012,
     "since_ms": 1764068580000}

``state`` is ``learning`` | ``normal`` | ``anomalous``; ``score`` the normalised score of the latest sample
(1 = the opening threshold, never damped; 0 while learning); ``expected`` the band the model holds after
that sample (``null`` on a side that is no risk; the whole field ``null`` for a detector without a band);
``ts_ms`` the latest sample's own time (metric time) and ``wall_ms`` the worker's clock when it published
(idleness is wall-clock time, whatever the samples' age); ``since_ms`` the metric time of the sample with
which the series entered its current ``state`` (:attr:`engine.guard.SeriesGuard.since_ms`; ``null`` when
not known, e.g. a model restored from a checkpoint older than the field). Records written before
``since_ms`` existed have no such field and read as ``null``.

The worker's part is one dict assignment per prepared series (:attr:`StatusBoard.changed`, latest point per
series); all the work — reading the guard, the band, encoding — happens in :meth:`StatusBoard.flush`, once
per interval. Everything read back from the topic is checked by :func:`decode_status`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

import orjson

from engine.config import MetricType
from engine.errors import BadRecord
from engine.guard import SeriesState

log = logging.getLogger(__name__)

VERSION: Final = 1
#: longest service, metric or instance name accepted from the topic
MAX_NAME: Final = 4096
_FIELDS: Final = frozenset(
    {"v", "service", "metric", "instance", "type", "state", "score", "value", "expected", "ts_ms", "wall_ms"}
)
#: fields added since version 1 that older workers' records lack
_OPTIONAL: Final = frozenset({"since_ms"})
_STATES: Final = {s.value: s for s in SeriesState}
_TYPES: Final = {t.value: t for t in MetricType}
_MAX_TS: Final = 1 << 53


@dataclass(frozen=True, slots=True)
class SeriesStatus:
    """The latest status of one (service, metric, instance); times in Unix ms."""

    service: str
    metric: str
    instance: str
    metric_type: MetricType
    state: SeriesState
    score: float
    value: float | None
    expected_low: float | None
    expected_high: float | None
    ts_ms: int
    wall_ms: int
    #: metric time of the sample with which ``state`` began (``None``: not known)
    since_ms: int | None = None

    @property
    def series(self) -> tuple[str, str, str]:
        return (self.service, self.metric, self.instance)


def status_key(service: str, metric: str, instance: str) -> bytes:
    r"""The Kafka key of a series' status.

    >>> status_key("checkout", "up", "pod-1")
    b'checkout\x1fup\x1fpod-1'
    """
    return f"{service}\x1f{metric}\x1f{instance}".encode()


def encode_status(s: SeriesStatus) -> bytes:
    expected = (
        None
        if s.expected_low is None and s.expected_high is None
        else {"low": s.expected_low, "high": s.expected_high}
    )
    return orjson.dumps(
        {
            "v": VERSION,
            "service": s.service,
            "metric": s.metric,
            "instance": s.instance,
            "type": s.metric_type,  # orjson writes an enum as its value (faster than .value)
            "state": s.state,
            "score": s.score,
            "value": s.value,
            "expected": expected,
            "ts_ms": s.ts_ms,
            "wall_ms": s.wall_ms,
            "since_ms": s.since_ms,
        }
    )


def decode_status(key: bytes | None, raw: bytes | None, max_bytes: int) -> SeriesStatus:
    """The status in a record; :class:`BadRecord` saying why when it is not one.

    The key must be the record's own series (a compacted topic keeps the latest value per key: a record
    under another key would leave a stale status behind).

    >>> s = SeriesStatus("a", "m", "", MetricType.ERRORS, SeriesState.NORMAL, 0.5, 1.0, None, 2.0, 1, 2)
    >>> decode_status(status_key("a", "m", ""), encode_status(s), 4096) == s
    True
    >>> decode_status(b"k", b"[]", 4096)
    Traceback (most recent call last):
    ...
    engine.errors.BadRecord: a status record must be a JSON object, got list
    """
    if raw is None:
        raise BadRecord("a status record needs a value (tombstones are not used on this topic)")
    if len(raw) > max_bytes:
        raise BadRecord(f"status record of {len(raw)} bytes, over status.max_record_bytes ({max_bytes})")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRecord(f"a status record must be JSON: {str(exc)[:120]}") from None
    if type(doc) is not dict:
        raise BadRecord(f"a status record must be a JSON object, got {type(doc).__name__}")
    if doc.get("v") != VERSION:
        raise BadRecord(f"status record version {str(doc.get('v'))[:20]!r}, this Vigil reads {VERSION}")
    if not _FIELDS <= doc.keys() <= _FIELDS | _OPTIONAL:
        missing, extra = sorted(_FIELDS - doc.keys()), sorted(doc.keys() - _FIELDS - _OPTIONAL)
        raise BadRecord(f"status record fields: missing {missing}, unknown {extra!r:.200}")
    service, metric, instance = (_name(doc, f) for f in ("service", "metric", "instance"))
    if not service or not metric:
        raise BadRecord("a status record needs a non-empty service and metric")
    if key != status_key(service, metric, instance):
        raise BadRecord("the record's key is not its series (service \\x1f metric \\x1f instance)")
    state = _STATES.get(doc["state"]) if type(doc["state"]) is str else None
    if state is None:
        raise BadRecord(f"state must be one of {sorted(_STATES)}")
    metric_type = _TYPES.get(doc["type"]) if type(doc["type"]) is str else None
    if metric_type is None:
        raise BadRecord(f"type must be one of {sorted(_TYPES)}")
    score = _number(doc["score"], "score")
    if score is None or score < 0:
        raise BadRecord("score must be a finite number >= 0")
    expected = doc["expected"]
    low = high = None
    if expected is not None:
        if type(expected) is not dict or expected.keys() != {"low", "high"}:
            raise BadRecord("expected must be null or {low, high}")
        low, high = _number(expected["low"], "expected.low"), _number(expected["high"], "expected.high")
        if low is not None and high is not None and low > high:
            raise BadRecord("expected.low is above expected.high")
    return SeriesStatus(
        service=service,
        metric=metric,
        instance=instance,
        metric_type=metric_type,
        state=state,
        score=score,
        value=_number(doc["value"], "value"),
        expected_low=low,
        expected_high=high,
        ts_ms=_time(doc["ts_ms"], "ts_ms"),
        wall_ms=_time(doc["wall_ms"], "wall_ms"),
        since_ms=_since(doc.get("since_ms")),
    )


def _name(doc: dict[str, Any], field: str) -> str:
    value = doc[field]
    if type(value) is not str or len(value) > MAX_NAME:
        raise BadRecord(f"{field} must be a string of at most {MAX_NAME} characters")
    return value


def _number(value: Any, field: str) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value) or abs(value) > 1e300:
        raise BadRecord(f"{field} must be a finite number or null")
    return float(value)


def _is_time(value: Any) -> TypeGuard[int]:
    return type(value) is int and 0 <= value < _MAX_TS


def _time(value: Any, field: str) -> int:
    if not _is_time(value):
        raise BadRecord(f"{field} must be a non-negative integer (Unix ms)")
    return value


def _since(value: Any) -> int | None:
    if value is None:  # not known, or a record written before the field existed
        return None
    if not _is_time(value):
        raise BadRecord("since_ms must be null or a non-negative integer (Unix ms)")
    return value


def _side(bound: float) -> float | None:
    return None if math.isinf(bound) else bound


# --- the worker's side -----------------------------------------------------------------------------------


#: (sample key, service, metric, instance) → the series' latest point (ts_ms, value or None)
Changed = dict[tuple[bytes, str, str, str], tuple[int, float | None]]


class StatusBoard:
    """The series that changed since the last flush, and the flush that turns them into status records.

    ``guard_of(sample_key, metric, instance)`` finds a series' guard (``None`` once its key left memory);
    ``type_of(metric)`` the type of the rule that judges it.
    """

    def __init__(
        self,
        guard_of: Callable[[bytes, str, str], Any],
        type_of: Callable[[str], MetricType],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.guard_of = guard_of
        self.type_of = type_of
        self.clock = clock
        #: written by the worker for every prepared series it judged: the only per-sample cost
        self.changed: Changed = {}
        self.published = 0
        self._pending: dict[tuple[str, str, str], SeriesStatus] = {}

    def flush(self) -> list[SeriesStatus]:
        """The status of every series that changed since the last flush (latest per series), then forget
        them; before them, any handed back by :meth:`again` that no newer sample replaced."""
        out = self._retried()
        changed, self.changed = self.changed, {}
        wall_ms = int(self.clock() * 1000)
        for (key, service, metric, instance), (ts_ms, value) in changed.items():
            guard = self.guard_of(key, metric, instance)
            if guard is None:
                continue  # its key left memory meanwhile: the next sample brings it back
            out.append(self._status(guard, service, metric, instance, ts_ms, value, wall_ms))
        self.published += len(out)
        return out

    def again(self, statuses: Iterable[SeriesStatus]) -> None:
        """Statuses whose send failed: publish them with the next flush, unless a newer sample came."""
        for s in statuses:
            self._pending[s.series] = s

    def _retried(self) -> list[SeriesStatus]:
        """The statuses handed back by :meth:`again` whose series had no sample since (then flush has a
        newer one)."""
        if not self._pending:
            return []
        fresh = {(service, metric, instance) for _, service, metric, instance in self.changed}
        pending, self._pending = self._pending, {}
        return [s for k, s in pending.items() if k not in fresh]

    def _status(
        self,
        guard: Any,
        service: str,
        metric: str,
        instance: str,
        ts_ms: int,
        value: float | None,
        wall_ms: int,
    ) -> SeriesStatus:
        state: SeriesState = guard.state
        low, high = guard.detector.expected_range(ts_ms)
        learning = state is SeriesState.LEARNING
        return SeriesStatus(
            service=service,
            metric=metric,
            instance=instance,
            metric_type=self.type_of(metric),
            state=state,
            score=0.0 if learning else round(float(guard.last_score), 6),
            value=value,
            expected_low=None if learning else _side(low),
            expected_high=None if learning else _side(high),
            ts_ms=ts_ms,
            wall_ms=wall_ms,
            since_ms=guard.since_ms,
        )


# --- live series, for /metrics ---------------------------------------------------------------------------


class LiveSeries:
    """The latest status of each series seen within ``idle_s`` of wall-clock time (``clock``, seconds),
    at most ``max_series`` (the least recently seen go first). Idleness is counted from when the series was
    last published (``wall_ms``, never later than when it was received), whatever its samples' age."""

    def __init__(self, idle_s: float, max_series: int, *, clock: Callable[[], float] = time.time) -> None:
        self.idle_s = idle_s
        self.max_series = max_series
        self.clock = clock
        self._by_series: dict[tuple[str, str, str], tuple[SeriesStatus, float]] = {}

    def put(self, s: SeriesStatus) -> None:
        now = self.clock()
        seen = min(s.wall_ms / 1000, now)  # a clock ahead (or a hostile wall_ms) cannot keep it alive
        series = self._by_series
        series.pop(s.series, None)  # re-inserted last: the dict stays ordered by insertion
        series[s.series] = (s, seen)
        if len(series) > self.max_series:
            del series[next(iter(series))]

    def live(self) -> Iterator[SeriesStatus]:
        """The statuses still live (the idle ones are dropped on the way)."""
        cutoff = self.clock() - self.idle_s
        series = self._by_series
        for key in [k for k, (_, seen) in series.items() if seen <= cutoff]:
            del series[key]
        for status, _ in list(series.values()):
            yield status

    def drop(self, gone: Callable[[SeriesStatus], bool]) -> None:
        """Forget the series ``gone`` selects (a worker's series of partitions it no longer owns)."""
        for key in [k for k, (s, _) in self._by_series.items() if gone(s)]:
            del self._by_series[key]

    def get(self, series: tuple[str, str, str]) -> SeriesStatus | None:
        found = self._by_series.get(series)
        if found is None or found[1] <= self.clock() - self.idle_s:
            return None
        return found[0]

    def __len__(self) -> int:
        return len(self._by_series)
