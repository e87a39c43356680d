"""Step-aligned windows and their split: every step of a window exactly once, no piece over the limit."""

from __future__ import annotations

import doctest
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.prometheus import client, errors, response, watch, windows
from connectors.prometheus.windows import MAX_POINTS, Window, aligned, seconds, split
from vigil import poll


@given(
    start=st.integers(-(10**12), 10**13),
    steps=st.integers(0, 50_000),
    extra=st.integers(0, 10**6),
    step=st.integers(1, 10**7),
    max_points=st.integers(1, 12_000),
)
def test_split_covers_every_step_once(start: int, steps: int, extra: int, step: int, max_points: int) -> None:
    window = Window(start, start + steps * step + extra % step, step)
    pieces = list(split(window, max_points))
    got = [t for piece in pieces for t in piece.steps()]
    assert got == list(window.steps())
    assert all(1 <= piece.points <= max_points for piece in pieces)
    assert all(piece.end_ms == piece.last_ms for piece in pieces)  # each piece ends on a step


def test_split_at_the_limit() -> None:
    step = 15_000
    exactly = Window(0, (MAX_POINTS - 1) * step, step)
    assert list(split(exactly)) == [exactly]
    one_more = Window(0, MAX_POINTS * step, step)
    first, second = split(one_more)
    assert (first.points, second.start_ms, second.points) == (MAX_POINTS, MAX_POINTS * step, 1)


@given(start=st.integers(0, 10**13), length=st.integers(0, 10**8), step=st.integers(1, 10**6))
def test_aligned_is_the_grid_inside(start: int, length: int, step: int) -> None:
    window = aligned(start, start + length, step)
    inside = [t for t in range(start, start + length + 1) if t % step == 0] if length < 5000 else None
    if window is None:
        assert inside in (None, [])
        assert -(-start // step) * step > start + length
        return
    assert window.start_ms % step == 0
    assert window.end_ms % step == 0
    assert start <= window.start_ms < start + step
    assert start + length - step < window.end_ms <= start + length
    if inside is not None:
        assert list(window.steps()) == inside


@given(ms=st.integers(-(10**15), 10**15))
def test_seconds_round_trips_exactly(ms: int) -> None:
    text = seconds(ms)
    whole, _, frac = text.lstrip("-").partition(".")
    back = int(whole) * 1000 + int((frac or "0").ljust(3, "0"))
    assert (-back if text.startswith("-") else back) == ms


@pytest.mark.parametrize(("start", "end", "step"), [(0, 10, 0), (0, 10, -5), (10, 0, 1)])
def test_bad_windows_are_refused(start: int, end: int, step: int) -> None:
    with pytest.raises(ValueError, match=r"step|before"):
        Window(start, end, step)


@pytest.mark.parametrize("module", [windows, errors, response, client, watch, poll])
def test_doctests(module: ModuleType) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0
