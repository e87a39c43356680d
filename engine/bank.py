"""The model bank: per sample key (service, metric family), its preparation state and its guards.

One :class:`Unit` per sample key (:func:`engine.samples.sample_key`) holds the key's
:class:`~engine.preparation.Preparer` (raw series → prepared series) and one :class:`SeriesGuard` per
prepared (metric, instance) derived from it. A Kafka partition owns its keys, so a unit is only ever touched
by the worker owning that partition.

Units live in memory (a River update costs microseconds; a table write per sample would not). They are
checkpointed per sample key — the key of the samples, so with ``use_partitioner`` the checkpoint lands in
the partition of its samples — and restored lazily the first time a key is seen again. A checkpoint is
**plain data** (JSON: numbers, strings, lists; nothing read from Kafka is ever unpickled) and carries a
format version, the River version and a hash of the configuration that shapes the state; one that does not
match is refused (logged, counted) and the key starts fresh, never loaded half-right. A checkpoint larger
than ``part_bytes`` is split over several table entries whose keys land in the same partition.

Memory is bounded: a key whose samples stopped ``detection.idle_evict_s`` ago (wall clock) leaves memory
once it is checkpointed (:meth:`ModelBank.evict_idle`, after each checkpoint step), and at most
``detection.max_keys`` keys are held — beyond it the least recently used leaves at once, its checkpoint
kept as a *pending* table entry that the next checkpoint step writes (so commits still follow checkpoints).
An evicted key is restored from its checkpoint when its samples come back, like a key after a restart.

With ``detection.on_checkpoint_mismatch: error`` a checkpoint of another format, River version or
configuration is not replaced: :class:`CheckpointMismatch` is raised for every record of that key (the
worker dead-letters its samples naming the mismatch) until the deployment matches it again.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import version
from typing import Any, Final

import orjson

from engine import plain
from engine.config import MetricRule, VigilConfig
from engine.deployments import Deployments
from engine.events import anomaly_event
from engine.guard import SeriesGuard, TransitionKind
from engine.preparation import FamilyTypes, Prepared, Preparer
from engine.raw import RawSeries, WriteRequest
from engine.samples import Series, family_of, partition_for, sample_key

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT: Final = 3  # 3: calibration stages, River detector
RIVER_VERSION: Final = version("river")
PART_BYTES: Final = 512 * 1024  # table entries stay well below Kafka's default 1 MB message limit
RULE_CACHE: Final = 65_536  # metric names whose rule is remembered (matching the rules' regexes per point
# batch was a tenth of the worker's time on Prometheus-shaped records)
_MAGIC: Final = b"VGLSTATE"
_PART: Final = b"\x1e"  # separates a sample key from a part's suffix
#: detection settings that do not shape the checkpointed state (changing them keeps checkpoints valid)
_NOT_SHAPING: Final = {
    "checkpoint_interval_s",
    "max_future_s",
    "idle_evict_s",
    "max_keys",
    "on_checkpoint_mismatch",
    "seed",  # a randomised detector's checkpoint carries its own seed
    "checkpoint_key_file",  # another key: the signatures no longer match and those checkpoints are refused
}


class CheckpointRefused(ValueError):
    """A checkpoint that cannot be loaded: another format, River version or configuration, or damaged."""


class CheckpointMismatch(CheckpointRefused):
    """A checkpoint of another format, River version or configuration hash (not a damaged one)."""


def config_hash(config: VigilConfig) -> str:
    """A hash of the configuration that shapes checkpointed state (not intervals or limits)."""
    detection = config.detection.model_dump(mode="json", exclude=_NOT_SHAPING)
    shaping = {
        "detection": detection,
        "rules": [r.model_dump(mode="json") for r in config.rules],
        "labels": config.labels.model_dump(mode="json"),
        "quantiles": sorted(set(config.receiver.quantiles)),
    }
    return hashlib.sha256(orjson.dumps(shaping, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


class Unit:
    """One sample key: its preparation state and the guards of every prepared series derived from it."""

    __slots__ = ("guards", "preparer")

    def __init__(self) -> None:
        self.preparer: Preparer | None = None
        self.guards: dict[tuple[str, str], SeriesGuard] = {}  # (metric, instance) → guard


def _frame(header: dict[str, Any], payload: bytes) -> bytes:
    head = orjson.dumps(header)
    return _MAGIC + len(head).to_bytes(4, "big") + head + payload


def _unframe(blob: bytes) -> tuple[dict[str, Any], bytes]:
    if not blob.startswith(_MAGIC):
        raise CheckpointRefused("not a Vigil checkpoint (no Vigil checkpoint header)")
    start = len(_MAGIC) + 4
    size = int.from_bytes(blob[len(_MAGIC) : start], "big")
    try:
        header = orjson.loads(blob[start : start + size])
    except orjson.JSONDecodeError:
        raise CheckpointRefused("checkpoint header is damaged") from None
    if not isinstance(header, dict):
        raise CheckpointRefused("checkpoint header is damaged")
    return header, blob[start + size :]


def part_key(key: bytes, index: int, partitions: int) -> bytes:
    """The table key of part ``index`` (≥ 1) of ``key``'s checkpoint, in the partition of ``key``."""
    target = partition_for(key, partitions)
    salt = 0
    while True:
        candidate = key + _PART + f"{index}.{salt}".encode()
        if partition_for(candidate, partitions) == target:
            return candidate
        salt += 1


