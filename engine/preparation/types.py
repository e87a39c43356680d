"""Metric types known from metadata, by family: shared by every preparer of a worker.

Remote-write 1.0 sends metadata in requests of its own, without job or instance labels, so it cannot travel
with the samples of one (service, family) key: ingest publishes it on the compacted metadata topic and every
worker reads all of it into one :class:`FamilyTypes`. Until a family's type is known, the name decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from engine.raw import MetricKind

__all__ = ["FamilyTypes"]

_MAX_FAMILIES: Final = 100_000  # remembered metadata entries
_SUFFIXES: Final = ("_total", "_bucket", "_count", "_sum", "_created", "_gcount", "_gsum", "_info")


class FamilyTypes:
    """Family name → :class:`MetricKind`, bounded (the least recently changed entries go first).

    ``generation`` grows with every change, so a preparer can tell cheaply whether to re-read its series;
    ``retyped`` counts families whose known type changed to another one.
    """

    __slots__ = ("_kinds", "generation", "limit", "retyped")

    def __init__(self, limit: int = _MAX_FAMILIES) -> None:
        self._kinds: dict[str, MetricKind] = {}
        self.limit = limit
        self.generation = 0
        self.retyped = 0

    def __len__(self) -> int:
        return len(self._kinds)

    def learn(self, metadata: Mapping[str, MetricKind]) -> bool:
        """Remember the kinds of ``metadata``; whether anything changed."""
        changed = False
        kinds = self._kinds
        for family, kind in metadata.items():
            old = kinds.get(family)
            if old is not kind:
                if old is not None:
                    self.retyped += 1
                kinds.pop(family, None)  # re-insert: dict order is the eviction order
                kinds[family] = kind
                changed = True
        if changed:
            while len(kinds) > self.limit:
                del kinds[next(iter(kinds))]
            self.generation += 1
        return changed

    def kind_of(self, name: str) -> MetricKind | None:
        """The remembered kind of a series name (its family's), ``None`` when unknown."""
        kinds = self._kinds
        kind = kinds.get(name)
        if kind is None:
            for suffix in _SUFFIXES:
                if name.endswith(suffix):
                    kind = kinds.get(name[: -len(suffix)])
                    break
        return None if kind is MetricKind.UNKNOWN else kind
