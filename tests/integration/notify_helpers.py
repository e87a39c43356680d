"""Producing anomaly events as a worker does, and running notifiers in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiokafka import AIOKafkaProducer

from connectors.notify.service import Notifier
from connectors.notify.stats import NotifyStats
from engine import events
from engine.config import NotifierConfig, VigilConfig
from engine.guard import Transition, TransitionKind
from engine.samples import analysis_key

T0 = 1_700_000_000_000


def anomaly(
    config: VigilConfig,
    service: str,
    metric: str,
    instance: str = "pod-a",
    *,
    kind: TransitionKind = TransitionKind.OPENED,
    start_ms: int = T0,
    score: float = 2.5,
    value: float | None = 900.0,
) -> dict[str, Any]:
    t = Transition(
        kind=kind,
        ts_ms=start_ms + (60_000 if kind is TransitionKind.RESOLVED else 0),
        value=value,
        score=score,
        peak_score=max(score, 3.0),
        expected_low=200.0,
        expected_high=300.0,
        window_start_ms=start_ms,
        window_end_ms=start_ms + 15_000,
    )
    return events.anomaly_event(service, metric, instance, config.rule_for(metric), t)


async def produce(config: VigilConfig, values: list[bytes | dict[str, Any]]) -> None:
    """Events keyed as a worker keys them (by service and metric: one series' events stay in order)."""
    producer = AIOKafkaProducer(bootstrap_servers=config.kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for value in values:
            if isinstance(value, bytes):
                await producer.send_and_wait(config.kafka.topics.verdicts, value)
                continue
            key = analysis_key(value["data"]["service"], value["data"]["metric"])
            await producer.send_and_wait(config.kafka.topics.verdicts, events.encode(value), key=key)
    finally:
        await producer.stop()


def with_notifiers(config: VigilConfig, *notifiers: dict[str, Any]) -> VigilConfig:
    built = tuple(NotifierConfig(**n) for n in notifiers)
    return config.model_copy(update={"notify": built})


@contextlib.asynccontextmanager
async def running(config: VigilConfig, stats: NotifyStats | None = None) -> AsyncIterator[list[Notifier]]:
    """Every notifier of ``config`` running; stopped (as SIGTERM would) on exit."""
    stats = stats or NotifyStats()
    stop = asyncio.Event()
    notifiers = [Notifier(config, n, stats) for n in config.notify]
    tasks = [asyncio.create_task(n.run(stop)) for n in notifiers]
    try:
        yield notifiers
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def joined(notifier: Notifier, timeout: float = 60) -> None:
    """Until the notifier's consumer has its partitions (a join takes seconds on the embedded broker)."""
    await until(lambda: notifier._consumer is not None and bool(notifier._consumer.assignment()), timeout)


async def until(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(interval)


def count(stats: NotifyStats, name: str, **labels: str) -> float:
    value = stats.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value
