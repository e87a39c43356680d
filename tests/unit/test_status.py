"""Series status: the worker's coalescing board, the record format and its checks, live series and their
exposition on /metrics (wall-clock idleness with an injected clock)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from connectors.metrics import SeriesCollector, worker_registry
from engine.bank import ModelBank
from engine.config import MetricType, load_config
from engine.errors import BadRecord
from engine.guard import SeriesState
from engine.health import Health
from engine.processor import Processor, Source
from engine.samples import Series, encode_batch, family_of, sample_key
from engine.status import (
    LiveSeries,
    SeriesStatus,
    StatusBoard,
    decode_status,
    encode_status,
    status_key,
)
from engine.worker_stats import WorkerStats

NOW = 1_700_000_000_000
SRC = Source("vigil.samples", 0, 1)


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def worker(clock: Clock) -> tuple[Processor, StatusBoard, ModelBank]:
    bank = ModelBank(load_config(None))

    def guard_of(key: bytes, metric: str, instance: str) -> object:
        unit = bank.units.get(key)
        return None if unit is None else unit.guards.get((metric, instance))

    board = StatusBoard(guard_of, lambda m: bank.rule_for(m).type, clock=clock)
    return Processor(bank, max_future_ms=600_000, status=board), board, bank


def steady(metric: str, instance: str, n: int, start: int = 0, value: float = 100.0) -> Series:
    return Series(
        "checkout",
        metric,
        instance,
        [(NOW + (start + i) * 15_000, value + (start + i) % 3) for i in range(n)],
    )


def test_many_samples_of_a_series_between_flushes_are_one_status_with_the_latest_point() -> None:
    clock = Clock()
    p, board, _ = worker(clock)
    for k in range(5):  # five records of the same two series before a flush
        batch = [steady("http_request_duration_seconds:p99", i, 10, start=k * 10) for i in ("a", "b")]
        p.handle(encode_batch(batch), SRC, now_ms=NOW + 10**8)
    assert len(board.changed) == 2  # one entry per series, whatever the number of samples
    statuses = sorted(board.flush(), key=lambda s: s.instance)
    assert [s.instance for s in statuses] == ["a", "b"]
    for s in statuses:
        assert s.ts_ms == NOW + 49 * 15_000  # the latest sample's own time (metric time)
        assert s.value == 100.0 + 49 % 3
        assert s.wall_ms == int(clock.t * 1000)
        assert s.state is SeriesState.LEARNING  # 50 samples < warmup (200)
        assert s.score == 0.0
        assert s.metric_type is MetricType.LATENCY
    assert board.flush() == []  # nothing changed since


def test_a_series_past_learning_reports_its_undamped_score_band_and_anomalous_state() -> None:
    p, board, bank = worker(Clock())
    metric = "http_errors_total:rate"
    p.handle(encode_batch([steady(metric, "a", 250)]), SRC, now_ms=NOW + 10**8)
    [normal] = board.flush()
    assert normal.state is SeriesState.NORMAL
    assert normal.metric_type is MetricType.ERRORS
    assert normal.expected_low is None  # errors: higher is bad, no lower bound
    assert normal.expected_high is not None
    assert normal.expected_high > 100
    assert 0 <= normal.score < 1
    spike = Series("checkout", metric, "a", [(NOW + 250 * 15_000, 10_000.0)])
    outcome = p.handle(encode_batch([spike]), SRC, now_ms=NOW + 10**8)
    assert len(outcome.events) == 1  # opened
    [anomalous] = board.flush()
    assert anomalous.state is SeriesState.ANOMALOUS
    assert anomalous.value == 10_000.0
    assert anomalous.score >= 1
    still = Series("checkout", metric, "a", [(NOW + 251 * 15_000, 10_000.0)])
    p.handle(encode_batch([still]), SRC, now_ms=NOW + 10**8)
    [later] = board.flush()
    guard = bank.units[sample_key("checkout", family_of(metric))].guards[(metric, "a")]
    assert guard.score <= 0.25  # the guard damps its reported score while open (one page per episode)
    assert later.score >= 1  # the status does not: vigil_anomaly_score >= 1 holds while it is this far out


def test_a_series_whose_key_left_memory_is_not_published_and_a_stale_marker_has_no_value() -> None:
    p, board, bank = worker(Clock())
    p.handle(encode_batch([steady("m", "a", 5), steady("n", "a", 5)]), SRC, now_ms=NOW + 10**8)
    del bank.units[sample_key("checkout", "n")]
    [only] = board.flush()
    assert only.metric == "m"
    p.handle(
        encode_batch([Series("checkout", "m", "a", [(NOW + 10 * 15_000, None)])]), SRC, now_ms=NOW + 10**8
    )
    [stale] = board.flush()
    assert stale.value is None


def test_a_failed_send_is_published_again_unless_a_newer_sample_came() -> None:
    p, board, _ = worker(Clock())
    p.handle(encode_batch([steady("m", "a", 3), steady("m", "b", 3)]), SRC, now_ms=NOW + 10**8)
    first = board.flush()
    board.again(first)
    p.handle(encode_batch([steady("m", "b", 1, start=3, value=7.0)]), SRC, now_ms=NOW + 10**8)
    second = {s.instance: s for s in board.flush()}
    assert set(second) == {"a", "b"}
    assert second["a"] == next(s for s in first if s.instance == "a")
    assert second["b"].value == 7.0


def status(**changes: object) -> SeriesStatus:
    base: dict[str, object] = {
        "service": "checkout",
        "metric": "http_errors_total:rate",
        "instance": "pod-1",
        "metric_type": MetricType.ERRORS,
        "state": SeriesState.NORMAL,
        "score": 0.4,
        "value": 3.5,
        "expected_low": None,
        "expected_high": 9.0,
        "ts_ms": NOW,
        "wall_ms": NOW + 5_000,
    }
    return SeriesStatus(**(base | changes))  # type: ignore[arg-type]


def test_a_status_record_round_trips_and_its_key_is_its_series() -> None:
    s = status()
    raw = encode_status(s)
    doc = orjson.loads(raw)
    assert doc["expected"] == {"low": None, "high": 9.0}
    assert doc["state"] == "normal"
    assert doc["type"] == "errors"
    assert doc["v"] == 1
    assert decode_status(status_key(*s.series), raw, 4096) == s
    no_band = status(expected_high=None)
    assert orjson.loads(encode_status(no_band))["expected"] is None
    assert decode_status(status_key(*s.series), encode_status(no_band), 4096) == no_band


def test_since_ms_round_trips_and_a_record_without_it_or_with_null_reads_as_not_known() -> None:
    s = status(state=SeriesState.LEARNING, since_ms=NOW - 60_000)
    raw = encode_status(s)
    assert orjson.loads(raw)["since_ms"] == NOW - 60_000
    assert decode_status(status_key(*s.series), raw, 4096) == s
    assert orjson.loads(encode_status(status()))["since_ms"] is None
    old = orjson.loads(raw)
    del old["since_ms"]  # written by a worker from before the field
    assert decode_status(status_key(*s.series), orjson.dumps(old), 4096).since_ms is None
    null = orjson.loads(raw) | {"since_ms": None}
    assert decode_status(status_key(*s.series), orjson.dumps(null), 4096).since_ms is None
    assert decode_status(status_key(*s.series), orjson.dumps(old | {"since_ms": 0}), 4096).since_ms == 0


def test_the_worker_publishes_since_when_each_series_is_in_its_state() -> None:
    p, board, bank = worker(Clock())
    warmup = bank.config.detection.warmup
    metric = "http_errors_total:rate"
    p.handle(encode_batch([steady(metric, "a", 10)]), SRC, now_ms=NOW + 10**8)
    [learning] = board.flush()
    assert (learning.state, learning.since_ms) == (SeriesState.LEARNING, NOW)  # its first sample
    p.handle(encode_batch([steady(metric, "a", warmup + 40, start=10)]), SRC, now_ms=NOW + 10**8)
    [normal] = board.flush()
    assert (normal.state, normal.since_ms) == (SeriesState.NORMAL, NOW + (warmup - 1) * 15_000)
    spike = Series("checkout", metric, "a", [(NOW + (warmup + 50) * 15_000, 10_000.0)])
    p.handle(encode_batch([spike]), SRC, now_ms=NOW + 10**8)
    [anomalous] = board.flush()
    assert (anomalous.state, anomalous.since_ms) == (SeriesState.ANOMALOUS, spike.points[0][0])
    stale = Series("checkout", metric, "a", [(NOW + (warmup + 51) * 15_000, None)])
    p.handle(encode_batch([stale]), SRC, now_ms=NOW + 10**8)
    [resolved] = board.flush()
    assert (resolved.state, resolved.since_ms) == (SeriesState.NORMAL, stale.points[0][0])


GOOD = orjson.loads(encode_status(status()))
KEY = status_key("checkout", "http_errors_total:rate", "pod-1")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"v": 2}, "version"),
        ({"state": "sick"}, "state must be one of"),
        ({"state": None}, "state must be one of"),
        ({"type": "bogus"}, "type must be one of"),
        ({"score": -1}, "score"),
        ({"score": True}, "score"),
        ({"score": "1"}, "score"),
        ({"value": "3"}, "value"),
        ({"value": [1.0]}, "value"),
        ({"expected": {"low": 5, "high": 1}}, "above"),
        ({"expected": {"low": 1}}, "expected"),
        ({"expected": [1, 2]}, "expected"),
        ({"ts_ms": -5}, "ts_ms"),
        ({"ts_ms": 1.5}, "ts_ms"),
        ({"wall_ms": "now"}, "wall_ms"),
        ({"service": ""}, "non-empty"),
        ({"service": 7}, "service"),
        ({"instance": "x" * 5000}, "instance"),
        ({"extra": 1}, "unknown ['extra']"),
        ({"since_ms": -1}, "since_ms must be null or a non-negative integer"),
        ({"since_ms": 1.5}, "since_ms must be null or a non-negative integer"),
        ({"since_ms": 1e12}, "since_ms must be null or a non-negative integer"),
        ({"since_ms": "1700000000000"}, "since_ms must be null or a non-negative integer"),
        ({"since_ms": True}, "since_ms must be null or a non-negative integer"),
        ({"since_ms": 1 << 53}, "since_ms must be null or a non-negative integer"),
        ({"since_ms": [NOW]}, "since_ms must be null or a non-negative integer"),
        ({"since_ms": {"ms": NOW}}, "since_ms must be null or a non-negative integer"),
    ],
)
def test_a_broken_status_record_is_refused_with_a_reason(change: dict[str, object], reason: str) -> None:
    doc = GOOD | change
    with pytest.raises(BadRecord, match=reason.replace("[", r"\[").replace("]", r"\]")):
        decode_status(KEY, orjson.dumps(doc), 1 << 20)


def test_missing_fields_wrong_keys_garbage_tombstones_and_oversized_records_are_refused() -> None:
    doc = dict(GOOD)
    del doc["score"]
    with pytest.raises(BadRecord, match="missing \\['score'\\]"):
        decode_status(KEY, orjson.dumps(doc), 4096)
    with pytest.raises(BadRecord, match="key is not its series"):
        decode_status(status_key("checkout", "other", "pod-1"), encode_status(status()), 4096)
    with pytest.raises(BadRecord, match="key is not its series"):
        decode_status(None, encode_status(status()), 4096)
    with pytest.raises(BadRecord, match="must be JSON"):
        decode_status(KEY, b"\xff\xfe{", 4096)
    with pytest.raises(BadRecord, match="needs a value"):
        decode_status(KEY, None, 4096)
    big = orjson.dumps(GOOD | {"metric": "m" * 4000})
    with pytest.raises(BadRecord, match=r"over status\.max_record_bytes"):
        decode_status(KEY, big, 1024)


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=6),
        max_leaves=20,
    ),
    st.binary(max_size=64),
)
def test_whatever_the_bytes_decode_status_answers_or_refuses_with_bad_record(
    doc: object, junk: bytes
) -> None:
    for raw in (orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS) if _dumpable(doc) else b"", junk):
        try:
            decode_status(KEY, raw, 4096)
        except BadRecord as exc:  # the only way to refuse, and always with a reason
            reason = str(exc)
            assert reason


def _dumpable(doc: object) -> bool:
    try:
        orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
    except (orjson.JSONEncodeError, TypeError):
        return False
    return True


def test_a_series_leaves_after_idle_s_of_wall_clock_whatever_its_samples_age() -> None:
    clock = Clock()
    live = LiveSeries(idle_s=900, max_series=100, clock=clock)
    wall = int(clock.t * 1000)
    # Samples from a year ago, published now: live; recent samples published 16 minutes ago: not.
    live.put(status(instance="old-samples", ts_ms=NOW - 365 * 86_400_000, wall_ms=wall))
    live.put(status(instance="seen-long-ago", ts_ms=wall, wall_ms=wall - 16 * 60_000))
    assert [s.instance for s in live.live()] == ["old-samples"]
    clock.t += 899
    assert [s.instance for s in live.live()] == ["old-samples"]
    clock.t += 2
    assert list(live.live()) == []
    assert len(live) == 0


def test_a_wall_clock_ahead_cannot_keep_a_series_alive_and_the_cap_drops_the_oldest() -> None:
    clock = Clock()
    live = LiveSeries(idle_s=60, max_series=2, clock=clock)
    live.put(status(instance="future", wall_ms=int(clock.t * 1000) + 10**12))
    clock.t += 61
    assert list(live.live()) == []
    for name in ("a", "b", "c"):
        live.put(status(instance=name, wall_ms=int(clock.t * 1000)))
    assert sorted(s.instance for s in live.live()) == ["b", "c"]
    live.drop(lambda s: s.instance == "b")
    assert [s.instance for s in live.live()] == ["c"]


def scrape(registry: CollectorRegistry) -> dict[str, float]:
    found = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            found[f"{s.name}{{{labels}}}"] = s.value
    return found


def test_the_exposition_has_score_band_and_health_of_live_series_only() -> None:
    clock = Clock()
    live = LiveSeries(idle_s=900, max_series=100, clock=clock)
    wall = int(clock.t * 1000)
    live.put(status(score=1.7, expected_low=None, expected_high=9.0, wall_ms=wall))
    live.put(
        status(metric="queue", instance="", score=0.2, expected_low=1.0, expected_high=2.0, wall_ms=wall)
    )
    registry = CollectorRegistry(auto_describe=False)
    health = {"checkout": Health.UNHEALTHY}
    registry.register(SeriesCollector(live.live, lambda: health))
    m = scrape(registry)
    errors = 'instance="pod-1",metric="http_errors_total:rate",service="checkout"'
    queue = 'instance="",metric="queue",service="checkout"'
    assert m[f"vigil_anomaly_score{{{errors}}}"] == 1.7
    assert m[f"vigil_expected_upper{{{errors}}}"] == 9.0
    assert f"vigil_expected_lower{{{errors}}}" not in m  # no risk below: no lower bound
    assert m[f"vigil_expected_lower{{{queue}}}"] == 1.0
    assert m[f"vigil_anomaly_score{{{queue}}}"] == 0.2
    for state in Health:
        want = 1.0 if state is Health.UNHEALTHY else 0.0
        assert m[f'vigil_service_health{{service="checkout",state="{state.value}"}}'] == want
    clock.t += 901
    after = scrape(registry)
    assert not [k for k in after if k.startswith(("vigil_anomaly_score", "vigil_expected_"))]


def test_the_worker_registry_carries_its_own_series() -> None:
    clock = Clock()
    live = LiveSeries(idle_s=900, max_series=100, clock=clock)
    live.put(status(wall_ms=int(clock.t * 1000)))
    stats = WorkerStats(
        samples_processed=0, consumer_lag={}, models=0, model_bytes=0, deadletters={}, checkpoint_age_s=0.0
    )
    registry = worker_registry(lambda: stats, live.live)
    m = scrape(registry)
    assert (
        m['vigil_anomaly_score{instance="pod-1",metric="http_errors_total:rate",service="checkout"}'] == 0.4
    )
    assert "vigil_worker_models{}" in m
    assert not [k for k in m if k.startswith("vigil_service_health")]  # workers know no service health
