"""The model bank's bounded memory: idle eviction, the per-worker cap, bytes measured, mismatches."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Any

import orjson
import pytest

from engine.bank import ModelBank, config_hash
from engine.commits import Checkpointer, Ledger
from engine.config import VigilConfig, load_config
from engine.processor import Processor
from engine.records import encode_raw
from engine.samples import Series, sample_key
from engine.worker_stats import DeadLetterReason, reason_of
from tests.unit.test_bank import NOW, SRC, STREAM, T0, run, series

CONFIG = load_config(None)
S = 15_000


def configured(**detection: Any) -> VigilConfig:
    return CONFIG.model_copy(update={"detection": CONFIG.detection.model_copy(update=detection)})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Table:
    """The ``models`` table and the changelog: what is stored, what is written, what is committed."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.log: list[tuple[str, object]] = []

    def store(self, key: bytes, blob: bytes) -> None:
        self.data[key] = blob

    async def write(self, key: bytes, blob: bytes) -> None:
        self.log.append(("checkpoint", key))

    async def commit(self, offsets: Mapping[int, int]) -> bool:
        self.log.append(("commit", dict(offsets)))
        return True


def point(bank: ModelBank, service: str, ts: int, value: float = 1.0) -> list[dict[str, Any]]:
    return bank.observe(Series(service, "m", "i", [(ts, value)]))


def key_of(service: str) -> bytes:
    return sample_key(service, "m")


def step(bank: ModelBank, table: Table) -> None:
    ledger = Ledger()
    for p in range(CONFIG.kafka.partitions):
        ledger.position(p, 0)
        ledger.done(p, 5)  # every partition has something to commit
    checkpointer = Checkpointer(
        bank, ledger, CONFIG.kafka.partitions, store=table.store, write=table.write, commit=table.commit
    )
    asyncio.run(checkpointer.run())


def test_settings_of_memory_and_mismatch_do_not_change_the_config_hash() -> None:
    """Checkpoints taken before stay valid when only these limits change."""
    other = configured(idle_evict_s=5.0, max_keys=3, on_checkpoint_mismatch="error")
    assert config_hash(other) == config_hash(CONFIG)


def test_an_idle_key_leaves_memory_only_after_its_checkpoint_and_comes_back_from_it() -> None:
    clock, table = Clock(), Table()
    bank = ModelBank(configured(idle_evict_s=600.0), load=table.data.get, clock=clock)
    for i in range(50):
        point(bank, "idle", T0 + i * S, 1.0 + (i % 3))
    clock.now += 601
    point(bank, "busy", T0, 1.0)
    assert bank.evict_idle() == 0  # "idle" is not checkpointed yet: it stays
    assert key_of("idle") in bank.units
    step(bank, table)  # checkpoints both, then evicts the idle one
    assert set(bank.units) == {key_of("busy")}
    assert bank.evictions == {"idle": 1, "cap": 0}
    assert key_of("idle") not in bank.used
    assert key_of("idle") not in bank.sizes
    point(bank, "idle", T0 + 50 * S, 2.0)  # its samples come back: restored, learning goes on
    assert model_of(bank, "idle")[0] == 51


def test_a_key_used_again_before_the_idle_time_stays() -> None:
    clock, table = Clock(), Table()
    bank = ModelBank(configured(idle_evict_s=600.0), load=table.data.get, clock=clock)
    point(bank, "a", T0)
    clock.now += 599
    point(bank, "a", T0 + S)
    clock.now += 599
    step(bank, table)
    assert key_of("a") in bank.units
    clock.now += 2
    assert bank.evict_idle() == 1


