"""The streaming poller: every (watch, query) follows its own watermark, from a backfill to live.

For each (watch, query) a task loops: the window is the steps after the watermark up to ``now -
delay_s`` (a first start begins ``lookback_s`` back), asked in chunks of ``chunk_steps``; each chunk's
series go to ``vigil.samples`` as prepared records (keyed by :func:`~engine.samples.sample_key`), and only
once Kafka acknowledged them all is the watermark moved to the chunk's last step. So a restart, an outage
of Prometheus or of Kafka, resumes at the first step not yet emitted, and the missed range is backfilled.

A stop (SIGTERM) lets a chunk being written finish: samples and watermark go together, and a stopped and
restarted poller emits every step exactly once. A crash between the two (SIGKILL, power loss) repeats at
most that one chunk; the worker's per-series watermark drops the repeats.

Several pollers (the same ``kafka.app_id``) share the watches through a Kafka consumer group on the
watermark topic: a poller follows the (watch, query) whose watermark lives in a partition the group gave
it. When one stops, or is silent for ``poller.session_timeout_s`` (a crash), the group gives its partitions
to the others, which read those watermarks and resume where it stopped. A poller that is given partitions
away finishes the chunk it is writing first, so none is polled by two at once in a rebalance (a crashed
one repeats at most the chunk it was writing, as above).

A query the source rejects (4xx, ``bad_data``) is disabled with a log line and a ``vigil.source.error``
event on ``vigil.verdicts``; the others go on. Other failures are retried by the client and then again
at the next interval, without moving the watermark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from connectors.kafka import ensure_topics, fetch_wait_ms, start_producer, topic_partitions
from connectors.metrics import MetricsServer
from connectors.poller.metrics import PollerStats, QueryStats, poller_registry
from connectors.poller.state import Watermarks, state_key
from connectors.prometheus import PrometheusClient, QueryError, Window, aligned, split
from connectors.prometheus.watch import poll_query, services_of
from connectors.signals import stopped_by_signals
from engine import events
from engine.config import QueryConfig, VigilConfig, WatchConfig
from engine.errors import BrokerUnavailable, VigilError
from engine.samples import Series, encode_batch, family_of, partition_for, sample_key

log = logging.getLogger(__name__)

#: points per Kafka message; a longer series is cut into several messages
MESSAGE_POINTS = 5000
#: how long a stop waits for chunks being polled to finish before cancelling them
STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class Task:
    watch: WatchConfig
    query: QueryConfig

    @property
    def key(self) -> bytes:
        return state_key(self.watch.label, self.query.name)


def messages(series: list[Series], limit: int = MESSAGE_POINTS) -> Iterator[bytes]:
    """The series as message values of at most ``limit`` points each (a long series is cut in time order)."""
    batch: list[Series] = []
    size = 0
    for s in series:
        for i in range(0, len(s.points), limit):
            piece = Series(s.service, s.metric, s.instance, s.points[i : i + limit])
            if batch and size + len(piece.points) > limit:
                yield encode_batch(batch)
                batch, size = [], 0
            batch.append(piece)
            size += len(piece.points)
    if batch:
        yield encode_batch(batch)


class _Membership(ConsumerRebalanceListener):  # type: ignore[misc]
    """The group's calls: give up partitions (finishing their chunks), then take the new ones."""

    def __init__(self, poller: Poller) -> None:
        self.poller = poller

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.poller._release({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.poller._take({tp.partition for tp in assigned})


class Poller:
    """``await start()`` joins the pollers' group; for each partition of the watermark topic it is given, it
    reads the watermarks there and starts one task per (watch, query) whose watermark lives there;
    ``await stop()``."""

    def __init__(self, config: VigilConfig) -> None:
        self.config = config
        self.stats = PollerStats()
        self._clients = {s.name: PrometheusClient(s) for s in config.poller.sources}
        for name, client in self._clients.items():
            self.stats.clients[name] = client.stats
        self._producer: AIOKafkaProducer | None = None
        self._group: AIOKafkaConsumer | None = None
        self._marks: Watermarks | None = None
        self._partitions = 0
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []  # discovery and group membership
        #: every (watch, query) known (selector watches add theirs), by state key
        self._known: dict[bytes, Task] = {}
        #: the ones this poller follows: their task and the event that stops it
        self._following: dict[bytes, tuple[asyncio.Task[None], asyncio.Event]] = {}
        #: partitions of the watermark topic the group gave this poller
        self.owned: set[int] = set()
        self._commits: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self._producer is not None:
            return
        k = self.config.kafka
        await ensure_topics(
            k.bootstrap_servers,
            [k.topics.poller_state],
            k.partitions,
            k.replication_factor,
            compacted=[k.topics.poller_state],
        )
        self._producer = await start_producer(k)
        try:
            self._partitions = await topic_partitions(self._producer, k.topics.samples)
            state_partitions = await topic_partitions(self._producer, k.topics.poller_state)
            self._marks = Watermarks(k, self._producer, state_partitions)
            for client in self._clients.values():
                await client.start()
            for watch in self.config.poller.watches:
                if watch.selector is None:
                    self._watch(watch)
            await self._join()
        except BaseException:
            await self.stop()
            raise
        for watch in self.config.poller.watches:
            if watch.selector is not None:
                self._tasks.append(asyncio.create_task(self._discover(watch), name=f"discover {watch.name}"))
        log.info("poller: %d watches", len(self.config.poller.watches))

    async def _join(self) -> None:
        k, p = self.config.kafka, self.config.poller
        session_ms = int(p.session_timeout_s * 1000)
        self._group = AIOKafkaConsumer(
            bootstrap_servers=k.bootstrap_servers,
            group_id=f"{k.app_id}-poller",
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=fetch_wait_ms(k.embedded_quirks),
            session_timeout_ms=session_ms,
            rebalance_timeout_ms=session_ms,
            heartbeat_interval_ms=int(p.heartbeat_interval_s * 1000),
        )
        self._group.subscribe([k.topics.poller_state], listener=_Membership(self))
        await self._group.start()
        self._tasks.append(asyncio.create_task(self._member(self._group), name="poller group"))

    async def _member(self, group: AIOKafkaConsumer) -> None:
        """Keep the group's calls coming (the records themselves are read by :meth:`_take`)."""
        while not self._stopping.is_set():
            try:
                await group.getmany(timeout_ms=500)
            except KafkaError as exc:
                log.warning("poller group: %s; trying again", exc)
                await asyncio.sleep(1)

    async def _take(self, partitions: set[int]) -> None:
        assert self._marks is not None
        fresh = partitions - self.owned
        if not fresh or self._stopping.is_set():
            return
        while True:  # where the previous owner stopped; until then these queries wait
            try:
                await self._marks.load(fresh)
                break
            except (KafkaError, VigilError) as exc:
                if self._stopping.is_set():
                    return
                log.warning("poller: reading the watermarks of partitions %s: %s; again", sorted(fresh), exc)
                await asyncio.sleep(1)
        self.owned |= fresh
        log.info("poller: following partitions %s of %s", sorted(self.owned), self._marks.topic)
        for key, task in self._known.items():
            if self._marks.partition_of(key) in fresh:
                self._follow_one(key, task)

    async def _release(self, partitions: set[int]) -> None:
        """Stop following the queries of ``partitions``; their chunks being written finish first."""
        assert self._marks is not None
        self.owned -= partitions
        leaving = [key for key in self._following if self._marks.partition_of(key) in partitions]
        await self._stop_following(leaving)
        for key in leaving:
            task = self._known[key]
            self.stats.queries.pop((task.watch.label, task.query.name), None)

    def _watch(self, watch: WatchConfig) -> None:
        """Know every query of one (service) watch; follow those in partitions this poller owns."""
        for query in watch.all_queries:
            task = Task(watch, query)
            self._known[task.key] = task
            if self._marks is not None and self._marks.partition_of(task.key) in self.owned:
                self._follow_one(task.key, task)

    def _follow_one(self, key: bytes, task: Task) -> None:
        assert self._marks is not None
        if key in self._following:
            return
        source = self.config.poller.source_of(task.watch).name
        self.stats.queries[(task.watch.label, task.query.name)] = QueryStats(
            source, watermark_ms=self._marks.marks.get(key)
        )
        stop = asyncio.Event()
        name = f"poll {task.watch.label}/{task.query.name}"
        self._following[key] = (asyncio.create_task(self._follow(task, stop), name=name), stop)

    async def _stop_following(self, keys: list[bytes]) -> None:
        if not keys:
            return
        tasks = []
        for key in keys:
            task, stop = self._following.pop(key)
            stop.set()
            tasks.append(task)
        _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._commits, return_exceptions=True)  # shielded: they finish

    async def _discover(self, watch: WatchConfig) -> None:
        """A selector watch: look for services every ``discover_interval_s``; follow each new one."""
        client = self._clients[self.config.poller.source_of(watch).name]
        known: set[str] = set()
        while not self._stopping.is_set():
            now = int(time.time() * 1000)
            window = Window(now - (watch.lookback_s + watch.delay_s) * 1000, now, watch.step_s * 1000)
            try:
                found = await services_of(client, watch, self.config.labels, window)
            except QueryError as exc:
                if not exc.retriable:
                    await self._refused(watch, "(selector)", exc)
                    return
                log.warning("watch %s: selector %s: %s; looking again later", watch.name, watch.selector, exc)
                found = []
            for one in found:
                if one.service not in known and not self._stopping.is_set():
                    known.add(one.service or "")
                    log.info("watch %s: following service %s", watch.name, one.service)
                    self._watch(one)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.config.poller.discover_interval_s)

    async def stop(self) -> None:
        self._stopping.set()
        await self._stop_following(list(self._following))
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        group, self._group = self._group, None
        if group is not None:
            with contextlib.suppress(KafkaError):
                await group.stop()  # leaves the group: the others take over at once
        for client in self._clients.values():
            await client.stop()
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    # --- one (watch, query) -------------------------------------------------------------------------

    def _next_window(self, task: Task, now_ms: int) -> Window | None:
        assert self._marks is not None
        watch = task.watch
        end = now_ms - watch.delay_s * 1000
        mark = self._marks.marks.get(task.key)
        start = end - watch.lookback_s * 1000 if mark is None else mark + 1
        return aligned(start, end, watch.step_s * 1000)

    async def _follow(self, task: Task, stop: asyncio.Event) -> None:
        watch, query = task.watch, task.query
        stats = self.stats.queries[(watch.label, query.name)]
        while not stop.is_set():
            try:
                window = self._next_window(task, int(time.time() * 1000))
                for chunk in split(window, self.config.poller.chunk_steps) if window else ():
                    if stop.is_set():
                        return
                    if not await self._chunk(task, chunk, stats):
                        break
            except QueryError as exc:
                if not exc.retriable:
                    await self._disable(task, exc, stats)
                    return
                stats.failed += 1
                log.warning(
                    "watch %s: query %s: %s; asking again in %gs",
                    watch.label,
                    query.name,
                    exc,
                    watch.interval_s,
                )
            except Exception:  # a bug in one query's loop must not end the others
                stats.failed += 1
                log.exception("watch %s: query %s: unexpected error; asking again", watch.label, query.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), watch.interval_s)

    async def _chunk(self, task: Task, chunk: Window, stats: QueryStats) -> bool:
        """Poll one chunk and emit it; False when Kafka did not take it (asked again later)."""
        client = self._clients[self.config.poller.source_of(task.watch).name]
        series, nonfinite, _ = await poll_query(client, task.watch, task.query, self.config.labels, chunk)
        stats.ok += 1
        stats.nonfinite += nonfinite
        # Samples and watermark go together even if a stop cancels this task meanwhile.
        commit = asyncio.ensure_future(self._commit(task, series, chunk.last_ms, stats))
        self._commits.add(commit)
        commit.add_done_callback(self._commits.discard)
        try:
            await asyncio.shield(commit)
        except (KafkaError, VigilError) as exc:
            self.stats.send_failures += 1
            log.warning(
                "watch %s: query %s: Kafka did not take the samples (%s); asking again",
                task.watch.name,
                task.query.name,
                exc,
            )
            return False
        return True

    async def _commit(self, task: Task, series: list[Series], last_ms: int, stats: QueryStats) -> None:
        assert self._producer is not None
        assert self._marks is not None
        if series:
            key = sample_key(task.watch.service or "", family_of(task.query.name))
            partition = partition_for(key, self._partitions)
            topic = self.config.kafka.topics.samples
            sent = [
                await self._producer.send(topic, value, key=key, partition=partition)
                for value in messages(series)
            ]
            await asyncio.gather(*sent)
        await self._marks.save(task.key, last_ms)
        stats.points += sum(len(s.points) for s in series)
        stats.watermark_ms = last_ms

    async def _disable(self, task: Task, exc: QueryError, stats: QueryStats) -> None:
        stats.disabled = True
        await self._refused(task.watch, task.query.name, exc)

    async def _refused(self, watch: WatchConfig, what: str, exc: QueryError) -> None:
        """Log a query (or selector) the source rejected, and publish a ``vigil.source.error`` event."""
        source = self.config.poller.source_of(watch).name
        log.error(
            "watch %s: query %s: source %s rejected it (%s): %s; not asking it again until restart — fix the "
            "query",
            watch.label,
            what,
            source,
            exc.kind,
            exc,
        )
        event = events.source_error_event(
            source, watch.label, what, exc.kind.value, str(exc), int(time.time() * 1000)
        )
        assert self._producer is not None
        try:
            await self._producer.send_and_wait(self.config.kafka.topics.verdicts, events.encode(event))
        except KafkaError as send_error:
            log.warning("could not publish the source error event: %s", send_error)


async def serve(config: VigilConfig, stop: asyncio.Event) -> None:
    """Run the poller (and its metrics port) until ``stop`` is set."""
    poller = Poller(config)
    metrics: asyncio.Task[None] | None = None
    p = config.poller
    if p.metrics_enabled:
        server = MetricsServer(
            poller_registry(poller.stats), p.metrics_host, p.metrics_port, setting="poller.metrics_port"
        )
        port = server.bind()
        print(f"vigil poller: metrics on http://{p.metrics_host}:{port}/metrics", flush=True)
        metrics = asyncio.create_task(server.serve())
    try:
        await poller.start()
        await stop.wait()
    finally:
        await poller.stop()
        if metrics is not None:
            metrics.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await metrics


def run_poller(config: VigilConfig) -> None:
    """``vigil poller``: poll until SIGINT or SIGTERM."""
    if not config.poller.watches:
        raise VigilError("poller.watches is empty: nothing to poll")

    async def main() -> None:
        with stopped_by_signals() as stop:
            await serve(config, stop)

    try:
        asyncio.run(main())
    except KafkaError as exc:
        raise BrokerUnavailable(f"Kafka at {config.kafka.bootstrap_servers}: {exc}") from None
