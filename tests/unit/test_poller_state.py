"""The poller's watermark records and how it packs series into messages."""

from __future__ import annotations

import doctest

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.poller import service, state
from connectors.poller.service import messages
from connectors.poller.state import decode_state
from engine.samples import Series, decode_batch


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"null",
        b"[]",
        b'{"v":2,"watermark_ms":1}',
        b'{"v":1}',
        b'{"v":1,"watermark_ms":-5}',
        b'{"v":1,"watermark_ms":1.5}',
        b'{"v":1,"watermark_ms":true}',
        b'{"v":1,"watermark_ms":"15000"}',
        b"\xff\xfe",
    ],
)
def test_unreadable_watermarks_are_none(raw: bytes) -> None:
    assert decode_state(raw) is None


@given(st.binary(max_size=200))
def test_random_bytes_never_crash(raw: bytes) -> None:
    mark = decode_state(raw)
    assert mark is None or (type(mark) is int and mark >= 0)


@given(st.integers(0, 2**62))
def test_a_watermark_round_trips(mark: int) -> None:
    assert decode_state(orjson.dumps({"v": 1, "watermark_ms": mark})) == mark


@given(
    lengths=st.lists(st.integers(0, 40), max_size=6),
    limit=st.integers(1, 25),
)
def test_messages_hold_every_point_once_in_order(lengths: list[int], limit: int) -> None:
    series = [
        Series("svc", "m", f"i{n}", [(t * 1000, float(t)) for t in range(length)])
        for n, length in enumerate(lengths)
    ]
    got: dict[str, list[tuple[int, float | None]]] = {}
    for value in messages(series, limit):
        decoded, rejected = decode_batch(value, now_ms=10**13, max_future_ms=0)
        assert not rejected
        assert 0 < sum(len(s.points) for s in decoded) <= limit
        for s in decoded:
            got.setdefault(s.instance, []).extend(s.points)
    want = {s.instance: list(s.points) for s in series if s.points}
    assert got == want


@pytest.mark.parametrize("module", [state, service])
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.failed == 0
