"""What the receiver puts on Kafka: raw series (wire format v2, ``"kind": "raw"``), one message per partition
per request, keyed by (service, metric family), metadata on the metadata topic; and what it drops and counts.
Checked on the embedded broker's topics, record by record."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, TopicPartition

from connectors.broker import EmbeddedBroker
from connectors.kafka import ensure_topics
from connectors.receiver import Answer, RecordBuilder
from engine.config import VigilConfig
from engine.raw import MetricKind, NativeHistogram
from engine.samples import family_of, partition_for, sample_key
from tests.fixtures.remote_write import STALE_NAN, Series, labels_of, v1_body, v2_body
from tests.integration.test_receiver_http import V1, V2, Harness, limited, started

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

Record = tuple[int, bytes | None, dict[str, Any]]  # partition, key, value


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def records_of(
    config: VigilConfig, topic: str, count: int, timeout: float = 15.0, settle: float = 0.5
) -> list[Record]:
    """Every record of ``topic`` once ``count`` are there (and ``settle`` seconds showed no more)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=config.kafka.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # fetch the cluster's metadata
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        assert partitions, f"no topic {topic}"
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        await consumer.seek_to_beginning()
        out: list[Record] = []
        deadline = time.monotonic() + timeout
        quiet_until = None
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            for tp, messages in batch.items():
                out.extend((tp.partition, m.key, orjson.loads(m.value or b"null")) for m in messages)
            now = time.monotonic()
            if batch:
                quiet_until = None
            if len(out) >= count:
                quiet_until = quiet_until or now + settle
                if now >= quiet_until:
                    return out
            assert now < deadline, f"{topic}: {len(out)} records, expected {count}: {out}"
    finally:
        await consumer.stop()


@pytest.fixture
def config(broker: EmbeddedBroker) -> VigilConfig:
    return limited(broker)


@pytest_asyncio.fixture
async def harness(config: VigilConfig) -> AsyncIterator[Harness]:
    async for h in started(config):
        yield h


def key_of(job: str, name: str) -> bytes:
    return sample_key(job, family_of(name))


async def test_raw_series_one_message_per_partition_keyed_by_service_and_family(harness: Harness) -> None:
    t = now_ms()
    series = [
        Series(
            labels_of(name="http_requests_total", job="checkout", code="200"), [(t - 1000, 5.0), (t, 7.0)]
        ),
        Series(labels_of(name="http_requests_total", job="checkout", code="500"), [(t, 1.0)]),
        *(
            Series(labels_of(name=f"latency_seconds_{part}", job="checkout", **extra), [(t, v)])
            for part, extra, v in (
                ("bucket", {"le": "0.1"}, 3.0),
                ("bucket", {"le": "+Inf"}, 4.0),
                ("sum", {}, 0.5),
                ("count", {}, 4.0),
            )
        ),
        *(
            Series(labels_of(name=f"gauge_{i}", job=f"svc{i}", instance="a:1"), [(t, float(i))])
            for i in range(12)
        ),
    ]
    status, text, _ = await harness.post(v1_body(series), V1)
    assert status == 204, text
    expected: dict[int, list[dict[str, Any]]] = {}
    for s in series:
        labels = dict(s.labels)
        p = partition_for(key_of(labels["job"], labels["__name__"]), harness.config.kafka.partitions)
        expected.setdefault(p, []).append({"labels": labels, "samples": [list(x) for x in s.samples]})
    records = await records_of(harness.config, harness.config.kafka.topics.samples, len(expected))
    assert len(records) == len(expected)  # one message per partition
    for partition, key, doc in records:
        assert doc == {"v": 2, "kind": "raw", "series": expected[partition]}  # in request order
        keys = {key_of(s["labels"]["job"], s["labels"]["__name__"]) for s in doc["series"]}
        assert key == (keys.pop() if len(keys) == 1 else None)
    # the histogram's buckets, sum and count and every label variant of the counter share a partition
    by_family = {
        (s["labels"]["job"], family_of(s["labels"]["__name__"])): p
        for p, _, doc in records
        for s in doc["series"]
    }
    assert len(by_family) == 2 + 12
    assert harness.ingest.stats.samples_written == 19


async def test_stale_marker_is_null_other_nonfinite_values_are_dropped_and_counted(harness: Harness) -> None:
    t = now_ms()
    series = [
        Series(
            labels_of(name="up", job="app"),
            [
                (t - 4000, 1.0),
                (t - 3000, float("nan")),
                (t - 2000, float("inf")),
                (t - 1000, -float("inf")),
                (t, STALE_NAN),
            ],
        ),
        Series(labels_of(name="only_nan", job="app"), [(t, float("nan"))]),
    ]
    status, text, _ = await harness.post(v1_body(series), V1)
    assert status == 204, text
    records = await records_of(harness.config, harness.config.kafka.topics.samples, 1)
    assert [s for _, _, doc in records for s in doc["series"]] == [
        {"labels": {"__name__": "up", "job": "app"}, "samples": [[t - 4000, 1.0], [t, None]]}
    ]
    stats = harness.ingest.stats
    assert stats.samples_rejected["nonfinite"] == 4
    assert (stats.samples_received, stats.samples_written) == (6, 2)


