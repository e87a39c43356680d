"""What the worker does with one ``vigil.samples`` record, as plain Python (Faust only wires it up).

A record that cannot be used — or the parts of it that cannot — goes to the dead-letter topic with its
reason; the rest is processed. Nothing here raises for bad input: an agent must never die of a record.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.bank import ModelBank
from engine.errors import BadRecord
from engine.events import encode
from engine.samples import Rejected, analysis_key, decode_batch

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
    samples: int = 0


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
    bank: ModelBank
    max_future_ms: int
    processed: int = 0
    deadlettered: int = 0

    def handle(self, raw: bytes | None, source: Source, now_ms: int | None = None) -> Outcome:
        outcome = Outcome()
        now = int(time.time() * 1000) if now_ms is None else now_ms
        try:
            series, rejected = decode_batch(raw, now_ms=now, max_future_ms=self.max_future_ms)
        except BadRecord as exc:
            outcome.deadletters.append(deadletter(str(exc), source, raw=raw or b""))
            self.deadlettered += 1
            return outcome
        for r in rejected:
            outcome.deadletters.append(self._reject(r, source))
        for s in series:
            try:
                events = self.bank.observe(s)
            except Exception as exc:
                log.exception("series %s/%s/%s failed", s.service, s.metric, s.instance)
                outcome.deadletters.append(
                    self._reject(Rejected(f"processing failed: {exc!r}", _series_doc(s)), source)
                )
                continue
            outcome.samples += len(s.points)
            key = analysis_key(s.service, s.metric)
            outcome.events.extend((key, encode(e)) for e in events)
        self.processed += outcome.samples
        return outcome

    def _reject(self, r: Rejected, source: Source) -> bytes:
        self.deadlettered += 1
        return deadletter(r.reason, source, payload=r.payload)


def _series_doc(s: Any) -> dict[str, Any]:
    return {"service": s.service, "metric": s.metric, "instance": s.instance, "points": list(s.points)}