def test_the_cap_evicts_the_least_recently_used_and_keeps_unwritten_state_pending() -> None:
    clock, table = Clock(), Table()
    bank = ModelBank(configured(max_keys=2), load=table.data.get, clock=clock)
    for name in ("a", "b", "c"):
        point(bank, name, T0)
    point(bank, "b", T0 + S)  # b is used again: a is the oldest
    point(bank, "d", T0)
    assert set(bank.units) == {key_of("b"), key_of("d")}
    assert bank.evictions["cap"] == 2
    assert set(bank.pending) == {key_of("a"), key_of("c")}  # never checkpointed: their state waits here
    step(bank, table)
    assert bank.pending == {}
    assert {key_of(n) for n in "abcd"} <= set(table.data)  # the pending ones were written with the rest
    commit = [i for i, (what, _) in enumerate(table.log) if what == "commit"]
    assert commit
    assert commit[0] == len(table.log) - 1


def test_a_key_evicted_before_its_checkpoint_is_restored_from_the_pending_state() -> None:
    table = Table()
    bank = ModelBank(configured(max_keys=1), load=table.data.get)
    for i in range(10):
        point(bank, "a", T0 + i * S)
    point(bank, "b", T0)  # a leaves memory, unwritten
    point(bank, "a", T0 + 10 * S)  # and comes back: b leaves, a is restored from the pending entry
    assert bank.units[key_of("a")].guards[("m", "i")].detector.n == 11
    assert key_of("a") in bank.dirty  # it is written by the next step
    assert set(bank.pending) == {key_of("b")}


@pytest.mark.parametrize("cap", [1, 2, 5])
def test_a_capped_bank_judges_exactly_as_an_unbounded_one(cap: int) -> None:
    """Random access over 8 series with checkpoint steps now and then: the same events, the same models."""
    rng = random.Random(cap)
    whole = ModelBank(CONFIG)
    table = Table()
    clock = Clock()
    capped = ModelBank(configured(max_keys=cap, idle_evict_s=50.0), load=table.data.get, clock=clock)
    ts = dict.fromkeys("abcdefgh", T0)
    got: list[dict[str, Any]] = []
    expected: list[dict[str, Any]] = []
    for i in range(3000):
        name = rng.choice("abcdefgh")
        ts[name] += S
        value = 10.0 + rng.gauss(0, 1) + (40.0 if i > 2500 and name == "c" else 0.0)
        expected += point(whole, name, ts[name], value)
        got += point(capped, name, ts[name], value)
        clock.now += 1
        if i % 97 == 0:
            step(capped, table)
        assert len(capped.units) <= cap
    assert got == expected
    assert any(e["type"].endswith("opened") for e in expected)  # the comparison includes an incident
    for name in "abcdefgh":
        capped.unit(key_of(name))
    assert len(capped.units) == cap
    step(capped, table)
    fresh = ModelBank(CONFIG, load=table.data.get)
    for name in "abcdefgh":
        fresh.unit(key_of(name))
        assert model_of(fresh, name) == model_of(whole, name)


def model_of(bank: ModelBank, name: str) -> tuple[int, float]:
    detector = bank.units[key_of(name)].guards[("m", "i")].detector
    return detector.n, detector.level


def test_bytes_per_series_are_measured_from_checkpoints_and_forgotten_with_the_key() -> None:
    clock, table = Clock(), Table()
    bank = ModelBank(configured(idle_evict_s=10.0), load=table.data.get, clock=clock)
    rng = random.Random(1)
    for i in range(10_000):
        point(bank, "a", T0 + i * S, rng.gauss(100, 5))
    point(bank, "b", T0)
    assert bank.state_bytes == 0  # nothing measured before a checkpoint
    blobs = dict(bank.checkpoints(lambda key: True))
    body_a = blobs[key_of("a")]
    assert bank.sizes[key_of("a")] < len(body_a) < bank.sizes[key_of("a")] + 200  # the body; header aside
    assert bank.state_bytes == bank.sizes[key_of("a")] + bank.sizes[key_of("b")]
    assert bank.sizes[key_of("a")] < 20_000  # the target per series (default detector)
    table.data.update(blobs)
    clock.now += 11
    assert bank.evict_idle() == 2
    assert bank.state_bytes == 0


