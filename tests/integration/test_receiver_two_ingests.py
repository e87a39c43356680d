"""Ingest scales out: two ``vigil ingest`` processes behind a round-robin proxy, fed by a real Prometheus
(4 shards; counters and classic histograms among its own series). Every sample Prometheus stored arrives on
``vigil.samples`` exactly once, in order, and every series of one (service, metric family) — a counter's
label variants, a histogram's buckets, ``_sum`` and ``_count`` — lands in one partition, the one its key
gives, whichever process sent it. Prepared by the worker's code, those records give the same rates and
quantiles as the same Prometheus data sent through a single ingest, with no incomplete histogram group —
where a preparation per ingest process (the way before) loses groups and changes values."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from connectors.broker import EmbeddedBroker
from engine.config import VigilConfig
from engine.preparation import Count
from engine.raw import MetricKind
from engine.samples import family_of, partition_for, sample_key
from tests.conftest import isolated_config, read_topic
from tests.fixtures.prepared import PreparedSeries, as_the_worker, per_ingest, types_from
from tests.fixtures.prometheus import assert_complete
from tests.fixtures.round_robin import through_two_ingests

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

assert shutil.which("prometheus"), "needs Debian's `prometheus` package (apt-get install prometheus)"


HISTOGRAM = "prometheus_http_request_duration_seconds"
COUNTER = "prometheus_http_requests"  # family of prometheus_http_requests_total


def ingest_config(broker: EmbeddedBroker) -> VigilConfig:
    config = isolated_config(broker)
    kafka = config.kafka.model_copy(update={"ack_timeout_s": 5.0})
    return config.model_copy(update={"kafka": kafka})


@pytest.fixture
def config(broker: EmbeddedBroker) -> VigilConfig:
    return ingest_config(broker)


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


@pytest.fixture
def single(broker: EmbeddedBroker) -> VigilConfig:
    """Topics of their own for the single ingest."""
    return ingest_config(broker)


async def test_series_prepared_from_two_ingests_equal_those_from_one_ingest(
    config: VigilConfig, single: VigilConfig, tmp_path: Path
) -> None:
    two, one = config, single
    delivered = await through_two_ingests(two, tmp_path, seconds=12, single=one)
    alone = delivered.single
    assert alone is not None
    assert min(delivered.requests_per_ingest) > 10, delivered.requests_per_ingest
    assert_complete(delivered.results, exactly_once=True)
    assert_complete(alone.results, exactly_once=True)

    # Metric types as every worker reads them from the metadata topic (keyed by the family name as sent,
    # looked up by the series name as is or without its suffix): read until every series name of
    # Prometheus' own metrics has one (its synthetic up / scrape_* series have none).
    names = {dict(k)["__name__"] for k in delivered.points}
    typed = {n for n in names if n != "up" and not n.startswith("scrape_")}

    def untyped(families: set[object]) -> set[str]:
        return {n for n in typed if n not in families and family_of(n) not in families}

    async def types(config: VigilConfig) -> dict[str, MetricKind]:
        metadata = await read_topic(
            config.kafka.bootstrap_servers,
            config.kafka.topics.metadata,
            lambda r: not untyped({d.get("family") for d in r}),
            timeout=30,
        )
        found = types_from(orjson.dumps(d) for d in metadata)
        assert not untyped(set(found)), sorted(untyped(set(found)))
        return found

    # Both arrangements publish the same types, also for go_memstats_alloc_bytes (a gauge) beside
    # go_memstats_alloc_bytes_total (a counter): metadata is keyed by the family name as sent.
    known, known_alone = await types(two), await types(one)
    assert known == known_alone
    via_two = as_the_worker(two, delivered.records, known)
    via_one = as_the_worker(one, alone.records, known)
    for run in (via_two, via_one):
        lost = {c: run.count(c) for c in (Count.INCOMPLETE_GROUP, Count.LATE, Count.OUT_OF_ORDER)}
        assert lost == dict.fromkeys(lost, 0), run.counts
        assert run.count(Count.DUPLICATE) == 0, run.counts

    # Both arrangements hold every stored sample from their first timestamp to t_end; past the first
    # few scrapes every rate and quantile has its predecessor in both.
    t_from = max(delivered.first_ms, alone.first_ms) + 3_000
    want = via_one.between(t_from, delivered.t_end_ms)
    got = via_two.between(t_from, delivered.t_end_ms)
    assert got == want, _difference(got, want)

    # what was compared: every rate, and the quantiles of the histograms with traffic
    quantiles = [k for k in want if k[1].startswith(f"{HISTOGRAM}:p")]
    rates = [k for k in want if ":rate" in k[1]]
    assert len(quantiles) >= 3, sorted(want)[:20]  # p50, p90, p99 of the /metrics handler
    assert len(rates) > 50, sorted(want)[:20]
    assert all(len(want[k]) >= 5 for k in quantiles), {k: len(want[k]) for k in quantiles}  # 1 per scrape
    assert any(k[1].startswith(f"{COUNTER}_total:rate") for k in rates)

    # The comparison catches preparation that depends on which process got what: a preparer per ingest
    # (the old way) sees a part of the buckets of a timestamp and a part of a counter's samples.
    old = per_ingest(two, delivered.requests)
    assert old.count(Count.INCOMPLETE_GROUP) > 0, old.counts
    before = old.between(t_from, delivered.t_end_ms)
    changed = [k for k in quantiles + rates if before.get(k) != want[k]]
    assert any(k in changed for k in quantiles), "per-ingest quantiles equal the single ingest's"
    assert any(k in changed for k in rates), "per-ingest rates equal the single ingest's"


def _difference(got: PreparedSeries, want: PreparedSeries) -> str:
    only_got, only_want = got.keys() - want.keys(), want.keys() - got.keys()
    differ = [k for k in got.keys() & want.keys() if got[k] != want[k]]
    example = (differ[0], got[differ[0]], want[differ[0]]) if differ else None
    return (
        f"{len(only_got)} series only from two ingests (e.g. {sorted(only_got)[:2]}), {len(only_want)} only "
        f"from one (e.g. {sorted(only_want)[:2]}), {len(differ)} with other points, e.g. {example}"
    )
