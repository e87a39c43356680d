"""Parsing ``query_range`` answers: the documented shape only; NaN/±Inf counted, never returned."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.prometheus.errors import ErrorKind, QueryError, kind_of_status
from connectors.prometheus.response import error_message, parse_range, parse_values


def answer(result: object, result_type: str = "matrix", **extra: object) -> bytes:
    doc = {"status": "success", "data": {"resultType": result_type, "result": result}, **extra}
    return json.dumps(doc).encode()  # not orjson: integers beyond 64 bits must reach the parser too


def test_values_and_timestamps_are_exact() -> None:
    body = answer(
        [
            {"metric": {"instance": "a"}, "values": [[1732530000, "0.1"], [1732530015.5, "1e-300"]]},
            {"metric": {}, "values": [[1.001, "-2.5"]]},
        ],
        warnings=["partial response"],
    )
    result = parse_range(body)
    assert [(s.labels, s.points) for s in result.series] == [
        ({"instance": "a"}, [(1732530000000, 0.1), (1732530015500, 1e-300)]),
        ({}, [(1001, -2.5)]),
    ]
    assert result.warnings == ["partial response"]
    assert (result.points, result.nonfinite) == (3, 0)


def test_nan_and_infinities_are_skipped_and_counted() -> None:
    values = [[1, "NaN"], [2, "+Inf"], [3, "-Inf"], [4, "7"]]
    result = parse_range(answer([{"metric": {}, "values": values}]))
    assert result.series[0].points == [(4000, 7.0)]
    assert result.nonfinite == 3


def test_empty_result_is_no_series() -> None:
    result = parse_range(answer([]))
    assert (result.series, result.points) == ([], 0)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "invalid JSON"),
        (b"<html>502 Bad Gateway</html>", "invalid JSON"),
        (answer([{"metric": {}, "values": [[1, "2"]]}])[:-7], "invalid JSON"),  # truncated
        (b"[]", "top level"),
        (b'{"status":"pending"}', "status"),
        (b'{"status":"success"}', "data"),
        (answer([], "vector"), "resultType"),
        (answer([], "scalar"), "resultType"),
        (b'{"status":"success","data":{"resultType":"matrix","result":{}}}', "not a list"),
        (answer([[1, 2]]), "not an object"),
        (answer([{"metric": {"a": 1}, "values": []}]), "metric"),
        (answer([{"metric": {}, "values": {}}]), "values"),
        (answer([{"metric": {}}]), "values"),
        (answer([{"metric": {}, "values": [[1]]}]), "pair"),
        (answer([{"metric": {}, "values": [[1, 2]]}]), "seconds"),
        (answer([{"metric": {}, "values": [["1", "2"]]}]), "seconds"),
        (answer([{"metric": {}, "values": [[True, "2"]]}]), "seconds"),
        (answer([{"metric": {}, "values": [[1e15, "2"]]}]), "seconds"),
        (answer([{"metric": {}, "values": [[1, "2"]]}]).replace(b"[1,", b"[1e400,"), "invalid JSON"),
        (answer([{"metric": {}, "values": [[1, "two"]]}]), "not a number"),
    ],
)
def test_anything_else_is_a_bad_response(body: bytes, why: str) -> None:
    with pytest.raises(QueryError, match=why) as caught:
        parse_range(body)
    assert caught.value.kind is ErrorKind.BAD_RESPONSE
    assert caught.value.retriable


def test_an_error_body_is_a_rejection() -> None:
    body = b'{"status":"error","errorType":"bad_data","error":"parse error at char 3"}'
    with pytest.raises(QueryError, match="bad_data: parse error") as caught:
        parse_range(body)
    assert caught.value.kind is ErrorKind.REJECTED
    assert not caught.value.retriable
    assert error_message(b"\xff" * 10) == "non-JSON body of 10 bytes"


@pytest.mark.parametrize(
    ("status", "kind", "retriable"),
    [
        (400, ErrorKind.REJECTED, False),
        (401, ErrorKind.REJECTED, False),
        (404, ErrorKind.REJECTED, False),
        (422, ErrorKind.REJECTED, False),
        (408, ErrorKind.TIMEOUT, True),
        (429, ErrorKind.THROTTLED, True),
        (500, ErrorKind.SERVER, True),
        (503, ErrorKind.SERVER, True),
        (302, ErrorKind.BAD_RESPONSE, True),
    ],
)
def test_one_table_of_retry_decisions(status: int, kind: ErrorKind, retriable: bool) -> None:
    assert kind_of_status(status) is kind
    assert QueryError(kind, "x").retriable is retriable


@given(st.binary(max_size=2000))
def test_random_bytes_never_crash(body: bytes) -> None:
    try:
        result = parse_range(body)
    except QueryError:
        return
    assert all(math.isfinite(v) for s in result.series for _, v in s.points)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@given(st.lists(json_values, max_size=5))
def test_hostile_series_never_crash(result: list[object]) -> None:
    try:
        parsed = parse_range(answer(result))
    except QueryError as exc:
        kind = exc.kind
        assert kind is ErrorKind.BAD_RESPONSE
        return
    assert all(math.isfinite(v) for s in parsed.series for _, v in s.points)


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"nope", ErrorKind.BAD_RESPONSE),
        (b'{"status":"success"}', ErrorKind.BAD_RESPONSE),
        (b'{"status":"success","data":["a",1]}', ErrorKind.BAD_RESPONSE),
        (b'{"status":"success","data":[""]}', ErrorKind.BAD_RESPONSE),
        (json.dumps({"status": "success", "data": ["x" * 5000]}).encode(), ErrorKind.BAD_RESPONSE),
        (
            json.dumps({"status": "success", "data": [str(i) for i in range(10_001)]}).encode(),
            ErrorKind.TOO_LARGE,
        ),
        (b'{"status":"error","errorType":"bad_data","error":"bad match[]"}', ErrorKind.REJECTED),
    ],
)
def test_label_values_answers_are_checked(body: bytes, kind: ErrorKind) -> None:
    with pytest.raises(QueryError) as caught:
        parse_values(body)
    assert caught.value.kind is kind


def test_label_values() -> None:
    assert parse_values(b'{"status":"success","data":[]}') == []
    assert parse_values(b'{"status":"success","data":["cart","checkout"]}') == ["cart", "checkout"]
