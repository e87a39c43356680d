"""A real worker prepares raw v2 records: the same prepared series as in-process, duplicates not learned
twice, and preparation state that survives a restart through the checkpoint table."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from connectors.broker import EmbeddedBroker
from engine.bank import ModelBank
from engine.config import VigilConfig
from engine.processor import Processor, Source
from engine.raw import RawSeries
from engine.records import encode_raw
from engine.samples import family_of, partition_for, sample_key
from tests.conftest import Worker, isolated_config
from tests.integration.test_pipeline import _consuming_all

pytestmark = pytest.mark.integration

T0 = int(time.time() * 1000) // 15_000 * 15_000 - 3_600_000
S = 15_000
BOUNDS = ("0.1", "0.5", "1", "+Inf")
STALE = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
Models = dict[tuple[str, str], tuple[int, float]]  # (metric, instance) → (samples learned, level)


def series(name: str, ts: int, value: float, instance: str = "a:1", **extra: str) -> RawSeries:
    labels = {"__name__": name, "job": "api", "instance": instance, **extra}
    return RawSeries(tuple(sorted(labels.items())), [(ts, value)])


def histogram(ts: int, counts: list[float], instance: str = "a:1") -> list[RawSeries]:
    out = [series("rpc_seconds_bucket", ts, c, instance, le=le) for le, c in zip(BOUNDS, counts, strict=True)]
    total = counts[-1]
    return [
        *out,
        series("rpc_seconds_count", ts, total, instance),
        series("rpc_seconds_sum", ts, total / 4, instance),
    ]


def counter(ts: int, value: float, code: str = "500") -> list[RawSeries]:
    return [series("http_requests_total", ts, value, code=code)]


def send(config: VigilConfig, records: list[list[RawSeries]]) -> None:
    """Each record split by sample key, as ingest writes them; keyed and partitioned by that key."""

    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=config.kafka.bootstrap_servers, acks="all")
        await producer.start()
        try:
            for record in records:
                by_key: dict[bytes, list[RawSeries]] = {}
                for s in record:
                    by_key.setdefault(sample_key("api", family_of(s.name)), []).append(s)
                for key, group in by_key.items():
                    partition = partition_for(key, config.kafka.partitions)
                    await producer.send_and_wait(
                        config.kafka.topics.samples, encode_raw(group), key=key, partition=partition
                    )
        finally:
            await producer.stop()

    asyncio.run(go())


def models_of(bank: ModelBank, keys: list[bytes] | None = None) -> Models:
    """The models of ``keys`` (restored from ``bank.load`` when needed), by default those the bank holds."""
    return {
        k: (g.detector.n, g.detector.level)
        for key in (list(bank.units) if keys is None else keys)
        for k, g in bank.unit(key).guards.items()
    }


def in_process(config: VigilConfig, records: list[list[RawSeries]]) -> Models:
    """What the worker must end with: the same records through the bank in this process."""
    bank = ModelBank(config)
    processor = Processor(bank, max_future_ms=600_000)
    for record in records:
        by_key: dict[bytes, list[RawSeries]] = {}
        for s in record:
            by_key.setdefault(sample_key("api", family_of(s.name)), []).append(s)
        for group in by_key.values():
            assert processor.handle(encode_raw(group), Source("t", 0, 0)).deadletters == []
    return models_of(bank)


async def _table(config: VigilConfig, done: Callable[[dict[bytes, bytes]], bool], timeout: float) -> None:
    """Read the models table's changelog until what it holds satisfies ``done``."""
    consumer = AIOKafkaConsumer(
        f"{config.kafka.app_id}-models-changelog",
        bootstrap_servers=config.kafka.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        metadata_max_age_ms=500,
    )
    await consumer.start()
    table: dict[bytes, bytes] = {}
    deadline = time.monotonic() + timeout
    try:
        while not done(table) and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=300)).values():
                table.update((m.key, m.value) for m in messages if m.key is not None and m.value)
    finally:
        await consumer.stop()
    assert done(table), "the state never reached the checkpoint table"


def half_checkpointed(config: VigilConfig) -> Callable[[dict[bytes, bytes]], bool]:
    """Whether the table holds the counter's value 100 and the waiting half of the T0+S histogram."""

    def done(table: dict[bytes, bytes]) -> bool:
        bank = ModelBank(config, load=table.get)
        counters, histograms = (
            bank.unit(sample_key("api", family)).preparer for family in ("http_requests", "rpc_seconds")
        )
        if counters is None or histograms is None:
            return False
        values = [t[5].get("last_v") for t in counters.state()["tracks"]]
        waiting = [g for _, g in histograms.state()["groups"] if g["sent"]]
        return values == [100.0] and len(waiting) == 1

    return done


async def _checkpointed(config: VigilConfig, done: Callable[[Models], bool], timeout: float) -> Models:
    """Read the models table's changelog until the models it holds satisfy ``done``."""
    consumer = AIOKafkaConsumer(
        f"{config.kafka.app_id}-models-changelog",
        bootstrap_servers=config.kafka.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        metadata_max_age_ms=500,
    )
    await consumer.start()
    table: dict[bytes, bytes] = {}
    models: Models = {}
    deadline = time.monotonic() + timeout
    try:
        while not done(models) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            if batch:
                for messages in batch.values():
                    table.update((m.key, m.value) for m in messages if m.key is not None and m.value)
                heads = [k for k in table if b"\x1e" not in k]  # not the parts of a large checkpoint
                models = models_of(ModelBank(config, load=table.get), heads)
    finally:
        await consumer.stop()
    return models


