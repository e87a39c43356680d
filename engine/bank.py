"""The model bank: one :class:`SeriesGuard` per (service, metric, instance), grouped by analysis key.

Models live in memory (a River update costs microseconds; a table write per sample would not). They are
checkpointed per analysis key — the unit that maps to one partition — and restored lazily the first time
a key is seen again. A checkpoint carries a format version and the River version; one written by another
version is refused (logged and counted) and the key starts fresh, never loaded half-right.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import orjson

from engine.config import VigilConfig
from engine.events import anomaly_event
from engine.guard import SeriesGuard
from engine.samples import Series, analysis_key

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 2  # 2: SeriesGuard.watermark
RIVER_VERSION = version("river")
_MAGIC = b"VGLCKPT"


class CheckpointRefused(ValueError):
    """A checkpoint written by another format or River version."""


def dump_checkpoint(guards: dict[str, SeriesGuard]) -> bytes:
    header = orjson.dumps({"format": CHECKPOINT_FORMAT, "river": RIVER_VERSION})
    return _MAGIC + len(header).to_bytes(4, "big") + header + pickle.dumps(guards, protocol=5)


def load_checkpoint(blob: bytes) -> dict[str, SeriesGuard]:
    if not blob.startswith(_MAGIC):
        raise CheckpointRefused("not a Vigil checkpoint")
    size = int.from_bytes(blob[len(_MAGIC) : len(_MAGIC) + 4], "big")
    start = len(_MAGIC) + 4
    try:
        header = orjson.loads(blob[start : start + size])
    except orjson.JSONDecodeError:
        raise CheckpointRefused("checkpoint header is damaged") from None
    if not isinstance(header, dict):
        raise CheckpointRefused("checkpoint header is damaged")
    if header.get("format") != CHECKPOINT_FORMAT or header.get("river") != RIVER_VERSION:
        raise CheckpointRefused(
            f"checkpoint format {header.get('format')} / River {header.get('river')} cannot be loaded by "
            f"format {CHECKPOINT_FORMAT} / River {RIVER_VERSION}"
        )
    guards: dict[str, SeriesGuard] = pickle.loads(blob[start + size :])
    return guards


@dataclass
class ModelBank:
    config: VigilConfig
    load: Callable[[bytes], bytes | None] = lambda key: None
    models: dict[bytes, dict[str, SeriesGuard]] = field(default_factory=dict)
    dirty: set[bytes] = field(default_factory=set)
    refused_checkpoints: int = 0
    #: points skipped by the per-series watermark, by reason ("duplicate", "out_of_order")
    counts: dict[str, int] = field(default_factory=dict)

    def observe(self, series: Series) -> list[dict[str, Any]]:
        """Score then learn every point of ``series``; return the verdict events it caused."""
        key = analysis_key(series.service, series.metric)
        guards = self.models.get(key)
        if guards is None:
            guards = self.models[key] = self._restore(key)
        guard = guards.get(series.instance)
        rule = self.config.rule_for(series.metric)
        if guard is None:
            guard = guards[series.instance] = SeriesGuard(rule, self.config.detection)
        self.dirty.add(key)
        events = []
        for ts, value in series.points:
            skipped = guard.admit(ts)
            if skipped is not None:
                self.counts[skipped] = self.counts.get(skipped, 0) + 1
                continue
            transition = guard.end(ts) if value is None else guard.observe(ts, value)
            if transition is not None:
                events.append(anomaly_event(series.service, series.metric, series.instance, rule, transition))
        return events

    def checkpoints(self, select: Callable[[bytes], bool]) -> Iterable[tuple[bytes, bytes]]:
        """(key, checkpoint) for every selected key changed since it was last checkpointed."""
        chosen = [key for key in self.dirty if select(key)]
        self.dirty.difference_update(chosen)
        for key in chosen:
            if key in self.models:
                yield key, dump_checkpoint(self.models[key])

    def forget(self, keep: Callable[[bytes], bool]) -> None:
        """Drop the keys of partitions this worker no longer owns (they are restored if they come back)."""
        for key in [k for k in self.models if not keep(k)]:
            del self.models[key]
            self.dirty.discard(key)

    def _restore(self, key: bytes) -> dict[str, SeriesGuard]:
        blob = self.load(key)
        if not blob:
            return {}
        try:
            return load_checkpoint(blob)
        except Exception as exc:  # noqa: BLE001 - any damaged checkpoint must only cost its own key
            self.refused_checkpoints += 1
            log.error("checkpoint of %r refused, starting fresh models: %s", key, exc)
            return {}
