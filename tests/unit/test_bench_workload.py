"""The benchmarks' workload has the production shape, and the bare ingest baseline does ingest's work."""

from __future__ import annotations

from collections import Counter

import orjson

from bench import workload
from bench.scale import BareIngest
from engine.config import load_config
from engine.samples import family_of


def test_requests_are_prometheus_shaped_and_repeat_exactly() -> None:
    bodies = workload.requests(3, 2)
    assert bodies == workload.requests(3, 2)  # deterministic: request i is always the same
    series = workload.request_series(3)
    assert len(series) == workload.SERIES_PER_REQUEST
    assert all(len(s.samples) == 1 for s in series)
    services = {dict(labels)["job"] for labels, *_ in workload.pool()}
    families = {(dict(s.labels)["job"], family_of(dict(s.labels)["__name__"])) for s in series}
    assert len(services) == 24
    assert len(families) > 100  # many (service, family) keys in one request, as Prometheus' shards send


def test_a_series_moves_forward_by_one_scrape_per_pass_over_the_pool() -> None:
    size = len(workload.pool())
    per_pass = size // workload.SERIES_PER_REQUEST + 1
    first = {s.labels: s.samples[0] for i in range(per_pass) for s in workload.request_series(i)}
    later = {
        s.labels: s.samples[0] for i in range(per_pass, 2 * per_pass) for s in workload.request_series(i)
    }
    moved = [later[k][0] - first[k][0] for k in first if k in later]
    assert moved
    assert set(moved) <= {workload.SCRAPE_MS, 2 * workload.SCRAPE_MS}


def test_histogram_buckets_are_cumulative_and_end_at_the_count() -> None:
    series = [s for i in range(10) for s in workload.request_series(i)]
    by_group: dict[tuple[object, ...], dict[str, float]] = {}
    for s in series:
        labels = dict(s.labels)
        name = labels["__name__"]
        if not name.startswith("http_request_duration_seconds"):
            continue
        key = (labels["job"], labels["instance"], labels["handler"], s.samples[0][0])
        by_group.setdefault(key, {})[labels.get("le", name.rsplit("_", 1)[1])] = s.samples[0][1]
    complete = [g for g in by_group.values() if len(g) == 10]
    assert complete
    for group in complete:
        buckets = [group[le] for le in ("0.005", "0.025", "0.1", "0.25", "0.5", "1", "2.5", "+Inf")]
        assert buckets == sorted(buckets)
        assert group["+Inf"] == group["count"]


def test_raw_messages_are_one_per_partition_per_request_about_125_series_each() -> None:
    config = load_config(None)
    messages = workload.raw_messages(config, workload.requests(0, 20), 4)
    assert len(messages) == 20 * 4
    sizes = [len(orjson.loads(v)["series"]) for _, v in messages]
    assert sum(sizes) == 20 * workload.SERIES_PER_REQUEST
    assert 100 <= sum(sizes) / len(sizes) <= 150
    assert Counter(p for p, _ in messages) == dict.fromkeys(range(4), 20)


def test_the_bare_baseline_builds_the_records_ingest_builds() -> None:
    config = load_config(None)
    body = workload.requests(5, 1)[0]
    vigil = {p: orjson.loads(v) for p, v in workload.raw_messages(config, [body], 4)}
    bare = {p: orjson.loads(v) for p, v in BareIngest(config, None, 4).records(body).items()}
    assert bare.keys() == vigil.keys()
    for p, doc in vigil.items():
        assert bare[p]["v"] == doc["v"] == 2
        assert bare[p]["kind"] == doc["kind"] == "raw"
        assert [s["labels"] for s in bare[p]["series"]] == [s["labels"] for s in doc["series"]]
        assert [s["samples"] for s in bare[p]["series"]] == [s["samples"] for s in doc["series"]]
