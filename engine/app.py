"""The Faust application: topics, the model table, the agent. With engine/faust_fixes.py, the only module
that imports faust."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

import faust
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError
from faust.types import TP

from connectors.broker import faust_quirks
from connectors.kafka import FETCH_WAIT_MS, ensure_topics
from connectors.metrics import MetricsServer, worker_registry
from engine import faust_fixes
from engine.bank import ModelBank
from engine.commits import Checkpointer, Ledger, Step
from engine.config import VigilConfig
from engine.delivery import FLOOR, MARGIN, Sender
from engine.deployments import CATCH_UP_S, DeploymentFollower, Deployments
from engine.metadata import MetadataFollower
from engine.processor import Outcome, Processor, Source, deadletter
from engine.samples import family_of, partition_for, sample_key
from engine.status import LiveSeries, StatusBoard, encode_status, status_key
from engine.worker_stats import WorkerStats, WorkerTally

log = logging.getLogger(__name__)


def faust_settings(config: VigilConfig) -> dict[str, Any]:
    kafka = config.kafka
    brokers = ";".join(f"kafka://{s.strip()}" for s in kafka.bootstrap_servers.split(",") if s.strip())
    settings: dict[str, Any] = {
        "broker": brokers,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "topic_partitions": kafka.partitions,
        "topic_replication_factor": kafka.replication_factor,
        "processing_guarantee": kafka.processing_guarantee.value,
        "web_enabled": False,
        "store": "memory://",
        "consumer_auto_offset_reset": "earliest",
        # Nothing for Faust to commit: the samples topic is committed by engine.commits after checkpoints.
        "broker_commit_interval": 10.0,
        # A send that waits longer is given up by this attempt and retried (engine.delivery).
        "producer_request_timeout": kafka.ack_timeout_s,
        # How long a dead worker's partitions wait before the group gives them to the others.
        "broker_session_timeout": kafka.session_timeout_s,
        "broker_heartbeat_interval": kafka.session_timeout_s / 10,
        "stream_wait_empty": False,
        "table_standby_replicas": 0,
    }
    if kafka.embedded_quirks:
        settings |= faust_quirks()
    return settings


def create_app(config: VigilConfig) -> faust.App:
    faust_fixes.install()
    kafka = config.kafka
    if kafka.embedded_quirks:
        faust_fixes.fetch_wait(FETCH_WAIT_MS)
    app = faust.App(kafka.app_id, **faust_settings(config))
    # acks=False: Faust never commits this topic's offsets; engine.commits does, after each checkpoint.
    samples = app.topic(kafka.topics.samples, partitions=kafka.partitions, acks=False)
    # use_partitioner: a checkpoint lands in the changelog partition Kafka's partitioner picks for its key,
    # which is the partition of the samples of that key (engine.samples.partition_for), wherever it is
    # written from.
    models = app.Table(
        "models", partitions=kafka.partitions, key_type=bytes, value_type=bytes, use_partitioner=True
    )

    deployments = Deployments()
    bank = ModelBank(config, load=models.get, deployments=deployments)
    processor = Processor(bank, max_future_ms=int(config.detection.max_future_s * 1000))
    status, live = _status(config, bank)
    processor.status = status
    metadata = MetadataFollower(kafka, bank.types)
    app.task(metadata.run)  # every worker reads the whole metadata topic (no group), live
    deployment_follower = DeploymentFollower(kafka, deployments)
    app.task(deployment_follower.run)  # and the whole deployments topic
    tally = WorkerTally()
    sender = Sender(attempt_timeout_s=kafka.ack_timeout_s)
    ledger = Ledger()
    limits = _MessageLimits(kafka.bootstrap_servers, app.conf.producer_max_request_size)

    async def produce(topic: str, key: bytes | None, value: bytes, partition: int | None = None) -> None:
        await app.producer.send_and_wait(topic, key, value, partition, None, None)

    async def write_checkpoint(key: bytes, blob: bytes) -> None:
        changelog = models.changelog_topic.get_topic_name()
        partition = partition_for(key, kafka.partitions)
        await sender.deliver("a checkpoint", lambda: produce(changelog, key, blob, partition))

    def store_checkpoint(key: bytes, blob: bytes) -> None:
        models.data[key] = blob

    async def commit(offsets: Mapping[int, int]) -> bool:
        tps = {TP(kafka.topics.samples, p): offset for p, offset in offsets.items()}
        consumer: Any = app.consumer  # Faust's commit of given offsets, with its rebalance checks
        return bool(await consumer._commit(tps))

    checkpointer = Checkpointer(
        bank, ledger, kafka.partitions, store=store_checkpoint, write=write_checkpoint, commit=commit
    )

    async def positioned(offsets: Mapping[TP, int | None]) -> None:
        mine = {
            tp: offset
            for tp, offset in offsets.items()
            if tp.topic == kafka.topics.samples and tp.partition not in ledger.next
        }
        unset = [tp for tp, offset in mine.items() if offset is None]
        earliest: Mapping[TP, int] = await app.consumer.earliest_offsets(*unset) if unset else {}
        for tp, offset in mine.items():
            ledger.position(tp.partition, offset if offset is not None else earliest.get(tp, 0))

    faust_fixes.on_positioned(app, positioned)

    async def seek_back(tp: TP, offset: int) -> None:
        consumer: Any = app.consumer
        await consumer.seek_wait({tp: offset})
        consumer._read_offset[tp] = offset or None  # Faust drops fetched records below this one

    async def produce_in_order(topic: str, records: list[tuple[bytes, bytes]]) -> None:
        """Append every record in order, then await their acks together: a storm of events from one record
        costs about one round trip per partition, not one per event."""
        acks = [await app.producer.send(topic, key, value, None, None, None) for key, value in records]
        await asyncio.gather(*acks)

    async def deliver(outcome: Outcome) -> None:
        if outcome.events:  # a failed attempt sends them all again (duplicates carry the same event ids)
            events = outcome.events
            await sender.deliver(
                f"{len(events)} verdict(s)", lambda: produce_in_order(kafka.topics.verdicts, events)
            )
        for value in outcome.deadletters:
            limit = await limits.of(kafka.topics.deadletter)
            await sender.deliver_deadletter(
                value,
                limit,
                lambda v: produce(kafka.topics.deadletter, None, v),
                too_large=_too_large,
            )
            tally.deadletter(value)

    @app.agent(samples, concurrency=1)
    async def judge(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        if not await deployment_follower.wait_caught_up(CATCH_UP_S):
            log.warning("the deployments topic is not read after %.0f s; judging without it", CATCH_UP_S)
        async for event in stream.events():
            message = event.message
            partition, offset = message.partition, message.offset
            step = ledger.step(partition, offset)
            if step is Step.GAP:
                await seek_back(message.tp, ledger.next[partition])
            if step is not Step.PROCESS:
                yield None
                continue
            async with checkpointer.lock:
                ledger.start(partition)
                source = Source(message.topic, partition, offset)
                try:
                    outcome = processor.handle(event.value, source)
                except Exception as exc:  # a bug must cost one record, not the agent
                    log.exception("record %s/%d/%d failed", message.topic, partition, offset)
                    outcome = Outcome(deadletters=[deadletter(f"processing failed: {exc!r}", source)])
                await deliver(outcome)
                ledger.done(partition, offset)
                tally.processed(message.topic, partition, offset)
            yield None

    async def on_revoked(_app: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked: set[TP] = args[0] if args else kwargs.get("revoked", set())
        gone = {tp.partition for tp in revoked if tp.topic == kafka.topics.samples}
        if gone:
            await checkpointer.run(gone, release=True)
            partitions = kafka.partitions
            live.drop(lambda s: partition_for(sample_key(s.service, family_of(s.metric)), partitions) in gone)
            tally.revoked(kafka.topics.samples, gone)

    async def on_shutdown(_app: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        try:
            await checkpointer.run(release=True)
        except Exception:
            log.exception("final checkpoint failed; the next owner re-reads from the last commit")

    app.on_partitions_revoked.connect(on_revoked)
    app.on_before_shutdown.connect(on_shutdown)

    async def checkpoint_models() -> None:
        await checkpointer.run()
        tally.checkpoint_done()

    async def report() -> None:
        log.info(
            "processed %d samples, %d models, %d dead letters, %d send retries, %d metric types, counts %s",
            processor.processed,
            bank.guards,
            processor.deadlettered,
            sender.retries,
            len(bank.types),
            bank.counts,
        )

    status_topic_ready = False

    async def publish_status() -> None:
        nonlocal status_topic_ready
        try:
            statuses = status.flush()
        except Exception:  # a bug must cost a flush, never the worker (a timer's exception stops Faust)
            log.exception("building the series statuses failed")
            return
        if not statuses:
            return
        for s in statuses:
            live.put(s)
        try:
            if not status_topic_ready:  # a worker alone on a cluster without topic auto-creation
                await ensure_topics(
                    kafka.bootstrap_servers,
                    [kafka.topics.status],
                    kafka.partitions,
                    kafka.replication_factor,
                    compacted=[kafka.topics.status],
                )
                status_topic_ready = True
            sent = [
                await app.producer.send(
                    kafka.topics.status, status_key(*s.series), encode_status(s), None, None, None
                )
                for s in statuses
            ]
            await asyncio.gather(*sent)
        except Exception as exc:  # noqa: BLE001 - published with the next flush instead
            log.warning(
                "publishing %d series statuses failed (%r); again at the next flush", len(statuses), exc
            )
            status.again(statuses)

    app.timer(interval=config.detection.checkpoint_interval_s)(checkpoint_models)
    app.timer(interval=config.status.interval_s)(publish_status)
    app.timer(interval=30.0)(report)

    # Operating: the worker's Prometheus metrics (connectors/metrics.py), from what the worker knows.
    def stats() -> WorkerStats:
        return WorkerStats(
            samples_processed=processor.processed,
            consumer_lag=consumer_lag(app, kafka.topics.samples, tally.processed_offsets),
            models=bank.guards,
            model_bytes=bank.state_bytes,
            deadletters=dict(tally.deadletters),
            checkpoint_age_s=tally.checkpoint_age(),
            send_retries=sender.retries,
            deadletters_dropped=sender.dropped,
            start_up_gaps=ledger.gaps,
            duplicates=bank.counts.get("duplicate", 0),  # preparation's and the guards' watermarks alike
            out_of_order=bank.counts.get("out_of_order", 0),
            evictions=dict(bank.evictions),
            checkpoints_refused=bank.refused_checkpoints,
            keys=len(bank.units),
        )

    if config.worker.metrics_enabled:
        w = config.worker
        server = MetricsServer(worker_registry(stats, live.live), w.metrics_host, w.metrics_port)
        port = server.bind()  # before Faust starts: a taken port is a clear error, not a traceback
        print(f"vigil worker: metrics on http://{w.metrics_host}:{port}/metrics", file=sys.stderr, flush=True)
        app.task(server.serve)  # starts after table recovery; cancelled (and closed) when the app stops
    return app


def _status(config: VigilConfig, bank: ModelBank) -> tuple[StatusBoard, LiveSeries]:
    """The worker's status board (its hook is in the processor) and its own live series (/metrics)."""

    def guard_of(key: bytes, metric: str, instance: str) -> Any:
        unit = bank.units.get(key)
        return None if unit is None else unit.guards.get((metric, instance))

    board = StatusBoard(guard_of, lambda metric: bank.rule_for(metric).type)
    return board, LiveSeries(config.status.idle_s, config.status.max_series)


