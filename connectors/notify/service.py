"""``vigil notify``: every notifier follows ``vigil.verdicts`` in a consumer group of its own.

Delivery is at least once. A notifier commits a record's offset only once it is delivered (or refused by
the receiver for good, or not meant for it), so a crash sends again what it had not confirmed, and the
receivers de-duplicate: Alertmanager by labels, PagerDuty by ``dedup_key``, webhooks by the event id.
An Alertmanager notifier also keeps the offset of every open anomaly's opening uncommitted until it is
resolved: a restarted notifier reads those again and keeps their alerts alive (re-sent every
``resend_interval_s`` with ``endsAt`` ``expiry_s`` ahead of the wall clock). What it re-reads at start is
collapsed to each alert's latest state before it is sent, so a restart does not flap resolved alerts.

A notifier without committed offsets (new, or newly added to a running system) reads the topic from the
beginning and skips records produced before it started, so it misses none produced while its group
forms (Kafka's ``latest`` would). It delivers nothing until every partition it was given has a committed
offset (its first commit follows its first read of each), so a notifier whose first delivery retries until
it is stopped still starts the next time where it began.

A notifier with ``min_health`` holds each opening (uncommitted) until the health of its service, as the
API computes it (:class:`~connectors.api.views.ServicesView`, from the status and verdict topics), is at
least ``min_health``; then it goes out like any other. An opening whose anomaly resolves while held is
dropped with its resolution: nobody was told it opened. A resolution whose opening is not held is sent.

Slack and PagerDuty get one message per service per ``group_interval_s`` (a storm of many series of one
service is one message); Alertmanager and webhooks get every event at once. Each notifier runs on its own:
one whose receiver is down retries with exponential backoff (``backoff_s`` doubled up to
``max_backoff_s``, or the receiver's ``Retry-After``) without holding up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from connectors.kafka import fetch_wait_ms
from connectors.metrics import MetricsServer
from connectors.notify.anomaly import Anomaly, BadEvent, parse
from connectors.notify.senders import AlertmanagerSender, Sender, SendFailed, make_sender
from connectors.notify.stats import NotifyStats
from connectors.signals import stopped_by_signals
from engine.config import NotifierConfig, NotifyEvent, VigilConfig
from engine.errors import BrokerUnavailable, VigilError
from engine.health import Health, at_least

log = logging.getLogger(__name__)

#: an Alertmanager notifier collapses what it re-reads at start for at most this long
CATCH_UP_S = 5.0
POLL_MS = 200

#: service → health, or None while the health view is still reading its topics
HealthOf = Callable[[], dict[str, Health] | None]


class Offsets:
    """Per partition: offsets read but not done yet; the committable offset is the lowest of them, or the
    next to read.

    >>> o = Offsets(); tp = TopicPartition("t", 0)
    >>> for n in (5, 6, 7): o.seen(tp, n)
    >>> o.done(tp, 6); o.done(tp, 7); o.committable(tp)
    5
    >>> o.done(tp, 5); o.committable(tp)
    8
    """

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, set[int]] = defaultdict(set)
        self._next: dict[TopicPartition, int] = {}

    def seen(self, tp: TopicPartition, offset: int) -> None:
        self._pending[tp].add(offset)
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def at(self, tp: TopicPartition, position: int) -> None:
        """Everything before ``position`` was read (a partition caught up without records for us)."""
        self._next[tp] = max(self._next.get(tp, 0), position)

    def done(self, tp: TopicPartition, offset: int) -> None:
        self._pending[tp].discard(offset)

    def committable(self, tp: TopicPartition) -> int | None:
        pending = self._pending.get(tp)
        if pending:
            return min(pending)
        return self._next.get(tp)

    def partitions(self) -> list[TopicPartition]:
        return list(self._next)

    def forget(self, tp: TopicPartition) -> None:
        self._pending.pop(tp, None)
        self._next.pop(tp, None)

    def count(self) -> int:
        return sum(len(p) for p in self._pending.values())


@dataclass
class Item:
    tp: TopicPartition
    offset: int
    anomaly: Anomaly


@dataclass
class Group:
    due: float  # monotonic
    items: list[Item] = field(default_factory=list)


class _Assignments(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.notifier.revoked(revoked)

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.notifier.assigned(assigned)


class Notifier:
    """One notifier: its consumer, its sender, its groups and open alerts. ``await run(stop)``."""

    def __init__(
        self,
        config: VigilConfig,
        notifier: NotifierConfig,
        stats: NotifyStats,
        *,
        since_ms: int | None = None,
        health: HealthOf | None = None,
    ) -> None:
        self.config = config
        self.notifier = notifier
        self.name = notifier.name
        self.stats = stats
        self.sender: Sender = make_sender(notifier, config.api.external_url)
        self.since_ms = int(time.time() * 1000) if since_ms is None else since_ms
        self.group_id = f"{config.kafka.app_id}.notify.{notifier.name}"
        self._consumer: AIOKafkaConsumer | None = None
        self._offsets = Offsets()
        self._committed: dict[TopicPartition, int] = {}
        #: per partition read: True when it had no committed offset (records older than since_ms are skipped)
        self._fresh: dict[TopicPartition, bool] = {}
        self._queue: list[Item] = []  # immediate senders, in order
        self._groups: dict[str, Group] = {}  # grouped senders, by service
        self._open: dict[str, Item] = {}  # alertmanager: anomaly id -> the item of its latest opening
        #: min_health: anomaly id -> its opening, until the service gets there
        self._held: dict[str, Item] = {}
        if notifier.min_health is not None and health is None:
            raise ValueError(f"notifier {notifier.name} has min_health: it needs the services' health")
        self._health = health
        self._catching_up_until: float | None = None
        self._next_resend = 0.0
        self._is_alertmanager = isinstance(self.sender, AlertmanagerSender)
        for metric in (stats.pending, stats.open_alerts, stats.held, stats.last_delivery):
            metric.labels(self.name)

    # -- Kafka ---------------------------------------------------------------------------------------------

    def assigned(self, assigned: list[TopicPartition]) -> None:
        # Positions are Kafka's own: the committed offset, else the beginning (auto_offset_reset). Whether a
        # partition had a committed offset is asked in the main loop (:meth:`classify`), before any commit
        # of ours: aiokafka may fetch while this callback runs, so nothing here may race the loop.
        for tp in assigned:
            self._fresh.pop(tp, None)
        if self._is_alertmanager:
            self._catching_up_until = time.monotonic() + CATCH_UP_S
        log.info("notifier %s: assigned %s", self.name, sorted(assigned))

    def revoked(self, revoked: list[TopicPartition]) -> None:
        """Forget what was read of ``revoked``: whoever gets them next reads again from the committed offset
        (what was delivered since is sent again, and de-duplicated by the receiver)."""
        log.info("notifier %s: revoked %s", self.name, sorted(revoked))
        for tp in revoked:
            self._offsets.forget(tp)
            self._committed.pop(tp, None)
            self._fresh.pop(tp, None)
        gone = set(revoked)
        self._queue = [i for i in self._queue if i.tp not in gone]
        for service, group in list(self._groups.items()):
            group.items = [i for i in group.items if i.tp not in gone]
            if not group.items:
                del self._groups[service]
        self._open = {k: i for k, i in self._open.items() if i.tp not in gone}
        self._held = {k: i for k, i in self._held.items() if i.tp not in gone}

    async def classify(self, partitions: list[TopicPartition]) -> None:
        """Which of ``partitions`` have no committed offset (read from the start, older records skipped)."""
        consumer = self._consumer
        assert consumer is not None
        for tp in partitions:
            if tp not in self._fresh:
                committed = await consumer.committed(tp)
                self._fresh[tp] = committed is None
                if committed is not None:
                    self._committed[tp] = committed

    async def _caught_up(self, consumer: AIOKafkaConsumer, read: Iterable[TopicPartition]) -> None:
        """Commit the position of an assigned partition that has nothing to read yet, once: else a restart
        would take it for new and skip what was produced to it meanwhile."""
        known = set(self._offsets.partitions()) | set(read)
        for tp in consumer.assignment() - known:
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue  # not fetched yet
            await self.classify([tp])
            position = await consumer.position(tp)
            if position >= highwater:
                self._offsets.at(tp, position)

    def _placed(self, consumer: AIOKafkaConsumer) -> bool:
        """Every assigned partition has a committed offset. Until then nothing is delivered: a delivery that
        retries holds up reading, and a partition never read before a restart would count as new then, and
        its records from before that start would be skipped."""
        return all(tp in self._committed for tp in consumer.assignment())

    async def _commit(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        offsets = {}
        for tp in self._offsets.partitions():
            at = self._offsets.committable(tp)
            if at is not None and at > self._committed.get(tp, -1):
                offsets[tp] = OffsetAndMetadata(at, "")
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("notifier %s: commit failed (%s); it is tried again", self.name, exc)
            return
        for tp, om in offsets.items():
            self._committed[tp] = om.offset
        log.info(
            "notifier %s: committed %s", self.name, {tp.partition: om.offset for tp, om in offsets.items()}
        )

    # -- records ---------------------------------------------------------------------------------------------

    def take(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        self._offsets.seen(tp, record.offset)
        if self._fresh.get(tp, False) and record.timestamp < self.since_ms:
            self._offsets.done(tp, record.offset)
            return
        try:
            anomaly = parse(record.value or b"", self.config.notifier.max_event_bytes)
        except BadEvent as exc:
            self.stats.skipped.labels(self.name, exc.reason.value).inc()
            log.debug("notifier %s: skipped record %s@%d: %s", self.name, tp, record.offset, exc)
            self._offsets.done(tp, record.offset)
            return
        if not self.wanted(anomaly):
            self.stats.events.labels(self.name, "filtered").inc()
            self._offsets.done(tp, record.offset)
            return
        item = Item(tp, record.offset, anomaly)
        if self.notifier.min_health is None or self._goes_on(item):
            self._enqueue(item)

    def _goes_on(self, item: Item) -> bool:
        """min_health: an opening is held (False); a resolution goes on (True) unless its opening is held,
        then both are done, unsent."""
        key = item.anomaly.anomaly_id
        if item.anomaly.kind is NotifyEvent.OPENED:
            if key in self._held:  # the same opening again (a worker's resend): the first is held
                self._offsets.done(item.tp, item.offset)
            else:
                self._held[key] = item
            return False
        opening = self._held.pop(key, None)
        if opening is None:
            return True
        for done in (opening, item):
            self._offsets.done(done.tp, done.offset)
        self.stats.events.labels(self.name, "below_min_health").inc(2)
        return False

    def release(self) -> None:
        """Held openings whose service's health has reached min_health go out."""
        minimum = self.notifier.min_health
        if minimum is None or not self._held or self._health is None:
            return
        health = self._health()
        if health is None:
            return
        for key, item in list(self._held.items()):
            if at_least(health.get(item.anomaly.service, Health.LEARNING), minimum):
                del self._held[key]
                self._enqueue(item)

    def _enqueue(self, item: Item) -> None:
        anomaly = item.anomaly
        if self.sender.grouped:
            group = self._groups.get(anomaly.service)
            if group is None:
                group = self._groups[anomaly.service] = Group(
                    time.monotonic() + self.notifier.group_interval_s
                )
            group.items.append(item)
        else:
            self._queue.append(item)

    def wanted(self, a: Anomaly) -> bool:
        n = self.notifier
        return (
            (not n.services or a.service in n.services)
            and (not n.metric_types or a.metric_type in n.metric_types)
            and a.kind in n.events
        )

    # -- delivery --------------------------------------------------------------------------------------------

    async def deliver(self, anomalies: Sequence[Anomaly], stop: asyncio.Event) -> bool:
        """Send until delivered (True) or refused for good (True: dropped, logged, counted); False only
        when ``stop`` is set first."""
        delay = self.notifier.backoff_s
        while True:
            try:
                await self.sender.send(anomalies)
            except SendFailed as exc:
                self.stats.requests.labels(self.name, str(self.sender.last_status or "error")).inc()
                if not exc.retriable:
                    log.error("notifier %s: %s; %d event(s) dropped", self.name, exc, len(anomalies))
                    self.stats.events.labels(self.name, "refused").inc(len(anomalies))
                    return True
                wait = max(delay, exc.retry_after or 0.0)
                log.warning("notifier %s: %s; trying again in %.1f s", self.name, exc, wait)
            except VigilError as exc:  # a secret file that cannot be read: an operator can fix it
                wait = delay
                log.warning("notifier %s: %s; trying again in %.1f s", self.name, exc, wait)
            else:
                self.stats.requests.labels(self.name, str(self.sender.last_status)).inc()
                self.stats.events.labels(self.name, "delivered").inc(len(anomalies))
                self.stats.last_delivery.labels(self.name).set(time.time())
                return True
            self.stats.retries.labels(self.name).inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
                return False
            delay = min(delay * 2, self.notifier.max_backoff_s)

    async def flush(self, stop: asyncio.Event, *, idle: bool) -> None:
        if self._is_alertmanager:
            await self._flush_alertmanager(stop, idle=idle)
        elif self._queue:
            while self._queue and not stop.is_set():
                item = self._queue[0]
                if not await self.deliver([item.anomaly], stop):
                    return
                self._queue.pop(0)
                self._offsets.done(item.tp, item.offset)
        now = time.monotonic()
        for service, group in list(self._groups.items()):
            if group.due <= now and not stop.is_set():
                if not await self.deliver([i.anomaly for i in group.items], stop):
                    return
                del self._groups[service]
                for i in group.items:
                    self._offsets.done(i.tp, i.offset)
        self.stats.pending.labels(self.name).set(self._offsets.count() - len(self._open) - len(self._held))
        self.stats.held.labels(self.name).set(len(self._held))

    async def _flush_alertmanager(self, stop: asyncio.Event, *, idle: bool) -> None:
        now = time.monotonic()
        if self._catching_up_until is not None:
            if not idle and now < self._catching_up_until:
                return  # keep collapsing what a restart re-reads
            self._catching_up_until = None
        if self._queue:
            latest = {i.anomaly.anomaly_id: i.anomaly for i in self._queue}  # the last state of each alert
            if not await self.deliver(list(latest.values()), stop):
                return
            for item in self._queue:
                self._settle(item)
            self._queue = []
            self._next_resend = now + self.notifier.resend_interval_s
        due = self._open and now >= self._next_resend
        if due and await self.deliver([i.anomaly for i in self._open.values()], stop):
            self._next_resend = now + self.notifier.resend_interval_s
        self.stats.open_alerts.labels(self.name).set(len(self._open))

    def _settle(self, item: Item) -> None:
        """A delivered alert: an opening stays uncommitted until its anomaly resolves."""
        key = item.anomaly.anomaly_id
        earlier = self._open.get(key)
        if item.anomaly.kind is NotifyEvent.OPENED:
            if earlier is None:
                self._open[key] = item
            else:  # the same opening again (a worker's resend): the first one keeps the offset
                self._offsets.done(item.tp, item.offset)
            return
        if earlier is not None:
            del self._open[key]
            self._offsets.done(earlier.tp, earlier.offset)
        self._offsets.done(item.tp, item.offset)

    # -- life ------------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        k = self.config.kafka
        quirks = k.embedded_quirks
        consumer = AIOKafkaConsumer(
            bootstrap_servers=k.bootstrap_servers,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=fetch_wait_ms(quirks),
            metadata_max_age_ms=5000,
            # a receiver that is down keeps a notifier retrying between polls, far longer than Kafka's
            # default five minutes: that must not cost it its partitions
            max_poll_interval_ms=7 * 86_400_000,
            session_timeout_ms=6000 if quirks else 10_000,
            rebalance_timeout_ms=6000 if quirks else 30_000,
            heartbeat_interval_ms=500 if quirks else 3000,
        )
        self._consumer = consumer
        try:
            await consumer.start()
        except KafkaError as exc:
            self._consumer = None
            await consumer.stop()
            raise BrokerUnavailable(f"cannot reach Kafka at {k.bootstrap_servers}: {exc}") from exc
        consumer.subscribe([k.topics.verdicts], listener=_Assignments(self))
        await self.sender.start()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=POLL_MS, max_records=1000)
                await self.classify(list(consumer.assignment()))
                for tp, records in batch.items():
                    for record in records:
                        self.take(tp, record)
                await self._caught_up(consumer, batch.keys())
                if self._placed(consumer):
                    self.release()
                    await self.flush(stop, idle=not batch)
                await self._commit()
        finally:
            with contextlib.suppress(KafkaError):
                await self._commit()
            await self.sender.stop()
            await consumer.stop()
            self._consumer = None


