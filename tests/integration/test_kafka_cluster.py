"""Three Apache Kafka brokers (replication factor 3, ``min.insync.replicas=2``) under ingest.

A sender writes remote-write requests to the receiver without pause, resending what was answered 503 as
Prometheus does. Kill -9 one broker: every request still gets 204 (the partitions it led move to the
others, within ``kafka.ack_timeout_s``). Kill a second: only one replica is left, below the minimum, so
ingest answers 503; bring both back and it answers 204 again. Everything ever acknowledged is on the topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from connectors.receiver import Receiver
from engine.config import VigilConfig
from tests.conftest import isolated_config
from tests.fixtures.remote_write import V1_CONTENT_TYPE, Series, labels_of, v1_body
from tests.integration.samples_topic import SamplesCollector
from tests.kafka.node import KafkaCluster

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.asyncio, pytest.mark.timeout(420)]

KEY = ("svc", "load", "i1")
PER_REQUEST = 5


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    cluster = KafkaCluster(
        tmp_path_factory.mktemp("cluster"), 3, ("min.insync.replicas=2", "default.replication.factor=3")
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@dataclass
class Sender:
    """Sends requests of ``PER_REQUEST`` new samples each, one at a time; a 503 is resent, as is."""

    url: str
    acked: set[int] = field(default_factory=set)
    codes: list[tuple[float, int, float]] = field(default_factory=list)  # (answered at, code, seconds taken)
    _next: int = 0

    def since(self, start: float) -> Counter[int]:
        return Counter(code for at, code, _ in self.codes if at >= start)

    def slowest(self, start: float, end: float) -> float:
        return max((took for at, _, took in self.codes if start <= at <= end), default=0.0)

    async def run(self, session: aiohttp.ClientSession) -> None:
        base = int(time.time() * 1000) - 3_600_000
        while True:
            stamps = [base + 1000 * (self._next + i) for i in range(PER_REQUEST)]
            series = Series(labels_of(name="load", job="svc", instance="i1"), [(t, 1.0) for t in stamps])
            body = v1_body([series])
            headers = {"Content-Type": V1_CONTENT_TYPE, "Content-Encoding": "snappy"}
            while True:
                sent = time.monotonic()
                try:
                    async with session.post(f"{self.url}/api/v1/write", data=body, headers=headers) as r:
                        code = r.status
                except aiohttp.ClientError:
                    code = 0
                answered = time.monotonic()
                self.codes.append((answered, code, answered - sent))
                if code == 204:
                    self.acked.update(stamps)
                    break
                assert code in (503, 0), f"ingest answered {code}"
                await asyncio.sleep(0.2)
            self._next += PER_REQUEST
            await asyncio.sleep(0.02)


async def until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)


async def test_one_broker_down_is_invisible_two_down_is_503_then_recovery(
    cluster: KafkaCluster, tmp_path: Path
) -> None:
    config: VigilConfig = await asyncio.to_thread(isolated_config, cluster, replication=3)
    config = config.model_copy(update={"receiver": config.receiver.model_copy(update={"port": 0})})
    receiver = Receiver(config)
    await receiver.start()
    task: asyncio.Task[None] | None = None
    first, second = cluster.nodes[0], cluster.nodes[1]
    try:
        await receiver.wait_connected(60)
        async with aiohttp.ClientSession() as session:
            sender = Sender(receiver.url)
            task = asyncio.create_task(sender.run(session))
            await until(lambda: len(sender.acked) >= 100, 60, "acknowledged samples before the kill")

            first.kill()
            killed = time.monotonic()
            acked_before = len(sender.acked)
            await until(lambda: len(sender.acked) >= acked_before + 200, 90, "204s with one broker down")
            one_down, one_down_slowest = sender.since(killed), sender.slowest(killed, time.monotonic())
            assert set(one_down) == {204}, (
                f"with one broker of three down ingest answered {one_down} "
                f"(slowest answer {one_down_slowest:.1f}s, ack_timeout_s {config.kafka.ack_timeout_s:g})"
            )

            second.kill()
            killed_two = time.monotonic()
            await until(lambda: sender.since(killed_two)[503] >= 1, 90, "503 with two brokers down")

            await asyncio.to_thread(cluster.start, [first, second])
            back = time.monotonic()
            acked_back = len(sender.acked)
            await until(lambda: len(sender.acked) >= acked_back + 100, 120, "204s after the brokers returned")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            task = None
        print(
            f"3 brokers: one down {dict(one_down)}, slowest {one_down_slowest:.1f}s; "
            f"two down {dict(sender.since(killed_two))} "
            f"(back after {back - killed_two:.1f}s); {len(sender.acked)} samples acknowledged"
        )
        async with SamplesCollector(config, config.kafka.partitions) as collector:
            await until(lambda: sender.acked <= collector.timestamps(KEY), 60, "every acknowledged sample")
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await receiver.stop()
        for node in (first, second):
            if not node.alive:
                await asyncio.to_thread(node.start)
