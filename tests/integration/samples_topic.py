"""What is on a samples topic, whatever the record version: v1, v2 prepared and v2 raw (engine/samples.py).

Samples are counted per (service, name, instance): for prepared series the prepared metric, for raw series
the ``__name__`` with its other labels as a selector — so a gauge without other labels (``up``) has the same
key in every version, and a test comparing gauges with what Prometheus stored holds whichever format
ingest writes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from engine.config import VigilConfig

Key = tuple[str, str, str]


def samples_of(
    value: bytes, service_label: str = "job", instance_label: str = "instance"
) -> Iterator[tuple[Key, int, float | None]]:
    """Every (key, timestamp ms, value) of one record of the samples topic."""
    doc: dict[str, Any] = orjson.loads(value)
    version, kind = doc.get("v"), doc.get("kind", "prepared")
    assert version in (1, 2), f"unknown record version {version!r}"
    for s in doc["series"]:
        if version == 2 and kind == "raw":
            labels: dict[str, str] = dict(s["labels"])
            name = labels.pop("__name__")
            service, instance = labels.pop(service_label, ""), labels.pop(instance_label, "")
            selector = ",".join(f'{n}="{v}"' for n, v in sorted(labels.items()))
            key = (service, f"{name}{{{selector}}}" if selector else name, instance)
            for t, v in s.get("samples", ()):
                yield key, t, v
        else:
            assert kind == "prepared", f"unknown record kind {kind!r}"
            key = (s["service"], s["metric"], s["instance"])
            for t, v in s["points"]:
                yield key, t, v


class SamplesCollector:
    """Reads every record of the samples topic in the background (surviving broker restarts)."""

    def __init__(self, config: VigilConfig, partitions: int) -> None:
        self.config = config
        self.partitions = partitions
        self.points: dict[Key, list[tuple[int, float | None]]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SamplesCollector:
        k = self.config.kafka
        consumer = AIOKafkaConsumer(
            bootstrap_servers=k.bootstrap_servers, enable_auto_commit=False, metadata_max_age_ms=1000
        )
        await consumer.start()
        consumer.assign([TopicPartition(k.topics.samples, p) for p in range(self.partitions)])
        await consumer.seek_to_beginning()
        labels = self.config.labels

        async def run() -> None:
            try:
                while True:
                    for messages in (await consumer.getmany(timeout_ms=200)).values():
                        for m in messages:
                            for key, t, v in samples_of(m.value or b"{}", labels.service, labels.instance):
                                self.points[key].append((t, v))
            finally:
                await consumer.stop()

        self._task = asyncio.create_task(run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def last(self, key: Key) -> int:
        got = self.points.get(key)
        return max(t for t, _ in got) if got else 0

    def timestamps(self, key: Key) -> set[int]:
        return {t for t, _ in self.points.get(key, ())}