def consumer_lag(
    app: faust.App, topic: str, processed: dict[tuple[str, int], int]
) -> dict[tuple[str, int], int]:
    """Per assigned partition of ``topic``: the high watermark minus the next offset to process.

    The position is the last offset the agent processed + 1, else the committed offset (where the consumer
    started after assignment). A partition not fetched yet has no known high watermark and is left out.
    """
    consumer = app.consumer
    try:
        assigned = [tp for tp in consumer.assignment() if tp.topic == topic]
    except Exception:  # noqa: BLE001 - not started yet (or stopping): nothing is assigned
        return {}
    committed = getattr(consumer, "_committed_offset", {})
    lag = {}
    for tp in assigned:
        highwater = consumer.highwater(tp)
        done = processed.get((tp.topic, tp.partition))
        position = done + 1 if done is not None else committed.get(tp)
        if highwater is not None and position is not None:
            lag[(tp.topic, tp.partition)] = highwater - position
    return lag


def _too_large(exc: BaseException) -> bool:
    """A size refusal, from the broker or from the producer (Faust wraps the latter)."""
    sizes = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
    return isinstance(exc, sizes) or isinstance(exc.__cause__, sizes)


class _MessageLimits:
    """The largest dead letter a topic takes: its ``max.message.bytes`` (asked once), at most the
    producer's ``max_request_size``, less a margin for the batch's own bytes."""

    def __init__(self, bootstrap_servers: str, max_request_size: int) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.max_request_size = max_request_size
        self._known: dict[str, int] = {}

    async def of(self, topic: str) -> int:
        if topic not in self._known:
            broker = await _topic_max_message_bytes(self.bootstrap_servers, topic)
            limit = min(self.max_request_size, broker or self.max_request_size)
            self._known[topic] = max(FLOOR, limit - MARGIN)
        return self._known[topic]


async def _topic_max_message_bytes(bootstrap_servers: str, topic: str) -> int | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    try:
        await admin.start()
        response = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        for resource in response[0].resources:
            for entry in resource[4]:
                if entry[0] == "max.message.bytes" and entry[1]:
                    return int(entry[1])
    except Exception as exc:  # noqa: BLE001 - the producer's own limit still applies
        log.warning("cannot read max.message.bytes of %s (%s); using the producer's limit", topic, exc)
    finally:
        await admin.close()
    return None


def run_worker(config: VigilConfig, loglevel: str = "warn") -> None:
    """Run the worker until SIGINT/SIGTERM (Faust's worker owns the loop and the signals)."""
    app = create_app(config)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    if not _in_foreground(worker.stdout):
        # Faust's spinner writes cursor escape codes even into a file, and its at-exit "show cursor" lands
        # after whatever the terminal's owner printed last (vigil demo's summary).
        worker.spinner = None
    worker.execute_from_commandline()


def _in_foreground(stream: Any) -> bool:
    """Whether ``stream`` is a terminal whose foreground is this process (not a child of `vigil run`)."""
    try:
        return bool(stream.isatty()) and os.tcgetpgrp(stream.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False