def checkpointed(config: VigilConfig, done: Callable[[Models], bool], timeout: float = 90) -> Models:
    return asyncio.run(_checkpointed(config, done, timeout))


STREAM: list[list[RawSeries]] = [
    histogram(T0, [5, 10, 20, 30]) + counter(T0, 100) + counter(T0, 7, code="200"),
    histogram(T0 + S, [7, 16, 29, 40])[:3] + counter(T0 + S, 130),  # a histogram group split over records
    histogram(T0 + S, [7, 16, 29, 40])[3:] + counter(T0 + S, 8, code="200"),
    histogram(T0 + 2 * S, [9, 20, 35, 50])
    + counter(T0 + 2 * S, 160)
    + counter(T0 + 2 * S, STALE, code="200"),
    histogram(T0 + 3 * S, [12, 26, 44, 62]) + counter(T0 + 3 * S, 175),
    histogram(T0 + 4 * S, [12, 27, 45, 70]) + counter(T0 + 4 * S, 205),
]


def test_the_worker_prepares_raw_records_as_in_process_and_skips_duplicates(
    broker: EmbeddedBroker, worker_factory: Callable[..., Worker]
) -> None:
    config = isolated_config(broker, checkpoint_interval_s=0.2)
    expected = in_process(config, STREAM)
    assert expected[("rpc_seconds:p50", "a:1")][0] == 4  # a quantile for each of the 4 intervals
    assert expected[('http_requests_total:rate{code="500"}', "a:1")][0] == 4
    worker_factory(config)
    # duplicates re-sent after the stream: a record again, and a counter sample again
    send(config, [*STREAM, STREAM[2], STREAM[4], counter(T0 + 4 * S, 205)])
    got = checkpointed(config, lambda m: m == expected and m.keys() == expected.keys())
    assert got.keys() == expected.keys()
    for k, (n, level) in expected.items():
        assert got[k][0] == n, f"{k}: learned {got[k][0]} points, in-process {n} (duplicates learned?)"
        assert got[k][1] == pytest.approx(level)


def test_preparation_state_survives_a_restart_between_two_halves(
    broker: EmbeddedBroker, worker_factory: Callable[..., Worker]
) -> None:
    """Restarted between two counter samples and between the two halves of a histogram group: the rate
    and the quantiles after the restart are computed from the state in the checkpoint."""
    config = isolated_config(broker, checkpoint_interval_s=0.2)
    first_half = [histogram(T0, [5, 10, 20, 30]) + counter(T0, 100), histogram(T0 + S, [7, 16, 29, 40])[:2]]
    second_half = [histogram(T0 + S, [7, 16, 29, 40])[2:] + counter(T0 + S, 130)]
    first = worker_factory(config)
    send(config, first_half)
    # the first half gives no prepared series yet: wait for its preparation state in the checkpoint
    asyncio.run(_table(config, half_checkpointed(config), timeout=90))
    assert first.stop() == 0
    rate = ('http_requests_total:rate{code="500"}', "a:1")
    worker_factory(config)
    asyncio.run(
        _consuming_all(broker.bootstrap_servers, config.kafka.topics, config.kafka.partitions, timeout=90)
    )
    send(config, second_half)
    got = checkpointed(config, lambda m: rate in m and ("rpc_seconds:p50", "a:1") in m)
    assert got[rate] == (1, pytest.approx(2.0))  # (130 - 100) / 15 s: the 100 came from the checkpoint
    # increments 2, 6, 9, 10: p50 = 0.1 + 0.4 * 3/4 — the first half of T0+S came from the checkpoint
    assert got[("rpc_seconds:p50", "a:1")] == (1, pytest.approx(0.4))
    assert got[("rpc_seconds:p90", "a:1")] == (1, pytest.approx(1.0))


def test_types_from_the_metadata_topic_decide_how_a_series_is_read(
    broker: EmbeddedBroker, worker_factory: Callable[..., Worker]
) -> None:
    """``queue_depth`` reads as a gauge by its name; the metadata topic says it is a counter."""
    config = isolated_config(broker, checkpoint_interval_s=0.2)

    async def publish() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=config.kafka.bootstrap_servers, acks="all")
        await producer.start()
        try:
            value = b'{"family": "queue_depth", "type": "counter"}'
            await producer.send_and_wait(config.kafka.topics.metadata, value, key=b"queue_depth")
        finally:
            await producer.stop()

    asyncio.run(publish())  # before the worker starts: it reads the topic from the beginning
    worker_factory(config)
    asyncio.run(
        _consuming_all(broker.bootstrap_servers, config.kafka.topics, config.kafka.partitions, timeout=90)
    )
    send(config, [[series("queue_depth", T0 + i * S, 10.0 * i)] for i in range(4)])
    got = checkpointed(config, lambda m: ("queue_depth:rate", "a:1") in m)
    assert got[("queue_depth:rate", "a:1")] == (3, pytest.approx(10 / 15))
    assert ("queue_depth", "a:1") not in got
