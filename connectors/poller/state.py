"""The poller's watermarks on Kafka: per (watch, query), the last step it emitted completely.

They live in the compacted topic ``kafka.topics.poller_state``, keyed ``watch \\x1f query``, value
``{"v": 1, "watermark_ms": N}``; the newest record per key wins. A watermark is written only after every
sample up to it was acknowledged by Kafka, so a restart resumes right after it.

Reading the topic to its end trusts its end offsets, which the embedded broker gets wrong for batches of
several records: every write here is sent alone (one at a time), so every batch holds one record.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from connectors.kafka import fetch_wait_ms, topic_partitions
from engine.config import KafkaConfig
from engine.samples import partition_for

log = logging.getLogger(__name__)

STATE_VERSION = 1


def state_key(watch: str, query: str) -> bytes:
    """
    >>> state_key("checkout", "error_ratio")
    b'checkout\\x1ferror_ratio'
    """
    return f"{watch}\x1f{query}".encode()


def decode_state(raw: bytes | None) -> int | None:
    """The watermark of a record; ``None`` for a tombstone or anything unreadable (logged by the caller).

    >>> decode_state(b'{"v":1,"watermark_ms":15000}'), decode_state(b"junk"), decode_state(None)
    (15000, None, None)
    """
    if raw is None:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.get("v") != STATE_VERSION:
        return None
    mark = doc.get("watermark_ms")
    return mark if type(mark) is int and mark >= 0 else None


class Watermarks:
    """Read the watermarks of some partitions (:meth:`load`: those a poller was just given), then write each
    new one (:meth:`save`) to the partition of its key (:meth:`partition_of`)."""

    def __init__(self, config: KafkaConfig, producer: AIOKafkaProducer, partitions: int) -> None:
        self.topic = config.topics.poller_state
        self.partitions = partitions
        self._config = config
        self._producer = producer
        self._lock = asyncio.Lock()
        self.marks: dict[bytes, int] = {}

    def partition_of(self, key: bytes) -> int:
        return partition_for(key, self.partitions)

    async def load(self, partitions: set[int] | None = None) -> dict[bytes, int]:
        """Read ``partitions`` (default: all) from the start to their end; the newest record per key wins."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._config.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=fetch_wait_ms(self._config.embedded_quirks),
        )
        await consumer.start()
        try:
            # the producer's metadata lookup waits for a topic created a moment ago
            count = await topic_partitions(self._producer, self.topic)
            wanted = range(count) if partitions is None else sorted(partitions)
            tps = [TopicPartition(self.topic, p) for p in wanted]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            pending = {tp for tp in tps if ends[tp] > 0}
            while pending:
                batch = await consumer.getmany(*pending, timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        self._apply(record.key, record.value)
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
        finally:
            await consumer.stop()
        return self.marks

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        mark = decode_state(value)
        if mark is None:
            if value is not None:
                log.warning("poller state: unreadable record for %r ignored", key[:200])
            self.marks.pop(key, None)
        else:
            self.marks[key] = mark

    async def save(self, key: bytes, watermark_ms: int) -> None:
        value = orjson.dumps({"v": STATE_VERSION, "watermark_ms": watermark_ms})
        async with self._lock:
            await self._producer.send_and_wait(self.topic, value, key=key, partition=self.partition_of(key))
        self.marks[key] = watermark_ms
