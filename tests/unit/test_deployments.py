"""Deployments: the request, the topic's records (untrusted), Flagger's events, and what the guard does with
them — anomalies soon after a deployment carry it, new instances start from a learned model."""

from __future__ import annotations

import random

import orjson
import pytest
from aiokafka import ConsumerRecord

from connectors.api.deployments import flagger_event
from engine.bank import ModelBank
from engine.config import load_config
from engine.deployments import (
    PER_SERVICE,
    Deployment,
    DeploymentFollower,
    Deployments,
    parse_deployment,
    parse_record,
)
from engine.errors import ConfigError
from engine.guard import SeriesState
from engine.samples import Series

T0 = 1_700_000_000_000
S = 15_000
CONFIG = load_config(None)


def test_a_request_gives_a_deployment_with_an_id_per_service_and_version() -> None:
    d = parse_deployment({"service": "checkout", "version": "v42", "time": "2023-11-14T22:13:20Z"})
    assert (d.service, d.version, d.time_ms, d.source) == ("checkout", "v42", T0, "api")
    again = parse_deployment({"service": "checkout", "version": "v42"}, now_ms=T0 + 5000)
    assert again.id == d.id
    assert again.time_ms == T0 + 5000
    assert parse_deployment({"service": "checkout", "version": "v43"}).id != d.id


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ({"version": "v1"}, "service"),
        ({"service": "", "version": "v1"}, "service"),
        ({"service": "s"}, "version"),
        ({"service": "s", "version": "v" * 257}, "version"),
        ({"service": "s", "version": "v1", "time": "2023-11-14T22:13:20"}, "time"),
        ({"service": "s", "version": "v1", "time": "yesterday"}, "time"),
        ({"service": "s", "version": "v1", "source": "jenkins"}, "source"),
        ({"service": "s", "version": "v1", "colour": "red"}, "colour"),
        ({"service": ["s"], "version": "v1"}, "service"),
        ([1, 2], "deployment"),
        ("checkout", "deployment"),
    ],
)
def test_a_bad_request_is_refused_naming_the_field(doc: object, where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        parse_deployment(doc)


def test_records_round_trip_and_untrusted_ones_are_refused_with_a_reason() -> None:
    d = Deployment("checkout", "v42", T0, "flagger", "shop")
    assert parse_record(d.id.encode(), d.record()) == d
    assert parse_record(None, None) is None  # a tombstone
    doc = orjson.loads(d.record())
    bad = {
        b"not json": "not JSON",
        b"[1]": "not a JSON object",
        orjson.dumps({**doc, "time_ms": "soon"}): "time_ms",
        orjson.dumps({**doc, "time_ms": -1}): "time_ms",
        orjson.dumps({**doc, "service": 7}): "service",
        orjson.dumps({**doc, "version": ""}): "version",
        b'{"x": "' + b"a" * 20_000 + b'"}': "bytes",
    }
    for value, reason in bad.items():
        got = parse_record(d.id.encode(), value)
        assert isinstance(got, str), value[:40]
        assert reason in got, (value[:40], got)
    assert parse_record(b"another key", d.record()) == "the key is not the deployment's id"


def test_the_follower_keeps_good_records_and_counts_bad_ones() -> None:
    known = Deployments()
    follower = DeploymentFollower(CONFIG.kafka, known)
    good = Deployment("checkout", "v42", T0)
    values = [good.record(), b"\xff\xfe", None, orjson.dumps({"service": "x"})]
    records = [
        ConsumerRecord("t", 0, i, 0, 0, good.id.encode(), v, None, 0, 0, []) for i, v in enumerate(values)
    ]
    follower.handle(records)
    assert (follower.records, follower.invalid) == (4, 2)
    assert list(known.of("checkout")) == [good]


def test_the_newest_deployment_before_a_time_within_the_window_is_found() -> None:
    known = Deployments()
    for i in range(PER_SERVICE + 5):
        known.add(Deployment("checkout", f"v{i}", T0 + i * 60_000))
    assert len(known.of("checkout")) == PER_SERVICE  # bounded: the newest kept
    assert known.before("checkout", T0 + 20 * 60_000 + 10_000, 60_000) == known.of("checkout")[-1]
    assert known.before("checkout", T0 + 40 * 60_000, 60_000) is None  # too long after the last one
    assert known.before("search", T0, 10**9) is None
    known.add(Deployment("checkout", "v20", T0))  # a re-report of a version replaces its entry
    assert [d.version for d in known.of("checkout")].count("v20") == 1


def flagger(message: str, **meta: str) -> dict[str, object]:
    return {
        "name": "podinfo",
        "namespace": "test",
        "phase": "Progressing",
        "checksum": "6d9f8c",
        "metadata": {"eventMessage": message, "eventType": "Normal", "timestamp": str(T0), **meta},
    }


def test_flagger_reports_a_deployment_when_it_detects_a_new_revision() -> None:
    d = flagger_event(flagger("New revision detected! Scaling up podinfo.test"))
    assert isinstance(d, Deployment)
    assert (d.service, d.version, d.time_ms, d.source, d.namespace) == (
        "podinfo",
        "6d9f8c",
        T0,
        "flagger",
        "test",
    )
    named = flagger_event(flagger("New revision detected! Scaling up", service="checkout", version="v42"))
    assert isinstance(named, Deployment)
    assert (named.service, named.version) == ("checkout", "v42")
    assert flagger_event(flagger("Starting canary analysis for podinfo.test")) == "not a new revision"
    with pytest.raises(ConfigError, match="timestamp"):
        flagger_event(flagger("New revision detected!", timestamp="yesterday"))
    with pytest.raises(ConfigError, match="name"):
        flagger_event({"namespace": "test", "metadata": {}})
    with pytest.raises(ConfigError, match="metadata"):
        flagger_event({"name": "p", "namespace": "t", "metadata": {"eventMessage": 7}})


def with_detection(**update: object) -> ModelBank:
    config = CONFIG.model_copy(update={"detection": CONFIG.detection.model_copy(update=update)})
    return ModelBank(config)


def noisy(rng: random.Random, n: int, start: int, level: float = 100.0) -> list[tuple[int, float | None]]:
    return [(T0 + (start + i) * S, level + rng.gauss(0, 2)) for i in range(n)]


def opened(events: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in events if e["type"] == "vigil.anomaly.opened"]


def test_an_anomaly_soon_after_a_deployment_carries_it() -> None:
    rng = random.Random(1)
    bank = with_detection(deployment_window_s=1800)
    bank.observe(Series("checkout", "latency_seconds:p99", "pod-a", noisy(rng, 400, 0)))
    deployed = T0 + 400 * S
    bank.deployments.add(Deployment("checkout", "v42", deployed))
    bank.deployments.add(Deployment("search", "v7", deployed))  # another service's does not count
    step = [(T0 + (400 + i) * S, 300.0 + rng.gauss(0, 2)) for i in range(12, 40)]
    events = opened(bank.observe(Series("checkout", "latency_seconds:p99", "pod-a", step)))
    assert events, "the 3x step opened nothing"
    data = events[0]["data"]
    assert isinstance(data, dict)
    started = data["window"]["start_ms"]
    assert data["deployment"] == {
        **Deployment("checkout", "v42", deployed).doc(),
        "after_s": (started - deployed) / 1000,
    }


@pytest.mark.parametrize(("window_s", "deployed_after"), [(1800, 2000), (0, 10)])
def test_an_anomaly_long_after_a_deployment_or_with_the_window_off_carries_none(
    window_s: int, deployed_after: int
) -> None:
    rng = random.Random(2)
    bank = with_detection(deployment_window_s=window_s)
    bank.deployments.add(Deployment("checkout", "v42", T0 - deployed_after * 1000))
    points = noisy(rng, 400, 0) + [(T0 + (400 + i) * S, 300.0) for i in range(30)]
    events = opened(bank.observe(Series("checkout", "latency_seconds:p99", "pod-a", points)))
    assert events
    assert "deployment" not in events[0]["data"]


def test_a_new_instance_starts_from_the_model_of_the_instance_that_learned_most() -> None:
    rng = random.Random(3)
    bank = with_detection(inherit_models=True)
    bank.observe(Series("checkout", "latency_seconds:p99", "pod-a", noisy(rng, 400, 0)))
    bank.observe(Series("checkout", "latency_seconds:p99", "pod-b", noisy(rng, 250, 150)))
    assert bank.inherits == 1  # pod-b started from pod-a's 400 samples: it has learned 650 now
    new = noisy(rng, 5, 400)
    assert not opened(bank.observe(Series("checkout", "latency_seconds:p99", "pod-c", new)))
    unit = next(iter(bank.units.values()))
    guard = unit.guards[("latency_seconds:p99", "pod-c")]
    assert guard.state is SeriesState.NORMAL
    assert bank.inherits == 2
    assert guard.detector.n == unit.guards[("latency_seconds:p99", "pod-b")].detector.n + 5 == 655
    step = [(T0 + (405 + i) * S, 300.0) for i in range(20)]
    assert opened(bank.observe(Series("checkout", "latency_seconds:p99", "pod-c", step))), "a 3x step"


def test_without_inheritance_or_a_learned_instance_a_new_instance_learns_from_nothing() -> None:
    rng = random.Random(4)
    off = with_detection(inherit_models=False)
    off.observe(Series("checkout", "latency_seconds:p99", "pod-a", noisy(rng, 400, 0)))
    off.observe(Series("checkout", "latency_seconds:p99", "pod-c", noisy(rng, 5, 400)))
    on = with_detection(inherit_models=True)
    on.observe(Series("checkout", "latency_seconds:p99", "pod-a", noisy(rng, 50, 0)))  # still learning
    on.observe(Series("checkout", "latency_seconds:p50", "pod-b", noisy(rng, 400, 0)))  # another metric
    on.observe(Series("checkout", "latency_seconds:p99", "pod-c", noisy(rng, 5, 400)))
    for bank in (off, on):
        guard = next(iter(bank.units.values())).guards[("latency_seconds:p99", "pod-c")]
        assert guard.state is SeriesState.LEARNING
        assert bank.inherits == 0


def test_an_instance_unlike_the_learned_one_learns_from_nothing() -> None:
    rng = random.Random(6)
    bank = with_detection(inherit_models=True)
    bank.observe(Series("node", "disk_free_bytes", "node-a", noisy(rng, 400, 0)))
    bank.observe(Series("node", "disk_free_bytes", "node-b", noisy(rng, 5, 400, level=5000.0)))
    guard = next(iter(bank.units.values())).guards[("disk_free_bytes", "node-b")]
    assert guard.state is SeriesState.LEARNING
    assert bank.inherits == 0


def test_an_instance_with_an_open_anomaly_is_not_copied() -> None:
    rng = random.Random(5)
    bank = with_detection(inherit_models=True)
    points = noisy(rng, 400, 0) + [(T0 + (400 + i) * S, 300.0) for i in range(30)]
    assert opened(bank.observe(Series("checkout", "latency_seconds:p99", "pod-a", points)))
    bank.observe(Series("checkout", "latency_seconds:p99", "pod-c", noisy(rng, 5, 430)))
    guard = next(iter(bank.units.values())).guards[("latency_seconds:p99", "pod-c")]
    assert guard.state is SeriesState.LEARNING
    assert bank.inherits == 0
