"""What the worker does with one ``vigil.samples`` record, as plain Python (Faust only wires it up).

Raw series are grouped by sample key (service, metric family) and prepared with that key's state, then
every prepared series is scored and learned by its guard; prepared series (version 1, or version 2
``prepared``) are not prepared again. A record that cannot be used — or the parts of it that cannot —
goes to the dead-letter topic with its reason; the rest is processed. Nothing here raises for bad input:
an agent must never die of a record.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.bank import CheckpointMismatch, ModelBank
from engine.errors import BadRecord
from engine.events import encode
from engine.preparation import Count
from engine.raw import Labels, RawSeries
from engine.records import LABEL_CACHE, LabelCache, decode_record
from engine.samples import Rejected, Series, analysis_key, family_of, sample_key
from engine.status import StatusBoard

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Source:
    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class Outcome:
    events: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, CloudEvent JSON)
    deadletters: list[bytes] = field(default_factory=list)
    samples: int = 0  # prepared points learned


def deadletter(reason: str, source: Source, payload: Any = None, raw: bytes | None = None) -> bytes:
    doc: dict[str, Any] = {
        "reason": reason,
        "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset},
        "time_ms": int(time.time() * 1000),
    }
    if raw is not None:
        doc["payload_base64"] = base64.b64encode(raw[: 1024 * 1024]).decode()
    else:
        doc["payload"] = payload
    return orjson.dumps(doc, default=str)


@dataclass
class Processor:
    """Handles records; ``counts`` are the preparation counts (:class:`engine.preparation.Count` values,
    e.g. ``duplicate``, ``out_of_order``) since start, for the worker's metrics."""

    bank: ModelBank
    max_future_ms: int
    processed: int = 0
    deadlettered: int = 0
    raw_samples: int = 0  # raw samples (and native histograms) received
    #: the series judged since the last status flush (engine.status); None: no status published
    status: StatusBoard | None = None
    #: label sets checked before (decoding), and the sample key of each (``None``: no service)
    labels: LabelCache = field(default_factory=LabelCache)
    _keys: dict[Labels, bytes | None] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return self.bank.counts

    def handle(self, raw: bytes | None, source: Source, now_ms: int | None = None) -> Outcome:
        outcome = Outcome()
        now = int(time.time() * 1000) if now_ms is None else now_ms
        try:
            decoded = decode_record(raw, now_ms=now, max_future_ms=self.max_future_ms, labels=self.labels)
        except BadRecord as exc:
            outcome.deadletters.append(deadletter(str(exc), source, raw=raw or b""))
            self.deadlettered += 1
            return outcome
        for r in decoded.rejected:
            outcome.deadletters.append(self._reject(r, source))
        for s in decoded.prepared:
            self._observe(s, sample_key(s.service, family_of(s.metric)), source, outcome)
        if decoded.raw:
            for key, group in self._by_key(decoded.raw).items():
                try:
                    prepared = self.bank.prepare(key, group)
                except CheckpointMismatch as exc:  # on_checkpoint_mismatch: error; the checkpoint is kept
                    doc = [{"labels": dict(s.labels), "samples": s.samples} for s in group]
                    outcome.deadletters.append(
                        self._reject(Rejected(f"checkpoint mismatch: {exc}", doc), source)
                    )
                    continue
                except Exception as exc:
                    log.exception("preparing %r failed", key)
                    doc = [{"labels": dict(s.labels), "samples": s.samples} for s in group]
                    outcome.deadletters.append(
                        self._reject(Rejected(f"preparation failed: {exc!r}", doc), source)
                    )
                    continue
                self._observe_all(key, prepared.series, source, outcome)
        self.processed += outcome.samples
        return outcome

    def _by_key(self, series: list[RawSeries]) -> dict[bytes, list[RawSeries]]:
        """Raw series by sample key; those without a service (and no default) are counted and dropped."""
        out: dict[bytes, list[RawSeries]] = {}
        keys = self._keys
        counts = self.bank.counts
        raw_samples = 0
        for s in series:
            n = len(s.samples) + len(s.histograms)
            raw_samples += n
            labels = s.labels
            key = keys[labels] if labels in keys else self._key_of(labels)
            if key is None:
                counts[Count.NO_SERVICE] = counts.get(Count.NO_SERVICE, 0) + n
                continue
            group = out.get(key)
            if group is None:
                out[key] = [s]
            else:
                group.append(s)
        self.raw_samples += raw_samples
        return out

    def _key_of(self, labels: Labels) -> bytes | None:
        """The sample key of a label set (remembered), ``None`` when it has no service and there is no
        default service."""
        config = self.bank.config.labels
        service, name = config.default_service, ""
        for k, v in labels:
            if k == config.service and v:
                service = v
            elif k == "__name__":
                name = v
        key = None if service is None else sample_key(service, family_of(name))
        if len(self._keys) >= LABEL_CACHE:
            self._keys.clear()
        self._keys[labels] = key
        return key

    def _observe(self, s: Series, key: bytes, source: Source, outcome: Outcome) -> None:
        try:
            events = self.bank.observe(s, key)
        except CheckpointMismatch as exc:  # on_checkpoint_mismatch: error; the checkpoint is kept
            outcome.deadletters.append(
                self._reject(Rejected(f"checkpoint mismatch: {exc}", _series_doc(s)), source)
            )
            return
        except Exception as exc:
            log.exception("series %s/%s/%s failed", s.service, s.metric, s.instance)
            outcome.deadletters.append(
                self._reject(Rejected(f"processing failed: {exc!r}", _series_doc(s)), source)
            )
            return
        outcome.samples += len(s.points)
        if self.status is not None and s.points:  # the status hook: the latest point, one dict write
            self.status.changed[(key, s.service, s.metric, s.instance)] = s.points[-1]
        if events:
            analysis = analysis_key(s.service, s.metric)
            outcome.events.extend((analysis, encode(e)) for e in events)

    def _observe_all(self, key: bytes, series: list[Series], source: Source, outcome: Outcome) -> None:
        """:meth:`_observe` for the series prepared from one key, the key's unit looked up once."""

        broken: set[int] = set()

        def failed(s: Series, exc: Exception) -> None:
            broken.add(id(s))
            log.error("series %s/%s/%s failed", s.service, s.metric, s.instance, exc_info=exc)
            doc = _series_doc(s)
            outcome.deadletters.append(self._reject(Rejected(f"processing failed: {exc!r}", doc), source))
            outcome.samples -= len(s.points)

        outcome.samples += sum(len(s.points) for s in series)
        try:
            caused = self.bank.observe_all(key, series, failed)
        except CheckpointMismatch as exc:  # on_checkpoint_mismatch: error; the checkpoint is kept
            outcome.samples -= sum(len(s.points) for s in series)
            for s in series:
                doc = _series_doc(s)
                outcome.deadletters.append(self._reject(Rejected(f"checkpoint mismatch: {exc}", doc), source))
            return
        status = self.status
        if status is not None:  # the status hook: the latest point of each series judged, one dict write
            for s in series:
                if s.points and id(s) not in broken:
                    status.changed[(key, s.service, s.metric, s.instance)] = s.points[-1]
        events = outcome.events
        for s, evs in caused:
            analysis = analysis_key(s.service, s.metric)
            events.extend((analysis, encode(e)) for e in evs)

    def _reject(self, r: Rejected, source: Source) -> bytes:
        self.deadlettered += 1
        return deadletter(r.reason, source, payload=r.payload)


def _series_doc(s: Any) -> dict[str, Any]:
    return {"service": s.service, "metric": s.metric, "instance": s.instance, "points": list(s.points)}
