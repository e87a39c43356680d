"""Delivery to Kafka: the producer, the topics it needs, and "acknowledged by every in-sync replica".

**Acknowledged or not.** :meth:`Kafka.deliver` produces every message of a request and waits until each
one's fate is known — confirmed with ``acks=all``, or failed — or until ``kafka.ack_timeout_s`` passes. Only
when every message is confirmed is the request answered 204; otherwise 503, and the sender resends the whole
request. Ingest keeps nothing of a failed request (no re-send queue, no series state): the resent records
are produced again and the worker drops what it already has by its watermark (the duplicate rule).

**Order.** Per series, points must reach Kafka in the order the sender sent them. A sender has one request
with a given series in flight at a time (a Prometheus shard resends a request until it is answered, and a
series always goes to the same shard), so records of one partition must not be reordered *inside* the
producer. aiokafka 0.14 guarantees that (``aiokafka/producer/sender.py``): ``Sender._sender_routine`` drains
batches with ``drain_by_nodes(ignore_nodes=self._in_flight, muted_partitions=self._muted_partitions)`` —
at most one produce request in flight per broker, and a partition with a batch in flight is muted until the
request finishes — and ``SendProduceReqHandler.do`` puts a batch that failed with a retriable error back at
the *front* of its partition's queue (``MessageAccumulator.reenqueue`` → ``appendleft``) before the
partition is unmuted. So a retried batch cannot be overtaken by a newer one: in Java terms
``max.in.flight.requests.per.connection=1``, which aiokafka does not let one change. A batch whose
``request_timeout_ms`` has passed fails instead of being retried; the producer's request timeout is set
below the request's deadline (:data:`REQUEST_TIMEOUT_SHARE`) so that a request answered 503 has, in the
usual case, no batch left that could still land after its resend. Idempotence stays off: with it aiokafka
never expires a batch, so a batch of a request already answered 503 could land long after the sender's
resend went through another ingest; duplicates are cheaper than that (the worker drops them).

**Partitions** are counted from the samples topic's metadata (``producer.partitions_for``), never taken
from the configuration: the key → partition mapping must be the one the topic has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from connectors.kafka import compacted_topics, ensure_topics, start_producer, topic_names
from connectors.receiver.records import Message
from connectors.receiver.stats import Stats
from engine.config import KafkaConfig
from engine.errors import BrokerUnavailable

log = logging.getLogger(__name__)

#: Producer settings on top of :func:`connectors.kafka.start_producer`'s (``acks=all``, no idempotence).
#: ``linger_ms`` 0: a request's messages are produced at once and then awaited, so lingering only delays
#: the answer; concurrent requests still share produce requests. Compression: see ``bench/receiver.py``
#: (``--compression``) and the README for the measured choice.
PRODUCER_OPTIONS: Final[dict[str, Any]] = {"linger_ms": 0, "compression_type": "zstd"}
#: The producer's ``request_timeout_ms`` as a share of ``kafka.ack_timeout_s``: a batch that cannot be
#: delivered fails (is not retried further) before the request's deadline.
REQUEST_TIMEOUT_SHARE: Final = 0.75
STOP_TIMEOUT_S: Final = 3.0
_METADATA_CACHE_SIZE: Final = 100_000


class Kafka:
    """The receiver's producer, once connected. :meth:`connect` retries until Kafka answers."""

    def __init__(self, config: KafkaConfig, producer: AIOKafkaProducer, stats: Stats) -> None:
        self.config = config
        self.stats = stats
        self._producer = producer
        self._topic = config.topics.samples
        self._ack_timeout = config.ack_timeout_s
        self._published: dict[str, str] = {}  # metadata family -> type, confirmed by Kafka

    @classmethod
    async def connect(cls, config: KafkaConfig, stats: Stats) -> Kafka:
        """Create the topics that are missing and start the producer; :class:`BrokerUnavailable` (or a
        :class:`KafkaError`, :class:`OSError`) while Kafka does not answer."""
        await ensure_topics(
            config.bootstrap_servers,
            topic_names(config),
            config.partitions,
            config.replication_factor,
            compacted_topics(config),
        )
        options = PRODUCER_OPTIONS | {"request_timeout_ms": producer_request_timeout_ms(config)}
        producer = await start_producer(config, **options)
        kafka = cls(config, producer, stats)
        try:
            await kafka.partitions()
        except BaseException:
            await kafka.stop()
            raise
        return kafka

    @property
    def published(self) -> dict[str, str]:
        """Metadata Kafka has confirmed (family -> type): not produced again while unchanged."""
        return self._published

    async def partitions(self) -> int:
        """The samples topic's partition count, from its metadata."""
        found = await self._producer.partitions_for(self._topic)
        if not found:
            raise BrokerUnavailable(f"topic {self._topic} has no partitions (yet)")
        return len(found)

    async def deliver(self, messages: list[Message], metadata: dict[str, str] | None = None) -> bool:
        """Produce ``messages`` and wait for every acknowledgement (``acks=all``) until the deadline.
        True when Kafka confirmed them all; ``metadata`` (in the messages) is then remembered as published."""
        futures: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout(self._ack_timeout):
                for m in messages:  # one by one, in order: a send may wait for room in the accumulator
                    future = await self._producer.send(m.topic, m.value, key=m.key, partition=m.partition)
                    futures.append(future)
                await asyncio.wait(futures)  # every fate known: confirmed or failed
        except TimeoutError:
            pass
        except KafkaError as exc:
            log.warning("producing to %s failed: %s", self._topic, exc)
        confirmed = [m for m, f in zip(messages, futures, strict=False) if _confirmed(f)]
        for f in futures:
            if not f.done():
                f.add_done_callback(_retrieve)
        stats = self.stats
        for m in confirmed:
            if m.topic == self._topic:
                stats.messages_produced += 1
                stats.points_produced += m.points
                stats.bytes_produced += len(m.value)
            else:
                stats.metadata_produced += 1
        if len(confirmed) < len(messages):
            stats.produce_failures += 1
            return False
        if metadata:
            if len(self._published) + len(metadata) > _METADATA_CACHE_SIZE:
                self._published.clear()
            self._published.update(metadata)
        return True

    async def leaders_reachable(self, timeout: float = 1.0) -> bool:
        """Whether every partition of the samples topic has a leader we can talk to."""
        client = self._producer.client
        try:
            partitions = await asyncio.wait_for(self.partitions(), timeout)
        except (TimeoutError, KafkaError, BrokerUnavailable):
            return False
        leaders = {
            client.cluster.leader_for_partition(TopicPartition(self._topic, p)) for p in range(partitions)
        }
        if None in leaders or -1 in leaders:
            return False
        try:
            async with asyncio.timeout(timeout):
                return all([await client.ready(leader) for leader in leaders])
        except (TimeoutError, KafkaError, OSError):
            return False

    async def stop(self) -> None:
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await self._producer.stop()
        except TimeoutError:
            log.warning("Kafka producer did not stop within %.0fs", STOP_TIMEOUT_S)


def producer_request_timeout_ms(config: KafkaConfig) -> int:
    """
    >>> producer_request_timeout_ms(KafkaConfig(ack_timeout_s=10))
    7500
    """
    return max(1, int(config.ack_timeout_s * 1000 * REQUEST_TIMEOUT_SHARE))


def _confirmed(future: asyncio.Future[Any]) -> bool:
    """Done with success (which also marks a failure's exception retrieved: no "never retrieved" noise)."""
    return future.done() and not future.cancelled() and future.exception() is None


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        with contextlib.suppress(BaseException):
            future.exception()