async def _supervised(notifier: Notifier, stop: asyncio.Event) -> None:
    """One notifier's loop; an unexpected error is logged and the loop started again (never the others)."""
    delay = 1.0
    while not stop.is_set():
        try:
            await notifier.run(stop)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception(
                "notifier %s stopped on an error (%s); starting it again in %.0f s", notifier.name, exc, delay
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 30.0)


async def serve(config: VigilConfig, stop: asyncio.Event, stats: NotifyStats | None = None) -> None:
    """Run every configured notifier (and the metrics port) until ``stop`` is set."""
    stats = stats or NotifyStats()
    metrics: asyncio.Task[None] | None = None
    p = config.notifier
    if p.metrics_enabled:
        server = MetricsServer(
            stats.registry, p.metrics_host, p.metrics_port, setting="notifier.metrics_port"
        )
        port = server.bind()
        print(f"vigil notify: metrics on http://{p.metrics_host}:{port}/metrics", flush=True)
        metrics = asyncio.create_task(server.serve())
    follower = None
    health: HealthOf | None = None
    if any(n.min_health is not None for n in config.notify):
        # here, not at the top: the API's view reads anomaly events with this package's parser
        from connectors.api.views import ServicesView, ViewFollower

        view = ServicesView(config)
        views = ViewFollower(config, view, deadletters=False)  # the API dead-letters bad status records

        def health() -> dict[str, Health] | None:
            return view.health() if views.ready.is_set() else None

        await views.start()
        follower = views
    notifiers = [Notifier(config, n, stats, health=health) for n in config.notify]
    print(f"vigil notify: {', '.join(n.name for n in notifiers)}", flush=True)
    tasks = [asyncio.create_task(_supervised(n, stop)) for n in notifiers]
    try:
        await stop.wait()
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if follower is not None:
            await follower.stop()
        if metrics is not None:
            metrics.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await metrics


def run_notify(config: VigilConfig) -> None:
    """``vigil notify``: deliver until SIGINT or SIGTERM."""
    if not config.notify:
        raise VigilError("notify is empty: no notifier configured")

    async def main() -> None:
        with stopped_by_signals() as stop:
            await serve(config, stop)

    asyncio.run(main())
