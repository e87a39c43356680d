"""Shared fixtures: a session-wide embedded broker, one Apache Kafka per session (tests marked ``kafka``),
and per-test pipelines on their own topics of either."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from hypothesis import settings

from connectors.broker import EmbeddedBroker
from connectors.kafka import compacted_topics, ensure_topics, topic_names
from engine.config import VigilConfig, load_config
from tests.kafka.node import KafkaNode
from vigil.runtime import child_env

# No per-example deadline anywhere: the tests must pass with the other core busy, and a slow example is not
# a wrong one (hypothesis' default 200 ms failed a property test under load).
settings.register_profile("vigil", deadline=None)
settings.load_profile("vigil")

_ids = itertools.count()


class Broker(Protocol):
    """What a test needs of a broker: where it is."""

    @property
    def bootstrap_servers(self) -> str: ...


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaNode]:
    """One Apache Kafka (KRaft, data on disk) for the whole session, started by tests/kafka/run-kafka.sh."""
    node = KafkaNode(tmp_path_factory.mktemp("kafka") / "data")
    try:
        yield node.start()
    finally:
        node.stop()


@pytest.fixture(
    params=["embedded", pytest.param("kafka", marks=pytest.mark.kafka)], ids=["embedded", "kafka"]
)
def any_broker(request: pytest.FixtureRequest) -> Broker:
    """The embedded broker, and Apache Kafka (marked ``kafka``): a test using it runs on both."""
    found: Broker = request.getfixturevalue("broker" if request.param == "embedded" else "kafka")
    return found


def isolated_config(broker: Broker, *, replication: int = 1, **detection: Any) -> VigilConfig:
    """A configuration with topics and a consumer group of its own, on a session broker.

    The embedded broker's work-arounds (``kafka.embedded_quirks``) are on only for the embedded broker.
    Topics are created with ``replication`` replicas.
    """
    n = f"t{os.getpid()}x{next(_ids)}"
    base = load_config(None)
    kafka = base.kafka.model_copy(
        update={
            "bootstrap_servers": broker.bootstrap_servers,
            "embedded_quirks": isinstance(broker, EmbeddedBroker),
            "app_id": f"vigil-{n}",
            "replication_factor": replication,
            "topics": base.kafka.topics.model_copy(
                update={
                    "samples": f"{n}.samples",
                    "verdicts": f"{n}.verdicts",
                    "deadletter": f"{n}.deadletter",
                    "metadata": f"{n}.metadata",
                    "poller_state": f"{n}.poller-state",
                    "verifications": f"{n}.verifications",
                    "deployments": f"{n}.deployments",
                    "status": f"{n}.status",
                }
            ),
        }
    )
    det = base.detection.model_copy(update=detection)
    config = base.model_copy(update={"kafka": kafka, "detection": det})
    asyncio.run(
        ensure_topics(
            kafka.bootstrap_servers,
            topic_names(kafka),
            kafka.partitions,
            replication,
            compacted=compacted_topics(kafka),
        )
    )
    return config


def config_env(config: VigilConfig) -> dict[str, str]:
    """Environment that makes a child ``vigil`` process use ``config``'s Kafka, topics and detection."""
    env = child_env(config)
    k, d = config.kafka, config.detection
    env |= {
        "VIGIL_KAFKA__APP_ID": k.app_id,
        "VIGIL_KAFKA__TOPICS__SAMPLES": k.topics.samples,
        "VIGIL_KAFKA__TOPICS__VERDICTS": k.topics.verdicts,
        "VIGIL_KAFKA__TOPICS__DEADLETTER": k.topics.deadletter,
        "VIGIL_KAFKA__TOPICS__METADATA": k.topics.metadata,
        "VIGIL_KAFKA__ACK_TIMEOUT_S": str(k.ack_timeout_s),
        "VIGIL_KAFKA__TOPICS__POLLER_STATE": k.topics.poller_state,
        "VIGIL_KAFKA__TOPICS__VERIFICATIONS": k.topics.verifications,
        "VIGIL_KAFKA__TOPICS__DEPLOYMENTS": k.topics.deployments,
        "VIGIL_KAFKA__TOPICS__STATUS": k.topics.status,
        "VIGIL_DETECTION__CHECKPOINT_INTERVAL_S": str(d.checkpoint_interval_s),
        "VIGIL_DETECTION__WARMUP": str(d.warmup),
        "VIGIL_RULES": orjson.dumps([r.model_dump(mode="json") for r in config.rules]).decode(),
    }
    return env


@dataclass
class Worker:
    config: VigilConfig
    process: subprocess.Popen[bytes] | None = None
    log: list[str] = field(default_factory=list)

    def start(self) -> Worker:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vigil", "worker"], env=config_env(self.config), stdin=subprocess.DEVNULL
        )
        return self

    def stop(self, timeout: float = 15) -> int:
        process, self.process = self.process, None
        if process is None:
            return 0
        process.terminate()
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise


@pytest.fixture
def worker_factory() -> Iterator[Callable[[VigilConfig], Worker]]:
    workers: list[Worker] = []

    def make(config: VigilConfig) -> Worker:
        w = Worker(config).start()
        workers.append(w)
        return w

    yield make
    for w in workers:
        w.stop()


async def read_topic(
    bootstrap: str, topic: str, until: Callable[[list[dict[str, Any]]], bool], timeout: float
) -> list[dict[str, Any]]:
    """Read JSON records of ``topic`` from the start until ``until(records)`` holds or the deadline passes."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        metadata_max_age_ms=500,  # see partitions of a topic created after we subscribed
    )
    await consumer.start()
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while not until(records) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                records.extend(orjson.loads(m.value) for m in messages)
    finally:
        await consumer.stop()
    return records
