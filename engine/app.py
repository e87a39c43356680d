"""The Faust application: topics, the model table, the agent. With engine/faust_fixes.py, the only module
that imports faust."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import faust
from faust.types import TP

from engine import faust_fixes
from engine.bank import ModelBank
from engine.config import VigilConfig
from engine.metadata import MetadataFollower
from engine.processor import Processor, Source
from engine.samples import partition_for

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
        "processing_guarantee": "at_least_once",
        "web_enabled": False,
        "store": "memory://",
        "consumer_auto_offset_reset": "earliest",
        "broker_commit_every": 1000,
        "broker_commit_interval": kafka.commit_interval_s,
        "stream_wait_empty": False,
        "table_standby_replicas": 0,
    }
    if kafka.embedded_quirks:
        # Tansu answers ListOffsets(latest) wrongly for multi-record batches, so table recovery would stop
        # early and lose state unless every changelog record is its own batch. It also holds a group join
        # for about half the rebalance timeout: keep the timeouts short.
        settings |= {
            "producer_max_batch_size": 1,
            "broker_session_timeout": 6.0,
            "broker_rebalance_timeout": 6.0,
            "broker_heartbeat_interval": 0.5,
        }
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

    def checkpoint(select: Callable[[bytes], bool]) -> None:
        for key, blob in bank.checkpoints(select):
            models[key] = blob

    @app.agent(samples, concurrency=1)
    async def judge(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for event in stream.events():
            message = event.message
            outcome = processor.handle(event.value, Source(message.topic, message.partition, message.offset))
            for key, value in outcome.events:
                await verdicts.send(key=key, value=value)
            for value in outcome.deadletters:
                await deadletters.send(value=value)
            yield None

    async def on_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked: set[TP] = args[0] if args else kwargs.get("revoked", set())
        gone = {tp.partition for tp in revoked if tp.topic == kafka.topics.samples}
        if gone:

            def owned(key: bytes) -> bool:
                return partition_for(key, kafka.partitions) not in gone

            checkpoint(lambda key: not owned(key))
            bank.forget(owned)

    app.on_partitions_revoked.connect(on_revoked)

    async def checkpoint_models() -> None:
        checkpoint(lambda key: True)

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
    return app


def run_worker(config: VigilConfig, loglevel: str = "warn") -> None:
    """Run the worker until SIGINT/SIGTERM (Faust's worker owns the loop and the signals)."""
    app = create_app(config)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
