"""Step-aligned query windows: which timestamps a ``query_range`` returns, and how a long range is split.

Everything is integer Unix milliseconds, so a window boundary never drifts by a float rounding. A window
``[start, end]`` with ``step`` holds the steps ``start + k·step`` for every k with ``start + k·step <= end``
(``end`` is inclusive, as ``query_range`` evaluates it). Prometheus refuses a range of more than 11,000
points per series, so :func:`split` cuts a window into pieces of at most :data:`MAX_POINTS` steps that
together hold every step of the window exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

#: Prometheus' limit is "(end - start) / step > 11000 is refused"; 11,000 points stays inside it.
MAX_POINTS: Final = 11_000


@dataclass(frozen=True, slots=True)
class Window:
    """The steps ``start_ms + k·step_ms`` up to and including ``end_ms``."""

    start_ms: int
    end_ms: int
    step_ms: int

    def __post_init__(self) -> None:
        if self.step_ms <= 0:
            raise ValueError(f"step must be positive, got {self.step_ms} ms")
        if self.end_ms < self.start_ms:
            raise ValueError(f"window ends ({self.end_ms}) before it starts ({self.start_ms})")

    @property
    def last_ms(self) -> int:
        """The last step in the window (``end_ms`` itself when it is on the grid).

        >>> Window(0, 25, 10).last_ms
        20
        """
        return self.start_ms + (self.end_ms - self.start_ms) // self.step_ms * self.step_ms

    @property
    def points(self) -> int:
        """How many steps the window holds.

        >>> Window(0, 20, 10).points
        3
        """
        return (self.end_ms - self.start_ms) // self.step_ms + 1

    def steps(self) -> range:
        return range(self.start_ms, self.last_ms + 1, self.step_ms)


def split(window: Window, max_points: int = MAX_POINTS) -> Iterator[Window]:
    """Consecutive windows of at most ``max_points`` steps each, covering ``window``'s steps exactly once.

    >>> [(w.start_ms, w.end_ms) for w in split(Window(0, 50, 10), max_points=2)]
    [(0, 10), (20, 30), (40, 50)]
    """
    if max_points < 1:
        raise ValueError("max_points must be at least 1")
    span = (max_points - 1) * window.step_ms
    start, last = window.start_ms, window.last_ms
    while start <= last:
        end = min(start + span, last)
        yield Window(start, end, window.step_ms)
        start = end + window.step_ms


def aligned(start_ms: int, end_ms: int, step_ms: int) -> Window | None:
    """The steps on the grid of multiples of ``step_ms`` inside ``[start_ms, end_ms]``; ``None`` if none.

    The poller always asks for steps on this grid, so a watermark of one poll is a step of the next.

    >>> aligned(1001, 3500, 1000)
    Window(start_ms=2000, end_ms=3000, step_ms=1000)
    >>> aligned(1001, 1999, 1000) is None
    True
    """
    first = -(-start_ms // step_ms) * step_ms
    last = end_ms // step_ms * step_ms
    return Window(first, last, step_ms) if first <= last else None


def seconds(ms: int) -> str:
    """Unix ms as the decimal seconds Prometheus' API takes, without float rounding.

    >>> seconds(1732530000005), seconds(15000), seconds(-1500)
    ('1732530000.005', '15', '-1.5')
    """
    sign, ms = ("-", -ms) if ms < 0 else ("", ms)
    whole, frac = divmod(ms, 1000)
    return f"{sign}{whole}" + (f".{frac:03d}".rstrip("0") if frac else "")
