"""What every track and group of one :class:`~engine.preparation.preparer.Preparer` shares.

This is the one interface between the per-series state (:mod:`.tracks`, :mod:`.counters`, :mod:`.native`,
:mod:`.groups`, :mod:`.histograms`) and the preparer that drives it: counting, emitting points into
prepared series (:class:`Output`), sharing outputs and groups by key, the groups waiting for members, and
the metric types known from metadata. It imports none of those modules, so they form no import circle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol, TypeVar, cast

from engine.preparation.counts import Count
from engine.preparation.names import is_stale_nan, quantile_suffix
from engine.preparation.types import FamilyTypes
from engine.raw import MetricKind
from engine.samples import Point

__all__ = ["NEVER", "Context", "Output", "Pending"]

NEVER: Final = -(1 << 62)  # "no timestamp yet"; below any real one


class Output:
    """One prepared series: where its points of the current request collect. Shared by every source.

    ``last_ts`` is the prepared series' watermark: its points are strictly increasing in time.
    """

    __slots__ = ("instance", "last_ts", "metric", "points", "refs", "service")

    def __init__(self, service: str, metric: str, instance: str) -> None:
        self.service = service
        self.metric = metric
        self.instance = instance
        self.points: list[Point] | None = None
        self.last_ts = NEVER
        self.refs = 0


class Pending(Protocol):
    """A group the context can keep waiting and drop: what :class:`Context` needs of one."""

    refs: int

    @property
    def key(self) -> tuple[str, ...]: ...

    @property
    def outs(self) -> list[Output]: ...

    def flush(self, ctx: Context) -> None: ...


G = TypeVar("G", bound=Pending)


class Context:
    """Counts, outputs, groups and metadata of one preparer, behind a few plain methods."""

    __slots__ = ("counts", "groups", "outputs", "quantiles", "suffixes", "touched", "types", "waiting")

    def __init__(self, quantiles: tuple[float, ...], types: FamilyTypes) -> None:
        self.quantiles = quantiles
        self.suffixes = tuple(quantile_suffix(q) for q in quantiles)
        self.types = types
        self.outputs: dict[tuple[str, str, str], Output] = {}
        self.groups: dict[tuple[str, ...], Pending] = {}
        # groups with timestamps waiting for members, in the order they started waiting: a dict, not a set,
        # so that they are computed (and their series listed) in the same order on every run
        self.waiting: dict[Pending, None] = {}
        self.touched: list[Output] = []  # outputs with points in the current request
        self.counts: dict[str, int] = {}

    # --- counting ---

    def count(self, key: Count, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def disorder(self, duplicate: bool) -> None:
        """A sample at (``duplicate``) or before its series' watermark: skipped and counted."""
        self.count(Count.DUPLICATE if duplicate else Count.OUT_OF_ORDER)

    def nonfinite(self, value: float) -> bool:
        """Count a NaN or ±Inf sample; ``True`` when it is a stale marker."""
        if value != value:
            if is_stale_nan(value):
                self.count(Count.STALE)
                return True
            self.count(Count.NAN)
        else:
            self.count(Count.INF)
        return False

    # --- prepared series ---

    def emit(self, out: Output, new: list[Point]) -> None:
        """Add points (strictly increasing in time) to a prepared series."""
        if new[0][0] <= out.last_ts:
            last = out.last_ts
            kept = [point for point in new if point[0] > last]
            self.count(Count.COLLISION, len(new) - len(kept))
            if not kept:
                return
            new = kept
        out.last_ts = new[-1][0]
        if out.points is None:
            out.points = new
            self.touched.append(out)
        else:
            out.points.extend(new)

    def acquire(self, service: str, metric: str, instance: str) -> Output:
        key = (service, metric, instance)
        out = self.outputs.get(key)
        if out is None:
            out = self.outputs[key] = Output(service, metric, instance)
        out.refs += 1
        return out

    def release(self, out: Output) -> None:
        out.refs -= 1
        if out.refs <= 0:
            self.outputs.pop((out.service, out.metric, out.instance), None)

    # --- metadata ---

    def kind_of(self, name: str) -> MetricKind | None:
        """The metadata kind of a series name (its family's), ``None`` when unknown."""
        return self.types.kind_of(name)

    # --- groups ---

    def group(self, key: tuple[str, ...], make: Callable[[], G]) -> G:
        """The group of ``key`` (made by ``make`` when there is none), with one more reference."""
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = make()
        group.refs += 1
        return cast(G, group)  # the same key always makes the same kind of group

    def find_group(self, key: tuple[str, ...]) -> Pending | None:
        return self.groups.get(key)

    def wait(self, group: Pending) -> None:
        """``group`` has timestamps waiting: flush it after the current request."""
        self.waiting[group] = None  # (where it was, if it was waiting already)

    def unwait(self, group: Pending) -> None:
        self.waiting.pop(group, None)

    def drop_group(self, group: Pending) -> None:
        """``group`` lost its last reference: forget it and give its outputs back."""
        self.groups.pop(group.key, None)
        self.waiting.pop(group, None)
        for out in group.outs:
            self.release(out)