async def test_series_without_a_service_are_dropped_and_counted(harness: Harness) -> None:
    t = now_ms()
    series = [
        Series(labels_of(name="up", instance="a:1"), [(t, 1.0), (t + 1, 1.0)]),
        Series(labels_of(name="up", job="", instance="b:1"), [(t, 1.0)]),  # empty value: absent
        Series(labels_of(name="up", job="app"), [(t, 1.0)]),
    ]
    status, text, _ = await harness.post(v1_body(series), V1)
    assert status == 204, text
    records = await records_of(harness.config, harness.config.kafka.topics.samples, 1)
    assert [s["labels"] for _, _, doc in records for s in doc["series"]] == [{"__name__": "up", "job": "app"}]
    stats = harness.ingest.stats
    assert (stats.series_dropped["no_service"], stats.samples_rejected["no_service"]) == (2, 3)
    async with harness.client.get("/metrics") as response:
        text = await response.text()
    assert 'vigil_receiver_series_dropped_total{reason="no_service"} 2.0' in text
    assert 'vigil_receiver_samples_rejected_total{reason="no_service"} 3.0' in text


async def test_default_service_keys_series_without_the_label(config: VigilConfig) -> None:
    config = config.model_copy(
        update={"labels": config.labels.model_copy(update={"default_service": "fallback"})}
    )
    async for h in started(config):
        status, text, _ = await h.post(v1_body([Series(labels_of(name="up"), [(now_ms(), 1.0)])]), V1)
        assert status == 204, text
        (record,) = await records_of(config, config.kafka.topics.samples, 1)
        assert record[:2] == (partition_for(sample_key("fallback", "up"), 4), sample_key("fallback", "up"))
        assert record[2]["series"][0]["labels"] == {"__name__": "up"}


async def test_v2_metadata_created_timestamp_and_native_histograms_travel_raw(harness: Harness) -> None:
    t = now_ms()
    histogram = NativeHistogram(
        timestamp_ms=t - 1000,
        schema=3,
        zero_threshold=1e-128,
        zero_count=1.0,
        count=12.0,
        sum=3.5,
        positive_spans=((0, 2),),
        positive_counts=(5.0, 6.0),
    )
    stale = NativeHistogram(
        timestamp_ms=t, schema=3, zero_threshold=1e-128, zero_count=0, count=0, sum=STALE_NAN
    )
    broken = NativeHistogram(
        timestamp_ms=t + 1, schema=3, zero_threshold=1e-128, zero_count=0, count=float("nan"), sum=1.0
    )
    series = [
        Series(
            labels_of(name="requests_total", job="api"),
            [(t, 10.0)],
            kind=MetricKind.COUNTER,
            created_ms=t - 60_000,
        ),
        Series(
            labels_of(name="latency_seconds", job="api"),
            histograms=[histogram, stale, broken],
            kind=MetricKind.HISTOGRAM,
            float_histograms=True,
        ),
    ]
    status, text, headers = await harness.post(v2_body(series), V2)
    assert status == 204, text
    assert headers["X-Prometheus-Remote-Write-Histograms-Written"] == "2"
    records = await records_of(harness.config, harness.config.kafka.topics.samples, 1)
    got = {s["labels"]["__name__"]: s for _, _, doc in records for s in doc["series"]}
    assert got["requests_total"] == {
        "labels": {"__name__": "requests_total", "job": "api"},
        "samples": [[t, 10.0]],
        "type": "counter",
        "created_ms": t - 60_000,
    }
    fields = {
        "schema": 3,
        "zero_threshold": 1e-128,
        "negative_spans": [],
        "negative_counts": [],
        "reset_hint": 0,
    }
    assert got["latency_seconds"] == {
        "labels": {"__name__": "latency_seconds", "job": "api"},
        "samples": [],
        "type": "histogram",
        "histograms": [
            fields
            | {
                "timestamp_ms": t - 1000,
                "zero_count": 1.0,
                "count": 12.0,
                "sum": 3.5,
                "positive_spans": [[0, 2]],
                "positive_counts": [5.0, 6.0],
            },
            fields
            | {
                "timestamp_ms": t,
                "zero_count": 0.0,
                "count": 0.0,
                "sum": None,
                "positive_spans": [],
                "positive_counts": [],
            },
        ],
    }
    assert harness.ingest.stats.histograms_rejected["nonfinite"] == 1


