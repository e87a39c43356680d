"""Reading a whole topic in every process that needs it: no consumer group, every partition from the
beginning, then live. Used for the compacted topics every worker needs all of (metadata, deployments)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from connectors.kafka import fetch_wait_ms
from engine.config import KafkaConfig

log = logging.getLogger(__name__)

__all__ = ["follow_topic"]

Records = Sequence[ConsumerRecord[bytes, bytes]]


async def follow_topic(
    kafka: KafkaConfig,
    topic: str,
    handle: Callable[[Records], None],
    caught_up: asyncio.Event | None = None,
) -> None:
    """Hand every batch of ``topic``'s records to ``handle`` until cancelled; waits for the topic to exist
    and rides out broker restarts (the consumer reconnects by itself). ``handle`` must not raise.

    ``caught_up`` is set once everything the topic held at the start has been handed over."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_wait_ms(kafka.embedded_quirks),
        metadata_max_age_ms=5000,
    )
    try:
        await consumer.start()  # inside the try: a cancel while it connects closes it too
        partitions = await _partitions(consumer, topic)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions) if caught_up is not None else {}
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            except KafkaError as exc:
                log.warning("topic %s: %s", topic, exc)
                await asyncio.sleep(1.0)
                continue
            for records in batch.values():
                handle(records)
            if caught_up is not None and not caught_up.is_set():
                positions = [await consumer.position(tp) for tp in partitions]
                if all(at >= ends[tp] for at, tp in zip(positions, partitions, strict=True)):
                    caught_up.set()
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The topic's partitions, waiting for the topic to exist."""
    delay = 0.2
    while True:
        cluster = await consumer._client.fetch_all_metadata()  # topics() drops the partitions
        found = cluster.partitions_for_topic(topic)
        if found:
            return [TopicPartition(topic, p) for p in sorted(found)]
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
