"""Reading a ``query_range`` answer: the documented JSON, checked, into (labels, points) per series.

The body comes from a server Vigil does not control, so nothing is assumed: it must be a JSON object with
``status: success`` and ``data.resultType: matrix``; every series needs string labels and ``[seconds,
"value"]`` pairs. PromQL's NaN and ±Inf (``0/0`` when there is no traffic) are skipped and counted: on
``vigil.samples`` a ``null`` is a stale marker, and JSON has no other way to write them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from connectors.prometheus.errors import ErrorKind, QueryError

#: Timestamps beyond this (in seconds, either side of 1970) are not real: the year 5138.
MAX_SECONDS = 1e11


@dataclass(slots=True)
class RangeSeries:
    labels: dict[str, str]
    points: list[tuple[int, float]]


@dataclass(slots=True)
class RangeResult:
    """The series of one answer, the NaN/±Inf points left out, and Prometheus' warnings."""

    series: list[RangeSeries] = field(default_factory=list)
    nonfinite: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def points(self) -> int:
        return sum(len(s.points) for s in self.series)


def _bad(what: str) -> QueryError:
    return QueryError(ErrorKind.BAD_RESPONSE, f"not a Prometheus query_range answer: {what}")


def error_message(body: bytes) -> str:
    """Prometheus' ``errorType: error`` from an error body, else a short note of what came back."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"non-JSON body of {len(body)} bytes"
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return f"{doc.get('errorType', 'error')}: {doc['error'][:500]}"
    return "JSON body without an error message"


def parse_range(body: bytes) -> RangeResult:
    """The series of a 200 answer to ``query_range``; :class:`QueryError` if it is not one.

    >>> r = parse_range(b'{"status":"success","data":{"resultType":"matrix","result":'
    ...                 b'[{"metric":{"instance":"a"},"values":[[1.5,"2"],[3,"NaN"]]}]}}')
    >>> r.series, r.nonfinite
    ([RangeSeries(labels={'instance': 'a'}, points=[(1500, 2.0)])], 1)
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"invalid JSON ({exc.msg} at byte {exc.pos} of {len(body)})") from None
    if not isinstance(doc, dict):
        raise _bad(f"top level is {type(doc).__name__}, not an object")
    status = doc.get("status")
    if status == "error":
        # A 200 with an error body is not what Prometheus does; treat it as the rejection it describes.
        raise QueryError(ErrorKind.REJECTED, error_message(body))
    if status != "success":
        raise _bad(f"status {status!r:.40}")
    data = doc.get("data")
    if not isinstance(data, dict):
        raise _bad("no 'data' object")
    if data.get("resultType") != "matrix":
        raise _bad(f"resultType {data.get('resultType')!r:.40}, expected 'matrix'")
    items = data.get("result")
    if not isinstance(items, list):
        raise _bad("'data.result' is not a list")
    out = RangeResult(warnings=_warnings(doc.get("warnings")))
    for item in items:
        out.series.append(_series(item, out))
    return out


def _warnings(given: Any) -> list[str]:
    if not isinstance(given, list):
        return []
    return [str(w)[:500] for w in given[:20]]


def _series(item: Any, out: RangeResult) -> RangeSeries:
    if not isinstance(item, dict):
        raise _bad("a series is not an object")
    labels = item.get("metric")
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise _bad("a series' 'metric' is not an object of strings")
    values = item.get("values")
    if not isinstance(values, list):
        raise _bad("a series' 'values' is not a list")
    points: list[tuple[int, float]] = []
    append = points.append
    nonfinite = 0
    for pair in values:  # the hot loop: every check kept, in the cheapest form
        if type(pair) is not list or len(pair) != 2:
            raise _bad("a point is not a [time, value] pair")
        ts, text = pair
        kind = type(ts)
        if (
            (kind is not float and kind is not int)
            or type(text) is not str
            or not -MAX_SECONDS < ts < MAX_SECONDS
        ):
            raise _bad('a point is not [seconds, "value"]')
        try:
            value = float(text)
        except ValueError:
            raise _bad(f"value {text!r:.40} is not a number") from None
        if value - value == 0.0:  # finite: NaN and ±Inf give NaN here
            append((round(ts * 1000), value))
        else:
            nonfinite += 1
    out.nonfinite += nonfinite
    return RangeSeries(labels, points)


#: Bounds on a label-values answer (service discovery): more is a selector far too broad.
MAX_VALUES = 10_000
MAX_VALUE_LENGTH = 4096


def parse_values(body: bytes) -> list[str]:
    """The values of a ``/api/v1/label/<name>/values`` answer: a bounded list of strings.

    >>> parse_values(b'{"status":"success","data":["cart","checkout"]}')
    ['cart', 'checkout']
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"invalid JSON ({exc.msg} at byte {exc.pos} of {len(body)})") from None
    if not isinstance(doc, dict) or doc.get("status") != "success":
        if isinstance(doc, dict) and doc.get("status") == "error":
            raise QueryError(ErrorKind.REJECTED, error_message(body))
        raise _bad("not a successful label values answer")
    values = doc.get("data")
    if not isinstance(values, list) or not all(type(v) is str for v in values):
        raise _bad("'data' is not a list of strings")
    if len(values) > MAX_VALUES:
        raise QueryError(
            ErrorKind.TOO_LARGE, f"{len(values)} values, at most {MAX_VALUES}: narrow the selector"
        )
    if any(not v or len(v) > MAX_VALUE_LENGTH for v in values):
        raise _bad(f"a value is empty or longer than {MAX_VALUE_LENGTH} characters")
    return values
