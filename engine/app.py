"""The Faust application: topics, the model table, the agent. With engine/faust_fixes.py, the only module
that imports faust."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import faust
from faust.types import TP

from connectors.broker import faust_quirks
from connectors.metrics import MetricsServer, worker_registry
from engine import faust_fixes
from engine.bank import ModelBank
from engine.config import VigilConfig
from engine.metadata import MetadataFollower
from engine.processor import Processor, Source
from engine.samples import partition_for
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
        "broker_commit_every": 1000,
        "broker_commit_interval": kafka.commit_interval_s,
        "stream_wait_empty": False,
        "table_standby_replicas": 0,
    }
    if kafka.embedded_quirks:
        settings |= faust_quirks()
    return settings


def create_app(config: VigilConfig) -> faust.App:
    faust_fixes.install()
    kafka = config.kafka
    app = faust.App(kafka.app_id, **faust_settings(config))
    samples = app.topic(kafka.topics.samples, partitions=kafka.partitions)
    verdicts = app.topic(kafka.topics.verdicts, partitions=kafka.partitions)
    deadletters = app.topic(kafka.topics.deadletter, partitions=kafka.partitions)
    # use_partitioner: a checkpoint lands in the changelog partition Kafka's partitioner picks for its key,
    # which is the partition of the samples of that key (engine.samples.partition_for), wherever it is
    # written from.
    models = app.Table(
        "models", partitions=kafka.partitions, key_type=bytes, value_type=bytes, use_partitioner=True
    )

    bank = ModelBank(config, load=models.get)
    processor = Processor(bank, max_future_ms=int(config.detection.max_future_s * 1000))
    metadata = MetadataFollower(kafka, bank.types)
    app.task(metadata.run)  # every worker reads the whole metadata topic (no group), live
    interval = config.detection.checkpoint_interval_s
    tally = WorkerTally()

    def checkpoint(select: Callable[[bytes], bool]) -> None:
        for key, blob in bank.checkpoints(select):
            models[key] = blob
            tally.checkpointed(key, blob)

    @app.agent(samples, concurrency=1)
    async def judge(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for event in stream.events():
            message = event.message
            outcome = processor.handle(event.value, Source(message.topic, message.partition, message.offset))
            for key, value in outcome.events:
                await verdicts.send(key=key, value=value)
            for value in outcome.deadletters:
                await deadletters.send(value=value)
                tally.deadletter(value)
            tally.processed(message.topic, message.partition, message.offset)
            yield None

    async def on_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked: set[TP] = args[0] if args else kwargs.get("revoked", set())
        gone = {tp.partition for tp in revoked if tp.topic == kafka.topics.samples}
        if gone:

            def owned(key: bytes) -> bool:
                return partition_for(key, kafka.partitions) not in gone

            checkpoint(lambda key: not owned(key))
            bank.forget(owned)
            tally.revoked(kafka.topics.samples, gone)

    app.on_partitions_revoked.connect(on_revoked)

    async def checkpoint_models() -> None:
        checkpoint(lambda key: True)
        tally.checkpoint_done()

    async def report() -> None:
        log.info(
            "processed %d samples, %d models, %d dead letters, %d metric types, preparation %s",
            processor.processed,
            bank.guards,
            processor.deadlettered,
            len(bank.types),
            dict(processor.counts),
        )

    app.timer(interval=interval)(checkpoint_models)
    app.timer(interval=30.0)(report)

    # Operating: the worker's Prometheus metrics (connectors/metrics.py), from what the worker knows.
    def stats() -> WorkerStats:
        return WorkerStats(
            samples_processed=processor.processed,
            consumer_lag=consumer_lag(app, kafka.topics.samples, tally.processed_offsets),
            models=bank.guards,
            model_bytes=tally.model_bytes(bank.units.keys()),
            deadletters=dict(tally.deadletters),
            checkpoint_age_s=tally.checkpoint_age(),
        )

    if config.worker.metrics_enabled:
        w = config.worker
        server = MetricsServer(worker_registry(stats), w.metrics_host, w.metrics_port)
        port = server.bind()  # before Faust starts: a taken port is a clear error, not a traceback
        print(f"vigil worker: metrics on http://{w.metrics_host}:{port}/metrics", file=sys.stderr, flush=True)
        app.task(server.serve)  # starts after table recovery; cancelled (and closed) when the app stops
    return app


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