class ModelBank:
    """Units by sample key. ``load(key)`` reads a table entry (checkpoint or part); ``types`` is shared."""

    def __init__(
        self,
        config: VigilConfig,
        load: Callable[[bytes], bytes | None] = lambda key: None,
        *,
        types: FamilyTypes | None = None,
        deployments: Deployments | None = None,
        part_bytes: int = PART_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.load = load
        self.types = types if types is not None else FamilyTypes()
        #: deployments of services (the worker follows the deployments topic into it)
        self.deployments = deployments if deployments is not None else Deployments()
        self.deployment_window_ms = int(config.detection.deployment_window_s * 1000)
        self.inherits = 0  # new series that started from another instance's model
        self.part_bytes = part_bytes
        self.partitions = config.kafka.partitions
        self.config_hash = config_hash(config)
        self.clock = clock
        self.idle_s = config.detection.idle_evict_s
        self.max_keys = config.detection.max_keys
        self.strict = config.detection.on_checkpoint_mismatch == "error"
        #: least recently used first; ``used`` holds each key's last use (``clock`` seconds)
        self.units: OrderedDict[bytes, Unit] = OrderedDict()
        self.used: dict[bytes, float] = {}
        self.dirty: set[bytes] = set()
        #: table entries of keys evicted by the cap before a checkpoint step wrote them: sample key →
        #: [(table key, value)], handed out by the next :meth:`checkpoints` and read back by a restore
        self.pending: dict[bytes, list[tuple[bytes, bytes]]] = {}
        self.evictions: dict[str, int] = {"idle": 0, "cap": 0}
        self.mismatches = 0  # checkpoints kept and refused under on_checkpoint_mismatch: error
        #: bytes of the latest checkpoint of each key held (measured when it is taken; absent before)
        self.sizes: dict[bytes, int] = {}
        self.parts: dict[bytes, int] = {}  # key → parts its last checkpoint had (> 1 only)
        self.refused_checkpoints = 0
        self.counts: dict[str, int] = {}  # preparation counts (engine.preparation.Count), all keys
        self._rules: dict[str, MetricRule] = {}

    @property
    def guards(self) -> int:
        """Guards (models) held."""
        return sum(len(u.guards) for u in self.units.values())

    @property
    def state_bytes(self) -> int:
        """Bytes of the latest checkpoints of the keys held: the measured size of the models in memory."""
        return sum(list(self.sizes.values()))  # a copy: a checkpoint may be encoded in another thread

    # --- the work ---

    def unit(self, key: bytes) -> Unit:
        """The unit of ``key``, restored from its checkpoint the first time it is seen (or again after it
        was evicted); marks it as just used."""
        units = self.units
        unit = units.get(key)
        if unit is None:
            unit = self._restore(key)  # raises CheckpointMismatch (strict): nothing is held for the key
            units[key] = unit
            if len(units) > self.max_keys:
                self._evict_oldest()
        else:
            units.move_to_end(key)
        self.used[key] = self.clock()
        return unit

    def evict_idle(self) -> int:
        """Drop the checkpointed keys unused for ``idle_evict_s``; return how many left memory."""
        cutoff = self.clock() - self.idle_s
        idle = []
        for key in self.units:  # least recently used first: stop at the first key used since the cutoff
            if self.used[key] > cutoff:
                break
            if key not in self.dirty:
                idle.append(key)
        for key in idle:
            self._drop(key)
        self.evictions["idle"] += len(idle)
        return len(idle)

    def _evict_oldest(self) -> None:
        key = next(iter(self.units))
        if key in self.dirty:
            self.dirty.discard(key)
            self.pending[key] = list(self._dump(key, self.units[key]))
        self._drop(key)
        self.evictions["cap"] += 1

    def _drop(self, key: bytes) -> None:
        del self.units[key]
        del self.used[key]
        self.parts.pop(key, None)
        self.sizes.pop(key, None)

    def prepare(self, key: bytes, series: list[RawSeries]) -> Prepared:
        """Prepare raw series of ``key`` with that key's state; the counts are added to :attr:`counts`."""
        unit = self.unit(key)
        if unit.preparer is None:
            unit.preparer = self._preparer()
        self.dirty.add(key)
        prepared = unit.preparer.prepare(WriteRequest(series=series))
        counts = self.counts
        for name, n in prepared.counts.items():
            counts[name] = counts.get(name, 0) + n
        return prepared

    def observe(
        self, series: Series, key: bytes | None = None, trace: list[tuple[float, bool]] | None = None
    ) -> list[dict[str, Any]]:
        """Score then learn every point of ``series`` (prepared); return the verdict events it caused.

        ``key`` is the sample key it was derived from; by default that of its service and metric family.
        With ``trace``, (reported score, opened) is appended per point with a value (the backtest's rows): a
        point whose timestamp does not advance is scored but neither learned nor able to open anything.
        """
        if key is None:
            key = sample_key(series.service, family_of(series.metric))
        unit = self.unit(key)
        self.dirty.add(key)
        return self._observe(unit, series, trace)

    def observe_all(
        self, key: bytes, series: Iterable[Series], failed: Callable[[Series, Exception], None]
    ) -> list[tuple[Series, list[dict[str, Any]]]]:
        """:meth:`observe` for every series prepared from one key's raw series, the key's unit looked up
        once; returns each series that caused events, with its events. A series whose model raises is handed
        to ``failed`` and the others are observed; :class:`CheckpointMismatch` is raised before any is."""
        unit = self.unit(key)
        self.dirty.add(key)
        out = []
        for s in series:
            try:
                events = self._observe(unit, s, None)
            except Exception as exc:  # noqa: BLE001 - a model's failure costs its series, not the others
                failed(s, exc)
                continue
            if events:
                out.append((s, events))
        return out

    def _observe(
        self, unit: Unit, series: Series, trace: list[tuple[float, bool]] | None
    ) -> list[dict[str, Any]]:
        metric, instance = series.metric, series.instance
        guard = unit.guards.get((metric, instance))
        if guard is None:
            first = next(((ts, v) for ts, v in series.points if v is not None), None)
            guard = self._new_guard(unit, metric, self.rule_for(metric), first)
            unit.guards[(metric, instance)] = guard
        events: list[dict[str, Any]] = []
        for ts, value in series.points:
            skipped = guard.admit(ts)  # the per-series watermark: a re-read point is not learned twice
            if skipped is not None:
                counts = self.counts
                counts[skipped] = counts.get(skipped, 0) + 1
                if trace is not None and value is not None:
                    trace.append((guard.peek(value, ts), False))
                continue
            transition = guard.end(ts) if value is None else guard.observe(ts, value)
            if transition is not None:
                rule = self.rule_for(metric)
                event = anomaly_event(series.service, metric, instance, rule, transition)
                self._with_deployment(event, series.service, transition.window_start_ms)
                events.append(event)
            if trace is not None and value is not None:
                opened = transition is not None and transition.kind is TransitionKind.OPENED
                trace.append((guard.score, opened))
        return events

    def _new_guard(
        self, unit: Unit, metric: str, rule: MetricRule, first: tuple[int, float] | None
    ) -> SeriesGuard:
        """A guard for a new instance of ``metric``. With ``detection.inherit_models``, its detector and
        calibration start as a copy of those of the instance of ``metric`` in this unit that has learned
        most and has no anomaly open — if that model finds the new instance's ``first`` (time, value)
        normal (a score below the opening threshold); an instance unlike the others (a node with another
        disk size) learns from nothing. Episode state, watermark and score start fresh."""
        detection = self.config.detection
        guard = SeriesGuard(rule, detection)
        if not detection.inherit_models or first is None:
            return guard
        donor: SeriesGuard | None = None
        for (m, _), g in unit.guards.items():
            learned = m == metric and not g.is_open and g.detector.n >= detection.warmup
            if learned and (donor is None or g.detector.n > donor.detector.n):
                donor = g
        if donor is not None and math.isfinite(first[1]) and donor.peek(first[1], first[0]) < 1.0:
            plain.apply(guard.detector, plain.dump(donor.detector))
            plain.apply(guard.calibrator, plain.dump(donor.calibrator))
            self.inherits += 1
        return guard

    def _with_deployment(self, event: dict[str, Any], service: str, start_ms: int) -> None:
        """Add ``data.deployment`` to an anomaly event whose episode started soon after a deployment."""
        if self.deployment_window_ms <= 0:
            return
        d = self.deployments.before(service, start_ms, self.deployment_window_ms)
        if d is not None:
            event["data"]["deployment"] = d.evidence(start_ms)

    def rule_for(self, metric: str) -> MetricRule:
        """The configuration's rule for ``metric`` (:meth:`VigilConfig.rule_for`), remembered."""
        rule = self._rules.get(metric)
        if rule is None:
            if len(self._rules) >= RULE_CACHE:
                self._rules.clear()
            rule = self._rules[metric] = self.config.rule_for(metric)
        return rule

    # --- checkpoints ---

    def checkpoints(self, select: Callable[[bytes], bool]) -> Iterable[tuple[bytes, bytes]]:
        """(table key, value) for every selected key changed since it was last checkpointed.

        A key's checkpoint is one entry, or a head and parts when larger than ``part_bytes``; parts the
        previous checkpoint had and this one has not are emptied (``b""``).
        """
        for key in [k for k in self.pending if select(k)]:
            yield from self.pending.pop(key)
        chosen = [key for key in self.dirty if select(key)]
        self.dirty.difference_update(chosen)
        for key in chosen:
            unit = self.units.get(key)
            if unit is not None:
                yield from self._dump(key, unit)

    def forget(self, keep: Callable[[bytes], bool]) -> None:
        """Drop the keys of partitions this worker no longer owns (they are restored if they come back)."""
        for key in [k for k in self.units if not keep(k)]:
            self._drop(key)
            self.dirty.discard(key)
        for key in [k for k in self.pending if not keep(k)]:
            del self.pending[key]

    def _preparer(self) -> Preparer:
        return Preparer(self.config.labels, self.config.receiver.quantiles, types=self.types)

    def _header(self) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "river": RIVER_VERSION, "config": self.config_hash}

    def _dump(self, key: bytes, unit: Unit) -> Iterator[tuple[bytes, bytes]]:
        doc = {
            "preparation": None if unit.preparer is None else unit.preparer.state(),
            "guards": [[metric, instance, plain.dump(g)] for (metric, instance), g in unit.guards.items()],
        }
        body = orjson.dumps(doc)
        size = self.part_bytes
        chunks = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
        digest = hashlib.sha256(body).hexdigest()[:16]
        self.sizes[key] = len(body)
        yield key, _frame({**self._header(), "id": digest, "parts": len(chunks)}, chunks[0])
        for index, chunk in enumerate(chunks[1:], start=1):
            yield part_key(key, index, self.partitions), _frame({"part": index, "id": digest}, chunk)
        for index in range(len(chunks), self.parts.get(key, 1)):
            yield part_key(key, index, self.partitions), b""
        if len(chunks) > 1:
            self.parts[key] = len(chunks)
        else:
            self.parts.pop(key, None)

    def read(self, key: bytes, blob: bytes) -> Unit:
        """The unit a checkpoint of ``key`` holds (its parts, if any, read with ``load``); raises
        :class:`CheckpointRefused` for one that does not match this bank."""
        return self._read(key, blob)

    def _restore(self, key: bytes) -> Unit:
        pending = self.pending.pop(key, None)
        if pending is not None:  # evicted by the cap before its checkpoint was written: that is its state
            entries = dict(pending)
            self.dirty.add(key)  # written by the next checkpoint step, as the pending entries would have been
            return self._read(key, entries[key], load=lambda k: entries.get(k) or self.load(k))
        blob = self.load(key)
        if not blob:
            return Unit()
        try:
            return self._read(key, blob)
        except CheckpointMismatch as exc:
            if self.strict:
                self.mismatches += 1
                if self.mismatches == 1 or self.mismatches % 10_000 == 0:
                    log.error("checkpoint of %r kept, its samples are dead-lettered: %s", key, exc)
                raise
            self.refused_checkpoints += 1
            log.error("checkpoint of %r refused, the key starts fresh: %s", key, exc)
            return Unit()
        except Exception as exc:  # noqa: BLE001 - any damaged checkpoint must only cost its own key
            self.refused_checkpoints += 1
            log.error("checkpoint of %r refused, the key starts fresh: %s", key, exc)
            return Unit()

    def _read(self, key: bytes, blob: bytes, load: Callable[[bytes], bytes | None] | None = None) -> Unit:
        load = self.load if load is None else load
        header, payload = _unframe(blob)
        mine = self._header()
        if any(header.get(field) != mine[field] for field in mine):
            raise CheckpointMismatch(
                f"checkpoint format {header.get('format')} / River {header.get('river')} / config "
                f"{header.get('config')} cannot be loaded by format {mine['format']} / River "
                f"{mine['river']} / config {mine['config']}"
            )
        parts = header.get("parts")
        if type(parts) is not int or not 1 <= parts <= 10_000:
            raise CheckpointRefused("checkpoint header is damaged (parts)")
        chunks = [payload]
        for index in range(1, parts):
            part = load(part_key(key, index, self.partitions))
            if not part:
                raise CheckpointRefused(f"checkpoint part {index} of {parts} is missing")
            part_header, chunk = _unframe(part)
            if part_header.get("id") != header.get("id") or part_header.get("part") != index:
                raise CheckpointRefused(f"checkpoint part {index} belongs to another checkpoint")
            chunks.append(chunk)
        if parts > 1:
            self.parts[key] = parts
        try:
            doc = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError as exc:
            raise CheckpointRefused(f"checkpoint body is damaged: {exc}") from None
        if not isinstance(doc, dict):
            raise CheckpointRefused("checkpoint body is damaged")
        unit = Unit()
        prep = doc.get("preparation")
        if prep is not None:
            unit.preparer = self._preparer()
            unit.preparer.restore(prep)
        for metric, instance, state in doc.get("guards", ()):
            if type(metric) is not str or type(instance) is not str or type(state) is not dict:
                raise CheckpointRefused("checkpoint guards are damaged")
            guard = SeriesGuard(self.rule_for(metric), self.config.detection)
            plain.apply(guard, state)
            unit.guards[(metric, instance)] = guard
        return unit
