"""The services view: series status (``kafka.topics.status``) and anomalies (``vigil.verdicts``), read from
the beginning of both topics by every API replica, so a restarted replica answers as before.

:class:`ServicesView` is plain Python (records in, documents out; health from :mod:`engine.health`);
:class:`ViewFollower` feeds it from Kafka. A status record that is not one (not JSON, wrong shape, key not
its series, oversized) goes to the dead-letter topic with the reason and is counted; the API goes on.
Records of ``vigil.verdicts`` that are not anomaly events are skipped (verification and poller events
share that topic), broken anomaly events counted.

An open anomaly counts towards health only while its series is live (seen within ``status.idle_s`` of
wall-clock time): a series that stopped without a stale marker leaves the view, and its anomaly with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError

from connectors.kafka import ensure_topics, fetch_wait_ms, start_producer
from connectors.notify.anomaly import Anomaly, BadEvent, Skip, parse
from engine.config import NotifyEvent, VigilConfig
from engine.errors import BadRecord
from engine.events import iso
from engine.guard import SeriesState
from engine.health import Health, OpenAnomaly, Rolled, roll_up
from engine.processor import Source, deadletter
from engine.status import LiveSeries, SeriesStatus, decode_status

log = logging.getLogger("vigil.api")

Series = tuple[str, str, str]
#: a verdict record larger than this is not an anomaly event
MAX_EVENT_BYTES = 64 * 1024
#: ready without reaching the end offsets after this long without a record (a broker whose end offsets
#: are off, as the embedded one's can be for multi-record batches)
QUIET_S = 5.0


def _ms(text: str) -> int:
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return 0


def _band(low: float | None, high: float | None) -> dict[str, float | None] | None:
    return None if low is None and high is None else {"low": low, "high": high}


def anomaly_doc(a: Anomaly, resolved: Anomaly | None = None) -> dict[str, Any]:
    """An anomaly as the API answers it: the evidence of its opening, and its resolution if any."""
    return {
        "id": a.anomaly_id,
        "service": a.service,
        "metric": a.metric,
        "instance": a.instance,
        "type": a.metric_type.value,
        "state": "open" if resolved is None else "resolved",
        "opened_at": a.time,
        "resolved_at": None if resolved is None else resolved.time,
        "value": a.value,
        "expected": _band(a.expected_low, a.expected_high),
        "score": a.score,
        "peak_score": a.peak_score if resolved is None else max(a.peak_score, resolved.peak_score),
        "window": {
            "start": a.start,
            "end": a.end if resolved is None else resolved.end,
            "start_ms": a.start_ms,
            "end_ms": a.end_ms if resolved is None else resolved.end_ms,
        },
    }


class ServicesView:
    """Live series and anomalies by service; documents for the routes and ``/metrics``."""

    def __init__(self, config: VigilConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        """Forget everything (the topics are about to be read again from the beginning)."""
        s = self.config.status
        self.series = LiveSeries(s.idle_s, s.max_series, clock=self.clock)
        self.resolved_kept = s.resolved_kept
        self.open: dict[Series, Anomaly] = {}
        self.resolved: dict[str, deque[dict[str, Any]]] = {}
        self.last_resolved_ms: dict[str, int] = {}
        self._resolved_ids: dict[str, set[str]] = {}

    # --- records in ---
    def put_status(self, status: SeriesStatus) -> None:
        self.series.put(status)

    def put_event(self, a: Anomaly) -> None:
        series = (a.service, a.metric, a.instance)
        current = self.open.get(series)
        if a.kind is NotifyEvent.OPENED:
            if a.anomaly_id in self._resolved_ids.get(a.service, ()):
                return  # read again after its resolution (at-least-once)
            if current is None or current.start_ms <= a.start_ms:
                self.open[series] = a
            return
        if current is not None and current.start_ms <= a.start_ms:
            del self.open[series]
        ids = self._resolved_ids.setdefault(a.service, set())
        if a.anomaly_id in ids:
            return
        kept = self.resolved.setdefault(a.service, deque())
        kept.append(anomaly_doc(current if current is not None else a, a))
        ids.add(a.anomaly_id)
        while len(kept) > self.resolved_kept:
            ids.discard(kept.popleft()["id"])
        at = _ms(a.time)
        self.last_resolved_ms[a.service] = max(at, self.last_resolved_ms.get(a.service, at))

    # --- documents out ---
    def live(self) -> Iterator[SeriesStatus]:
        """The live series (those idle for ``status.idle_s`` of wall clock are dropped on the way)."""
        return self.series.live()

    def _live(self) -> dict[str, list[SeriesStatus]]:
        by_service: dict[str, list[SeriesStatus]] = {}
        for s in self.series.live():
            by_service.setdefault(s.service, []).append(s)
        return by_service

    def _open_of(self, service: str, live: list[SeriesStatus]) -> list[Anomaly]:
        seen = {s.series for s in live}
        return [a for k, a in self.open.items() if k[0] == service and k in seen]

    def _health(self, service: str, live: list[SeriesStatus]) -> tuple[Rolled, list[Anomaly]]:
        anomalies = self._open_of(service, live)
        reporting: dict[str, set[str]] = {}
        for s in live:
            reporting.setdefault(s.metric, set()).add(s.instance)
        rolled = roll_up(
            (s.state for s in live),
            (_open(a) for a in anomalies),
            {m: len(i) for m, i in reporting.items()},
            self.last_resolved_ms.get(service),
            _learning_since(live),
        )
        return rolled, anomalies

    def _instances(self, live: list[SeriesStatus], anomalies: list[Anomaly]) -> list[dict[str, Any]]:
        out = []
        for instance in sorted({s.instance for s in live}):
            mine = [a for a in anomalies if a.instance == instance]
            series = [s for s in live if s.instance == instance]
            rolled = roll_up(
                (s.state for s in series),
                (_open(a) for a in mine),
                None,
                learning_since=_learning_since(series),
            )
            out.append(
                {
                    "instance": instance,
                    "health": rolled.health.value,
                    "since": _iso(rolled.since_ms),
                    "open_anomalies": len(mine),
                }
            )
        return out

    def _summary(self, service: str, live: list[SeriesStatus]) -> dict[str, Any]:
        rolled, anomalies = self._health(service, live)
        return {
            "service": service,
            "health": rolled.health.value,
            "since": _iso(rolled.since_ms),
            "open_anomalies": [anomaly_doc(a) for a in sorted(anomalies, key=_order)],
            "instances": self._instances(live, anomalies),
        }

    def services(self) -> list[dict[str, Any]]:
        live = self._live()
        return [self._summary(service, live[service]) for service in sorted(live)]

    def health(self) -> dict[str, Health]:
        live = self._live()
        return {service: self._health(service, series)[0].health for service, series in live.items()}

    def service(self, service: str) -> dict[str, Any] | None:
        live = self._live().get(service)
        if not live:
            return None
        doc = self._summary(service, live)
        doc["metrics"] = [self._metric(s) for s in sorted(live, key=lambda s: (s.metric, s.instance))]
        return doc

    def _metric(self, s: SeriesStatus) -> dict[str, Any]:
        a = self.open.get(s.series)
        return {
            "metric": s.metric,
            "instance": s.instance,
            "type": s.metric_type.value,
            "state": s.state.value,
            "value": s.value,
            "expected": _band(s.expected_low, s.expected_high),
            "score": s.score,
            "time": iso(s.ts_ms),
            "seen_at": iso(s.wall_ms),
            "anomaly": None if a is None else a.anomaly_id,
            "window": None if a is None else anomaly_doc(a)["window"],
        }

    def anomalies(self, service: str | None, state: str | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if state in (None, "open"):
            out.extend(
                anomaly_doc(a)
                for a in sorted(self.open.values(), key=_order)
                if service is None or a.service == service
            )
        if state in (None, "resolved"):
            for name in sorted(self.resolved):
                if service is None or name == service:
                    out.extend(self.resolved[name])
        return out


def _open(a: Anomaly) -> OpenAnomaly:
    # An opening's window ends at the sample that opened it: the anomaly's opening time (metric time).
    return OpenAnomaly(a.metric, a.instance, a.metric_type, a.end_ms)


def _learning_since(live: list[SeriesStatus]) -> list[int | None]:
    """When each learning series of ``live`` began learning (``None``: its status does not say)."""
    return [s.since_ms for s in live if s.state is SeriesState.LEARNING]


def _order(a: Anomaly) -> tuple[int, str, str, str]:
    return (a.start_ms, a.service, a.metric, a.instance)


def _iso(ms: int | None) -> str | None:
    return None if ms is None else iso(ms)


class ViewFollower:
    """Reads the status and verdict topics from the beginning into a :class:`ServicesView`.

    ``ready`` once every partition of both topics has been read up to where it ended at start (or after a
    quiet second, for brokers whose end offsets are not to be trusted). Kafka going away is logged and
    the reading starts again; the task never dies quietly. ``deadletters``: refused status records go to
    the dead-letter topic (the API's follower), else they are only counted and logged (the notifier's).
    """

    def __init__(self, config: VigilConfig, view: ServicesView, *, deadletters: bool = True) -> None:
        self.config = config
        self.view = view
        self.deadletters = deadletters
        self.ready = asyncio.Event()
        self.refused: dict[tuple[str, str], int] = {}  # (topic, reason) → records refused
        self._task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        if self._task is not None:
            return
        k = self.config.kafka
        await ensure_topics(
            k.bootstrap_servers,
            [k.topics.status, k.topics.verdicts, k.topics.deadletter],
            k.partitions,
            k.replication_factor,
            compacted=[k.topics.status],
        )
        if self.deadletters:
            self._producer = await start_producer(k)
        self._task = asyncio.create_task(self._follow(), name="vigil-api-views")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
        self.ready.clear()

    async def _follow(self) -> None:
        while True:
            try:
                await self._read()
            except (KafkaError, OSError) as exc:
                self.ready.clear()
                log.warning("reading the status and verdict topics failed (%s); again in 1 s", exc)
                await asyncio.sleep(1.0)

    async def _read(self) -> None:
        k = self.config.kafka
        self.view.reset()
        consumer = AIOKafkaConsumer(
            k.topics.status,
            k.topics.verdicts,
            bootstrap_servers=k.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=fetch_wait_ms(k.embedded_quirks),
            max_partition_fetch_bytes=2 * 1024 * 1024,
        )
        try:
            await consumer.start()  # inside the try: a stop while it connects closes it too
            ends: dict[Any, int] | None = None
            quiet_since = time.monotonic()
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=2000)
                for records in batch.values():
                    for record in records:
                        try:
                            await self._take(record)
                        except Exception:  # a bug must cost one record, never the view
                            log.exception(
                                "record %s/%d/%d failed", record.topic, record.partition, record.offset
                            )
                            self._count(record.topic, "processing_failed")
                if batch:
                    quiet_since = time.monotonic()
                if self.ready.is_set():
                    continue
                assigned = consumer.assignment()
                if ends is None and assigned:
                    ends = await consumer.end_offsets(list(assigned))
                caught_up = ends is not None
                for tp, end in (ends or {}).items():
                    caught_up = caught_up and await _position(consumer, tp) >= end
                quiet = ends is not None and time.monotonic() - quiet_since > QUIET_S
                if caught_up or quiet:
                    self.ready.set()
                    log.info(
                        "status and verdict topics read (%s)",
                        "to their end offsets" if caught_up else f"nothing new for {QUIET_S:g} s",
                    )
        finally:
            await consumer.stop()

    async def _take(self, record: ConsumerRecord[bytes, bytes]) -> None:
        k = self.config.kafka
        if record.topic == k.topics.status:
            try:
                self.view.put_status(
                    decode_status(record.key, record.value, self.config.status.max_record_bytes)
                )
            except BadRecord as exc:
                await self._refuse(record, str(exc), "bad_status")
            return
        if record.value is None:
            return
        try:
            self.view.put_event(parse(record.value, MAX_EVENT_BYTES))
        except BadEvent as exc:
            if exc.reason is not Skip.OTHER_TYPE:
                self._count(record.topic, exc.reason.value)

    def _count(self, topic: str, reason: str) -> None:
        self.refused[(topic, reason)] = self.refused.get((topic, reason), 0) + 1

    async def _refuse(self, record: ConsumerRecord[bytes, bytes], reason: str, kind: str) -> None:
        self._count(record.topic, kind)
        n = sum(self.refused.values())
        if n == 1 or n % 1000 == 0:
            log.warning("refused a record of %s (offset %d): %s", record.topic, record.offset, reason)
        if self._producer is None:  # not this follower's job (see deadletters)
            return
        source = Source(record.topic, record.partition, record.offset)
        raw = (record.value or b"")[: 64 * 1024]
        try:
            await self._producer.send_and_wait(
                self.config.kafka.topics.deadletter, deadletter(reason, source, raw=raw)
            )
        except KafkaError as exc:  # the record is refused all the same; the count and log say so
            log.warning("could not dead-letter a refused status record: %s", exc)


async def _position(consumer: AIOKafkaConsumer, tp: Any) -> int:
    try:
        return int(await consumer.position(tp))
    except (KafkaError, AssertionError):
        return -1