def mismatched_table(monkeypatch: pytest.MonkeyPatch) -> dict[bytes, bytes]:
    bank = ModelBank(CONFIG)
    run(Processor(bank, 600_000), *STREAM[:2])
    monkeypatch.setattr("engine.bank.RIVER_VERSION", "0.1.0")
    table = dict(bank.checkpoints(lambda key: True))
    monkeypatch.undo()
    return table


def test_on_mismatch_error_keeps_the_checkpoint_and_dead_letters_the_samples_naming_the_mismatch(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    table = mismatched_table(monkeypatch)
    before = dict(table)
    bank = ModelBank(configured(on_checkpoint_mismatch="error"), load=table.get)
    processor = Processor(bank, 600_000)
    record = STREAM[3] + [series("fresh_total", T0, 1.0)]  # a key without a checkpoint in the same record
    outcome = processor.handle(encode_raw(record), SRC, now_ms=NOW)
    reasons = [orjson.loads(d)["reason"] for d in outcome.deadletters]
    assert len(reasons) == 2  # the two keys that have a checkpoint
    for reason in reasons:
        assert reason.startswith("checkpoint mismatch: ")
        assert "format 3" in reason
        assert "River 0.1.0" in reason
        assert f"config {bank.config_hash}" in reason
    assert {reason_of(d) for d in outcome.deadletters} == {DeadLetterReason.CHECKPOINT_MISMATCH}
    assert set(bank.units) == {sample_key("api", "fresh")}  # the others hold nothing that could overwrite
    assert list(bank.checkpoints(lambda key: key in before)) == []
    assert bank.mismatches == 2
    assert bank.refused_checkpoints == 0
    assert "kept" in caplog.text
    again = processor.handle(encode_raw(STREAM[3]), SRC, now_ms=NOW)  # still refused, record after record
    assert len(again.deadletters) == 2
    assert table == before


def test_on_mismatch_fresh_is_the_default_and_starts_anew(monkeypatch: pytest.MonkeyPatch) -> None:
    table = mismatched_table(monkeypatch)
    assert CONFIG.detection.on_checkpoint_mismatch == "fresh"
    bank = ModelBank(CONFIG, load=table.get)
    run(Processor(bank, 600_000), STREAM[3])
    assert bank.refused_checkpoints == 2
    assert bank.mismatches == 0


def test_on_mismatch_error_still_starts_a_damaged_checkpoint_fresh() -> None:
    """Damage is not a deployment mismatch: it costs the key its state, never its samples."""
    bank = ModelBank(configured(on_checkpoint_mismatch="error"), load=lambda k: b"VGLSTATE garbage")
    assert point(bank, "a", T0) == []
    assert bank.refused_checkpoints == 1


def test_checkpoints_are_encoded_off_the_event_loop() -> None:
    """Another coroutine runs while thousands of keys are being encoded (heartbeats, sends, scrapes)."""
    bank = ModelBank(CONFIG)
    for k in range(3000):
        bank.observe(Series(f"s{k}", "m", "i", [(T0 + i * S, float(i % 7)) for i in range(20)]))
    encoding = False
    seen_during = 0
    encode = bank.checkpoints

    def checkpoints(select: Any) -> Any:
        nonlocal encoding
        encoding = True
        try:
            yield from encode(select)
        finally:
            encoding = False

    bank.checkpoints = checkpoints  # type: ignore[method-assign]

    async def main() -> None:
        nonlocal seen_during
        table = Table()
        ledger = Ledger()
        for p in range(CONFIG.kafka.partitions):
            ledger.position(p, 0)
        checkpointer = Checkpointer(
            bank, ledger, CONFIG.kafka.partitions, store=table.store, write=table.write, commit=table.commit
        )
        task = asyncio.create_task(checkpointer.run())
        while not task.done():
            seen_during += encoding
            await asyncio.sleep(0.001)
        await task
        assert len(table.data) == 3000

    asyncio.run(main())
    assert seen_during >= 1
