"""The worker's model bank: preparation per sample key, plain checkpoints, restarts in mid-stream."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

import orjson
import pytest

from engine.bank import ModelBank, part_key
from engine.config import load_config
from engine.preparation import Count, Preparer
from engine.processor import Processor, Source
from engine.raw import MetricKind, RawSeries, WriteRequest
from engine.records import encode_raw
from engine.samples import Series, partition_for, sample_key

T0 = 1_700_000_000_000
S = 15_000
NOW = T0 + 3_600_000
SRC = Source("vigil.samples", 0, 1)
BOUNDS = ("0.1", "0.5", "1", "+Inf")
STALE = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
CONFIG = load_config(None)


def series(name: str, ts: int, value: float, instance: str = "a:1", **extra: str) -> RawSeries:
    labels = {"__name__": name, "job": "api", "instance": instance, **extra}
    return RawSeries(tuple(sorted(labels.items())), [(ts, value)])


def histogram(ts: int, counts: list[float], instance: str = "a:1") -> list[RawSeries]:
    out = [series("rpc_seconds_bucket", ts, c, instance, le=le) for le, c in zip(BOUNDS, counts, strict=True)]
    return [
        *out,
        series("rpc_seconds_count", ts, counts[-1], instance),
        series("rpc_seconds_sum", ts, 1.0, instance),
    ]


def counter(ts: int, value: float) -> list[RawSeries]:
    return [series("http_requests_total", ts, value, code="500")]


def run(processor: Processor, *records: list[RawSeries]) -> None:
    for r in records:
        outcome = processor.handle(encode_raw(r), SRC, now_ms=NOW)
        assert outcome.deadletters == []


def learned(bank: ModelBank) -> dict[tuple[str, str], int]:
    return {k: g.detector.n for unit in bank.units.values() for k, g in unit.guards.items()}


def restart(bank: ModelBank) -> ModelBank:
    """A new bank that sees only what the old one checkpointed (as a fresh worker reading the table)."""
    table = dict(bank.checkpoints(lambda key: True))
    return ModelBank(CONFIG, load=table.get)


STREAM: list[list[RawSeries]] = [
    histogram(T0, [5, 10, 20, 30]) + counter(T0, 100),
    histogram(T0 + S, [7, 16, 29, 40])[:2] + counter(T0 + S, 130),  # half a histogram group
    histogram(T0 + S, [7, 16, 29, 40])[2:],  # the other half
    histogram(T0 + 2 * S, [9, 20, 35, 50]) + counter(T0 + 2 * S, 145),
    histogram(T0 + 3 * S, [9, 20, 35, 50]),
]


def prepared_in_process() -> dict[tuple[str, str], list[tuple[int, float | None]]]:
    p = Preparer(CONFIG.labels, CONFIG.receiver.quantiles)
    out: dict[tuple[str, str], list[tuple[int, float | None]]] = {}
    for r in STREAM:
        for s in p.prepare(WriteRequest(r)).series:
            out.setdefault((s.metric, s.instance), []).extend(s.points)
    return out


def test_raw_records_are_prepared_per_sample_key_then_learned() -> None:
    bank = ModelBank(CONFIG)
    run(Processor(bank, 600_000), *STREAM)
    assert set(bank.units) == {sample_key("api", "rpc_seconds"), sample_key("api", "http_requests")}
    expected = prepared_in_process()
    assert learned(bank) == {k: len(v) for k, v in expected.items()}
    assert expected[("rpc_seconds:p50", "a:1")]  # the histogram was computed


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_a_restart_anywhere_in_the_stream_loses_nothing(cut: int) -> None:
    """Restarted between two halves of a histogram group, or two counter samples: the same models."""
    whole = ModelBank(CONFIG)
    run(Processor(whole, 600_000), *STREAM)
    bank = ModelBank(CONFIG)
    run(Processor(bank, 600_000), *STREAM[:cut])
    again = restart(bank)
    run(Processor(again, 600_000), *STREAM[cut:])
    for key in whole.units:
        again.unit(key)  # restored lazily: the keys the rest of the stream did not touch too
    assert learned(again) == learned(whole)
    for key, unit in whole.units.items():
        for k, guard in unit.guards.items():
            other = again.units[key].guards[k]
            assert other.detector.level == pytest.approx(guard.detector.level)


def test_duplicates_are_skipped_and_counted_not_learned_twice() -> None:
    bank = ModelBank(CONFIG)
    processor = Processor(bank, 600_000)
    run(processor, *STREAM)
    before = learned(bank)
    run(processor, STREAM[-1], counter(T0, 100))  # re-sent: the last timestamps again, then an older one
    assert learned(bank) == before
    assert processor.counts[Count.DUPLICATE] == len(STREAM[-1])
    assert processor.counts[Count.OUT_OF_ORDER] == 1
    again = restart(bank)  # the watermarks are in the checkpoint too
    run(Processor(again, 600_000), *STREAM)
    assert learned(again) == before


def test_checkpoints_are_plain_json_with_version_river_and_config() -> None:
    bank = ModelBank(CONFIG)
    run(Processor(bank, 600_000), *STREAM[:2])
    for _key, blob in bank.checkpoints(lambda key: True):
        assert blob.startswith(b"VGLSTATE")
        size = int.from_bytes(blob[8:12], "big")
        header = orjson.loads(blob[12 : 12 + size])
        assert header.keys() >= {"format", "river", "config", "id", "parts"}
        body = orjson.loads(blob[12 + size :])
        assert set(body) == {"preparation", "guards"}
        assert b"\x80\x05" not in blob  # no pickle protocol 5 stream


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.setattr("engine.bank.RIVER_VERSION", "0.1.0"),
        lambda m: m.setattr("engine.bank.CHECKPOINT_FORMAT", 1),
    ],
    ids=["river", "format"],
)
def test_a_checkpoint_of_another_version_is_refused_and_the_key_starts_fresh(
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[pytest.MonkeyPatch], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    bank = ModelBank(CONFIG)
    run(Processor(bank, 600_000), *STREAM[:2])
    change(monkeypatch)
    table = dict(bank.checkpoints(lambda key: True))
    monkeypatch.undo()
    fresh = ModelBank(CONFIG, load=table.get)
    run(Processor(fresh, 600_000), STREAM[3])
    assert fresh.refused_checkpoints == 2
    assert "refused" in caplog.text
    assert "River" in caplog.text


def test_a_checkpoint_of_another_detection_config_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    bank = ModelBank(CONFIG)
    run(Processor(bank, 600_000), *STREAM[:2])
    table = dict(bank.checkpoints(lambda key: True))
    other = CONFIG.model_copy(update={"detection": CONFIG.detection.model_copy(update={"half_life": 50.0})})
    fresh = ModelBank(other, load=table.get)
    assert fresh.config_hash != bank.config_hash
    run(Processor(fresh, 600_000), STREAM[3])
    assert fresh.refused_checkpoints == 2
    assert f"config {bank.config_hash}" in caplog.text


@pytest.mark.parametrize(
    "blob",
    [b"garbage", b"VGLSTATE\x00\x00\x00\x02{}", b"VGLSTATE" + b"\xff" * 20, b"\x80\x05pickled"],
)
def test_corrupt_checkpoints_are_refused(blob: bytes) -> None:
    bank = ModelBank(CONFIG, load=lambda k: blob)
    bank.observe(Series("s", "m", "i", [(T0, 1.0)]))
    assert bank.refused_checkpoints == 1
    assert learned(bank) == {("m", "i"): 1}


def test_a_damaged_body_is_refused_not_half_loaded() -> None:
    bank = ModelBank(CONFIG)
    run(Processor(bank, 600_000), *STREAM[:2])
    table = {k: v.replace(b'"last_v":', b'"last_v":"x",') for k, v in bank.checkpoints(lambda key: True)}
    fresh = ModelBank(CONFIG, load=table.get)
    run(Processor(fresh, 600_000), STREAM[3])
    assert fresh.refused_checkpoints >= 1


def test_a_large_checkpoint_is_split_into_parts_in_the_same_partition() -> None:
    bank = ModelBank(CONFIG, part_bytes=4096)
    instances = [f"pod-{i}" for i in range(60)]
    for step in range(3):
        record = [
            s for i in instances for s in histogram(T0 + step * S, [step, 2 * step, 3 * step, 4 * step], i)
        ]
        run(Processor(bank, 600_000), record)
    table = dict(bank.checkpoints(lambda key: True))
    key = sample_key("api", "rpc_seconds")
    assert len(table) > 3
    assert all(len(v) < 4096 + 200 for v in table.values())
    assert {partition_for(k, CONFIG.kafka.partitions) for k in table} == {partition_for(key, 4)}
    again = ModelBank(CONFIG, load=table.get, part_bytes=4096)
    run(Processor(again, 600_000), [s for i in instances for s in histogram(T0 + 3 * S, [9, 9, 9, 9], i)])
    assert again.refused_checkpoints == 0
    assert learned(again).keys() == learned(bank).keys()
    # T0+3S had no traffic: no quantiles, but the rates learned one more point each, from restored values
    key7 = ("rpc_seconds_count:rate", "pod-7")
    assert learned(again)[key7] == learned(bank)[key7] + 1
    # a smaller checkpoint later empties the parts it no longer needs
    again.forget(lambda k: False)
    small = ModelBank(CONFIG, load=table.get, part_bytes=4096)
    small.observe(Series("api", "rpc_seconds:p50", "pod-0", [(T0 + 9 * S, 1.0)]))
    small.units[key].preparer = None
    small.units[key].guards = {}
    rewritten = dict(small.checkpoints(lambda k: True))
    assert rewritten[part_key(key, 1, CONFIG.kafka.partitions)] == b""


def test_metadata_decides_types_for_every_key_and_a_retype_is_counted() -> None:
    bank = ModelBank(CONFIG)
    processor = Processor(bank, 600_000)
    run(processor, [series("queue_depth", T0, 5.0)], [series("queue_depth", T0 + S, 20.0)])
    assert ("queue_depth", "a:1") in learned(bank)  # a gauge by its name
    bank.types.learn({"queue_depth": MetricKind.COUNTER})
    run(processor, [series("queue_depth", T0 + 2 * S, 35.0)], [series("queue_depth", T0 + 3 * S, 50.0)])
    assert learned(bank)[("queue_depth:rate", "a:1")] == 1
    assert processor.counts[Count.RETYPED] == 1
    bank.types.learn({"queue_depth": MetricKind.GAUGE})
    assert bank.types.retyped == 1


def test_stale_markers_end_prepared_series() -> None:
    bank = ModelBank(CONFIG)
    run(Processor(bank, 600_000), counter(T0, 1), counter(T0 + S, 16), counter(T0 + 2 * S, STALE))
    assert math.isfinite(
        bank.units[sample_key("api", "http_requests")]
        .guards[('http_requests_total:rate{code="500"}', "a:1")]
        .detector.level
    )


def test_the_bank_remembers_each_metrics_rule_and_bounds_what_it_remembers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bank = ModelBank(CONFIG)
    metrics = ["http_requests_total:rate", "http_request_duration_seconds:p99", "queue_depth", "errors_ratio"]
    for metric in metrics * 3:
        assert bank.rule_for(metric) == CONFIG.rule_for(metric)
    monkeypatch.setattr("engine.bank.RULE_CACHE", 3)
    bank = ModelBank(CONFIG)
    for metric in metrics * 2:
        assert bank.rule_for(metric) == CONFIG.rule_for(metric)
    assert len(bank._rules) <= 3
