"""Ingest scales out: two ``vigil ingest`` processes behind a round-robin proxy, fed by a real Prometheus
(4 shards; counters and classic histograms among its own series). Every sample Prometheus stored arrives on
``vigil.samples`` exactly once, in order, and every series of one (service, metric family) — a counter's
label variants, a histogram's buckets, ``_sum`` and ``_count`` — lands in one partition, the one its key
gives, whichever process sent it."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from connectors.broker import EmbeddedBroker
from engine.config import VigilConfig
from engine.samples import family_of, partition_for, sample_key
from tests.conftest import isolated_config
from tests.fixtures.prometheus import assert_complete
from tests.fixtures.round_robin import through_two_ingests

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

assert shutil.which("prometheus"), "needs Debian's `prometheus` package (apt-get install prometheus)"


@pytest.fixture
def config(broker: EmbeddedBroker) -> VigilConfig:
    config = isolated_config(broker)
    topics = config.kafka.topics.model_copy(update={"metadata": f"{config.kafka.topics.samples}.metadata"})
    kafka = config.kafka.model_copy(update={"ack_timeout_s": 5.0, "topics": topics})
    return config.model_copy(update={"kafka": kafka})


async def test_two_ingests_behind_round_robin_deliver_every_sample_once_by_family(
    config: VigilConfig, tmp_path: Path
) -> None:
    delivered = await through_two_ingests(config, tmp_path, seconds=10)
    assert min(delivered.requests_per_ingest) > 10, delivered.requests_per_ingest  # both really took part
    assert_complete(delivered.results, exactly_once=True)
    counters = delivered.remote_storage
    assert (counters["failed_total"], counters["dropped_total"], counters["retried_total"]) == (0, 0, 0)

    families: dict[tuple[str, str], set[int]] = defaultdict(set)
    for key, partitions in delivered.partitions.items():
        labels = dict(key)
        families[(labels["job"], family_of(labels["__name__"]))] |= partitions
    split = {family: ps for family, ps in families.items() if len(ps) != 1}
    assert not split, f"families in several partitions: {split}"
    n = config.kafka.partitions
    assert all(ps == {partition_for(sample_key(*family), n)} for family, ps in families.items())
    # the families that matter most for preparation are there: classic histograms and counters
    names = {dict(key)["__name__"] for key in delivered.partitions}
    assert "prometheus_http_request_duration_seconds_bucket" in names
    assert "prometheus_http_requests_total" in names
    buckets = [k for k in delivered.partitions if dict(k)["__name__"].endswith("_bucket")]
    assert len(buckets) > 20
