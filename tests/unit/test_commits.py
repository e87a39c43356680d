"""Commits follow checkpoints (engine.commits), without Kafka: the order of snapshot, write and commit."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from engine.bank import ModelBank
from engine.commits import GAP_CONFIRMATIONS, Checkpointer, Ledger, Step
from engine.config import load_config
from engine.samples import Series, analysis_key, partition_for

PARTITIONS = 4
T0 = 1_700_000_000_000


def metrics_by_partition() -> dict[int, str]:
    """One metric of service "svc" per partition."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < PARTITIONS:
        found.setdefault(partition_for(analysis_key("svc", f"m{i}"), PARTITIONS), f"m{i}")
        i += 1
    return found


METRICS = metrics_by_partition()
KEYS = {p: analysis_key("svc", m) for p, m in METRICS.items()}


def learn(bank: ModelBank, partition: int, ts: int) -> None:
    bank.observe(Series("svc", METRICS[partition], "", [(ts, 1.0)]))


class Kafka:
    """Where checkpoints and commits go: records what arrives, in order; writes wait for ``acked``."""

    def __init__(self) -> None:
        self.table: dict[bytes, bytes] = {}
        self.log: list[tuple[str, object]] = []
        self.acked = asyncio.Event()
        self.acked.set()

    def store(self, key: bytes, blob: bytes) -> None:
        self.table[key] = blob

    async def write(self, key: bytes, blob: bytes) -> None:
        await self.acked.wait()
        self.log.append(("checkpoint", key))

    async def commit(self, offsets: Mapping[int, int]) -> bool:
        self.log.append(("commit", dict(offsets)))
        return True


def checkpointer(bank: ModelBank, ledger: Ledger, kafka: Kafka) -> Checkpointer:
    return Checkpointer(bank, ledger, PARTITIONS, store=kafka.store, write=kafka.write, commit=kafka.commit)


def test_the_ledger_processes_in_order_skips_what_it_saw_and_reports_gaps() -> None:
    ledger = Ledger()
    assert ledger.step(1, 7) is Step.UNKNOWN  # not positioned yet: recovery has not sought
    ledger.position(1, 7)
    ledger.position(1, 99)  # a later seek does not move a partition that is positioned
    assert ledger.step(1, 8) is Step.GAP
    assert ledger.step(1, 7) is Step.PROCESS
    ledger.start(1)
    ledger.done(1, 7)
    assert ledger.step(1, 7) is Step.SEEN
    assert ledger.step(1, 8) is Step.PROCESS
    assert (ledger.gaps, ledger.duplicates) == (1, 1)


def test_a_gap_confirmed_again_and_again_after_seeking_back_is_real() -> None:
    ledger = Ledger()
    ledger.position(0, 10)
    steps = [ledger.step(0, 12) for _ in range(GAP_CONFIRMATIONS)]
    assert steps[:-1] == [Step.GAP] * (GAP_CONFIRMATIONS - 1)
    assert steps[-1] is Step.PROCESS
    # a gap that moves (records arriving from a stale fetch) is never taken as real
    ledger.position(1, 10)
    assert {ledger.step(1, 11 + i) for i in range(3 * GAP_CONFIRMATIONS)} == {Step.GAP}


def test_commit_is_the_snapshot_and_comes_after_every_checkpoint_is_acknowledged() -> None:
    async def go() -> None:
        bank, ledger, kafka = ModelBank(load_config(None)), Ledger(), Kafka()
        step = checkpointer(bank, ledger, kafka)
        for p in range(PARTITIONS):
            ledger.position(p, 100)
        for p in (0, 1):
            learn(bank, p, T0)
            ledger.start(p)
            ledger.done(p, 100)
        kafka.acked.clear()
        run = asyncio.create_task(step.run())
        for _ in range(20):  # let the step run as far as it can
            await asyncio.sleep(0)
        assert kafka.log == []  # no commit while a checkpoint is unacknowledged
        # the agent goes on meanwhile; what it learns now is not part of this step
        async with step.lock:
            learn(bank, 2, T0)
            ledger.start(2)
            ledger.done(2, 100)
        kafka.acked.set()
        committed = await run
        assert committed == {0: 101, 1: 101}
        kinds = [kind for kind, _ in kafka.log]
        assert kinds == ["checkpoint", "checkpoint", "commit"]
        assert {key for kind, key in kafka.log if kind == "checkpoint"} == {KEYS[0], KEYS[1]}
        assert bank.read(KEYS[0], kafka.table[KEYS[0]]).guards[(METRICS[0], "")].watermark == T0
        # the next step covers partition 2 only: 0 and 1 are unchanged and committed already
        assert await step.run() == {2: 101}

    asyncio.run(go())


def test_a_partition_in_the_middle_of_a_record_is_neither_checkpointed_nor_committed() -> None:
    async def go() -> None:
        bank, ledger, kafka = ModelBank(load_config(None)), Ledger(), Kafka()
        step = checkpointer(bank, ledger, kafka)
        ledger.position(0, 5)
        ledger.position(1, 5)
        learn(bank, 0, T0)
        learn(bank, 1, T0)
        ledger.start(0)  # its verdicts never got acknowledged: the agent was cancelled
        ledger.start(1)
        ledger.done(1, 5)
        assert await step.run(release=True) == {1: 6}
        assert set(kafka.table) == {KEYS[1]}
        assert bank.units == {}
        assert ledger.next == {}

    asyncio.run(go())


def test_revoke_checkpoints_and_forgets_only_the_revoked_partitions() -> None:
    async def go() -> None:
        bank, ledger, kafka = ModelBank(load_config(None)), Ledger(), Kafka()
        step = checkpointer(bank, ledger, kafka)
        for p in range(PARTITIONS):
            ledger.position(p, 0)
            learn(bank, p, T0)
            ledger.start(p)
            ledger.done(p, 0)
        assert await step.run({1, 3}, release=True) == {1: 1, 3: 1}
        assert set(kafka.table) == {KEYS[1], KEYS[3]}
        assert set(bank.units) == {KEYS[0], KEYS[2]}
        assert set(ledger.next) == {0, 2}
        assert ledger.step(1, 1) is Step.UNKNOWN

    asyncio.run(go())


@pytest.mark.parametrize("refused", [True, False])
def test_a_refused_commit_is_not_taken_as_committed(refused: bool) -> None:
    async def go() -> None:
        bank, ledger, kafka = ModelBank(load_config(None)), Ledger(), Kafka()

        async def commit(offsets: Mapping[int, int]) -> bool:
            kafka.log.append(("commit", dict(offsets)))
            return not refused

        step = Checkpointer(bank, ledger, PARTITIONS, store=kafka.store, write=kafka.write, commit=commit)
        ledger.position(0, 0)
        learn(bank, 0, T0)
        ledger.start(0)
        ledger.done(0, 0)
        await step.run()
        assert ledger.committed[0] == (0 if refused else 1)

    asyncio.run(go())
