"""Talking to Kafka outside Faust: readiness, topic creation, a producer, a verdict follower.

Topics are never auto-created by the broker (Apache Kafka runs with ``auto.create.topics.enable=false``):
clients wait up to :data:`TOPIC_WAIT_S` for a topic to exist, and a producer always takes the partition
count from the topic, never from the configuration (the topic may have been created with another count).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, UnknownTopicOrPartitionError

from engine.config import KafkaConfig
from engine.errors import BrokerUnavailable

log = logging.getLogger(__name__)

#: Tansu can leave a fetch waiting until the consumer's fetch_max_wait_ms is over although records arrived
#: meanwhile (Apache Kafka answers at once). With Faust's 1.5 s a record waited ~0.5-0.8 s in front of a
#: worker (measured: a dead-letter probe's round trip through a worker, p50 524 ms; with a 100 ms wait 231
#: ms, with this one 10 ms, as on Apache Kafka with 1.5 s: 5 ms); an idle worker then costs 2.7 % of a
#: core instead of 1 %. Consumers on the embedded broker ask with this wait.
FETCH_WAIT_MS = 50


def fetch_wait_ms(embedded_quirks: bool) -> int:
    """A consumer's ``fetch_max_wait_ms``: :data:`FETCH_WAIT_MS` on the embedded broker, else aiokafka's
    500 (Apache Kafka answers a fetch as soon as records arrive)."""
    return FETCH_WAIT_MS if embedded_quirks else 500


TOPIC_EXISTS = TopicAlreadyExistsError.errno
#: how long a client waits for a topic it needs to exist
TOPIC_WAIT_S = 30.0
COMPACT = {"cleanup.policy": "compact"}


def first_address(bootstrap_servers: str) -> tuple[str, int]:
    """The first ``host:port`` of a bootstrap list.

    >>> first_address("kafka-1:9092,kafka-2:9092")
    ('kafka-1', 9092)
    """
    host, _, port = bootstrap_servers.split(",")[0].strip().rpartition(":")
    return host.strip("[]"), int(port)


def wait_for_port(bootstrap_servers: str, timeout: float) -> None:
    """Block until the first bootstrap address accepts TCP connections."""
    host, port = first_address(bootstrap_servers)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"no broker at {host}:{port} after {timeout:.0f}s: {exc}") from None
            time.sleep(0.05)


async def ensure_topics(
    bootstrap_servers: str,
    names: Iterable[str],
    partitions: int,
    replication: int = 1,
    compacted: Iterable[str] = (),
) -> None:
    """Create the topics that do not exist yet (existing ones are left as they are).

    The ``compacted`` ones get ``cleanup.policy=compact``: they hold the latest value per key (metadata).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        compact = set(compacted)
        wanted = [
            NewTopic(n, partitions, replication, topic_configs=COMPACT if n in compact else None)
            for n in names
            if n not in existing
        ]
        if not wanted:
            return
        response = await admin.create_topics(wanted)
        for topic, code, message in response.topic_errors:
            if code not in (0, TOPIC_EXISTS):
                raise BrokerUnavailable(
                    f"cannot create topic {topic}: error {code} {message}", retriable=False
                )
    finally:
        await admin.close()


def topic_names(config: KafkaConfig) -> list[str]:
    t = config.topics
    return [
        t.samples,
        t.verdicts,
        t.deadletter,
        t.metadata,
        t.poller_state,
        t.verifications,
        t.deployments,
        t.status,
    ]


def compacted_topics(config: KafkaConfig) -> list[str]:
    """The topics of :func:`topic_names` that are compacted."""
    t = config.topics
    return [t.metadata, t.poller_state, t.verifications, t.deployments, t.status]


async def start_producer(config: KafkaConfig, **overrides: object) -> AIOKafkaProducer:
    """A producer that acknowledges only what every in-sync replica has (``acks=all``)."""
    options: dict[str, object] = {
        "bootstrap_servers": config.bootstrap_servers,
        "acks": "all",
        "enable_idempotence": False,
        "linger_ms": 2,
        "max_batch_size": 1024 * 1024,
        "max_request_size": 8 * 1024 * 1024,
        "request_timeout_ms": int(config.ack_timeout_s * 1000),
    }
    options.update(overrides)
    producer = AIOKafkaProducer(**options)
    try:
        await producer.start()
    except KafkaError as exc:
        await producer.stop()
        raise BrokerUnavailable(f"cannot reach Kafka at {config.bootstrap_servers}: {exc}") from exc
    return producer


async def topic_partitions(producer: AIOKafkaProducer, topic: str, timeout: float = TOPIC_WAIT_S) -> int:
    """The partition count of ``topic`` as the cluster has it, waiting up to ``timeout`` for it to exist."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return len(await producer.partitions_for(topic))
        except UnknownTopicOrPartitionError:
            if time.monotonic() > deadline:
                raise _missing(topic, timeout) from None
            await asyncio.sleep(0.5)


def _missing(topic: str, timeout: float) -> BrokerUnavailable:
    return BrokerUnavailable(
        f"topic {topic} does not exist (waited {timeout:.0f}s): start `vigil run` or create it",
        retriable=False,
    )


async def follow(config: KafkaConfig, topic: str, *, from_beginning: bool) -> AsyncIterator[bytes]:
    """Yield every record value of ``topic`` as it arrives (no consumer group, nothing committed).

    Waits up to :data:`TOPIC_WAIT_S` for the topic to exist; rides out broker restarts (the consumer
    reconnects and goes on from its position).
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=config.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        fetch_max_wait_ms=fetch_wait_ms(config.embedded_quirks),
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + TOPIC_WAIT_S
        while topic not in await consumer.topics():
            if time.monotonic() > deadline:
                raise _missing(topic, TOPIC_WAIT_S)
            await asyncio.sleep(0.5)
        async for record in consumer:
            if record.value is not None:
                yield record.value
    finally:
        await consumer.stop()
