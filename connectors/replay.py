"""Push a series through the real pipeline: produce its points to ``vigil.samples``.

The points are already what should be analysed (a CSV of values), so they go as version 2 ``prepared``
records, keyed by (service, metric family) like every sample: the worker does not prepare them again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from connectors.kafka import start_producer, topic_partitions
from engine.config import KafkaConfig
from engine.samples import Series, encode_batch, family_of, partition_for, sample_key

BATCH_POINTS = 500


async def replay(
    kafka: KafkaConfig,
    points: Sequence[tuple[int, float]],
    *,
    service: str,
    metric: str,
    instance: str = "",
    speed: float = 0.0,
    batch: int = BATCH_POINTS,
) -> int:
    """Produce ``points`` in batches; with ``speed`` > 0, paced at that multiple of their own time."""
    producer = await start_producer(kafka)
    key = sample_key(service, family_of(metric))
    started = time.monotonic()
    first_ts = points[0][0] if points else 0
    try:
        partition = partition_for(key, await topic_partitions(producer, kafka.topics.samples))
        for i in range(0, len(points), batch if speed <= 0 else 1):
            chunk = points[i : i + batch] if speed <= 0 else points[i : i + 1]
            if speed > 0:
                due = started + (chunk[0][0] - first_ts) / 1000 / speed
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            value = encode_batch([Series(service, metric, instance, chunk)])
            await producer.send_and_wait(kafka.topics.samples, value, key=key, partition=partition)
    finally:
        await producer.stop()
    return len(points)