async def test_v1_metadata_goes_to_the_metadata_topic_once_until_it_changes(harness: Harness) -> None:
    topic = harness.config.kafka.topics.metadata
    # Keyed by the family name as sent: a gauge and a counter whose names differ only by _total (as
    # Go's go_memstats_alloc_bytes and go_memstats_alloc_bytes_total do) keep their own types.
    metadata = {
        "http_requests_total": MetricKind.COUNTER,
        "latency_seconds": MetricKind.HISTOGRAM,
        "alloc_bytes": MetricKind.GAUGE,
        "alloc_bytes_total": MetricKind.COUNTER,
    }
    for _ in range(2):
        status, text, _ = await harness.post(v1_body([], metadata), V1)
        assert status == 204, text
    first = await records_of(harness.config, topic, 4)
    assert sorted((key, doc) for _, key, doc in first) == [
        (b"alloc_bytes", {"family": "alloc_bytes", "type": "gauge"}),
        (b"alloc_bytes_total", {"family": "alloc_bytes_total", "type": "counter"}),
        (b"http_requests_total", {"family": "http_requests_total", "type": "counter"}),
        (b"latency_seconds", {"family": "latency_seconds", "type": "histogram"}),
    ]
    assert harness.ingest.stats.metadata_produced == 4  # the unchanged repeat produced nothing
    status, text, _ = await harness.post(v1_body([], {"latency_seconds": MetricKind.SUMMARY}), V1)
    assert status == 204, text
    records = await records_of(harness.config, topic, 5)
    assert [doc for _, key, doc in records if key == b"latency_seconds"] == [
        {"family": "latency_seconds", "type": "histogram"},
        {"family": "latency_seconds", "type": "summary"},
    ]
    assert not await records_of(harness.config, harness.config.kafka.topics.samples, 0)


async def test_partition_count_comes_from_the_topic_not_the_config(config: VigilConfig) -> None:
    topics = config.kafka.topics.model_copy(update={"samples": config.kafka.topics.samples + ".three"})
    config = config.model_copy(update={"kafka": config.kafka.model_copy(update={"topics": topics})})
    await ensure_topics(config.kafka.bootstrap_servers, [topics.samples], 3)
    assert config.kafka.partitions == 4
    async for h in started(config):
        names = [f"metric_{i}" for i in range(30)]
        series = [Series(labels_of(name=n, job="app"), [(now_ms(), 1.0)]) for n in names]
        status, text, _ = await h.post(v1_body(series), V1)
        assert status == 204, text
        records = await records_of(config, topics.samples, 3)
        placed = {s["labels"]["__name__"]: p for p, _, doc in records for s in doc["series"]}
        assert placed == {n: partition_for(key_of("app", n), 3) for n in names}


async def test_a_bug_answers_500_with_an_error_id_and_is_counted(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(RecordBuilder, "build", broken)
    with caplog.at_level(logging.ERROR):
        status, text, headers = await harness.post(
            v1_body([Series(labels_of(name="up", job="a"), [(now_ms(), 1.0)])]), V1
        )
    assert status == 500
    assert "Retry-After" not in headers
    (error_id,) = re.findall(r"internal error ([0-9a-f]{12})", text)
    assert error_id in caplog.text
    assert "RuntimeError: a bug" in caplog.text
    assert (harness.ingest.stats.internal_errors, harness.ingest.stats.requests[500]) == (1, 1)
    monkeypatch.undo()
    await harness.sentinel()  # the receiver goes on, and the failed request left nothing on the topic


async def test_status_table_follows_prometheus_retry_semantics() -> None:
    codes = {a.code: a.value.resend for a in Answer}
    assert codes == {204: False, 400: False, 401: False, 413: False, 415: False, 500: True, 503: True}
    assert all(Answer.of(code).code == code for code in codes)
    with pytest.raises(ValueError, match="no answer"):
        Answer.of(418)


async def test_concurrent_requests_each_get_their_own_records(harness: Harness) -> None:
    t = now_ms()
    bodies = [
        v1_body([Series(labels_of(name=f"g{j}", job=f"shard{i}"), [(t, float(i))]) for j in range(20)])
        for i in range(4)
    ]
    results = await asyncio.gather(*(harness.post(body, V1) for body in bodies))
    assert [status for status, _, _ in results] == [204] * 4
    expected = {(f"shard{i}", f"g{j}") for i in range(4) for j in range(20)}
    records = await records_of(harness.config, harness.config.kafka.topics.samples, 4)
    got = [(s["labels"]["job"], s["labels"]["__name__"]) for _, _, doc in records for s in doc["series"]]
    assert sorted(got) == sorted(expected)
