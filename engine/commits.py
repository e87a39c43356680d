"""Commits follow checkpoints: a partition's committed offset never passes what its checkpoint covers.

Faust's own commits are off for ``vigil.samples`` (engine.app subscribes with ``acks=False``); the worker
commits only here, in one step per checkpoint (every ``detection.checkpoint_interval_s``, when partitions
are revoked, and on a clean shutdown):

1. between two records (the agent holds :attr:`Checkpointer.lock` while it handles one record and sends
   its verdicts and dead letters until Kafka acknowledged them), snapshot each partition's next offset
   to process (:class:`Ledger`) and take the checkpoints of that partition's changed keys from the bank;
2. write those checkpoints to the ``models`` table and wait until Kafka acknowledged every one;
3. commit exactly the snapshot offsets.

So after a crash the worker resumes at an offset whose samples are all in the checkpoints (or were never
processed): nothing between the last checkpoint and the crash is skipped, it is read again. Records read
again are harmless: a checkpoint may be ahead of its committed offset (keys checkpointed by a step that
did not get to commit), and the per-series watermark (``SeriesGuard.admit``) skips points a model already
learned — their verdicts were acknowledged before the checkpoint was taken, so none is lost. The simpler
alternative the design allows (the offset inside the checkpoint, a seek on assign) was not taken:
checkpoints are per key and written at different times, so a partition-wide offset would need a record of
its own in the changelog anyway; committing through Kafka keeps the usual tools (lag, ``kafka-consumer-
groups``) truthful.

The :class:`Ledger` also closes Faust's start-up gap. Faust may drop records it fetched while a worker
starts or rebalances (its stream queues are cleared when flow resumes, and without a committed offset it
does not seek back at all). The ledger knows the next offset of every partition — from the committed
offset once table recovery has positioned the partition — so a record beyond it reveals a gap and the
partition is sought back to it before anything later is processed; a record before it was processed
already and is skipped.

Plain Python, no Faust: engine.app supplies the bank, the writer of checkpoints and the commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from engine.samples import partition_for

log = logging.getLogger(__name__)

#: A gap seen this often at the same place is real (offsets a transactional producer's markers take).
GAP_CONFIRMATIONS = 10


class Step(StrEnum):
    """What the agent does with a record at some offset of a partition."""

    PROCESS = "process"  # the next offset: handle it
    SEEN = "seen"  # before the next offset: handled already, skip it
    GAP = "gap"  # after the next offset: records were dropped on the way, seek back, skip it
    UNKNOWN = "unknown"  # the partition is not positioned yet (table recovery not done): skip it


@dataclass
class Ledger:
    """Per partition of the samples topic: the next offset to process and the last one committed."""

    next: dict[int, int] = field(default_factory=dict)
    committed: dict[int, int] = field(default_factory=dict)
    #: partitions with a record being handled (its verdicts not yet acknowledged)
    busy: set[int] = field(default_factory=set)
    gaps: int = 0
    duplicates: int = 0
    _gap_seen: dict[int, tuple[int, int, int]] = field(default_factory=dict)

    def position(self, partition: int, offset: int) -> None:
        """The partition starts at ``offset`` (its committed offset), unless it is positioned already."""
        if partition not in self.next:
            self.next[partition] = offset
            self.committed[partition] = offset

    def step(self, partition: int, offset: int) -> Step:
        """Classify a record at ``offset``.

        >>> ledger = Ledger()
        >>> ledger.step(0, 5)
        <Step.UNKNOWN: 'unknown'>
        >>> ledger.position(0, 5)
        >>> [ledger.step(0, o) for o in (4, 6, 5)]
        [<Step.SEEN: 'seen'>, <Step.GAP: 'gap'>, <Step.PROCESS: 'process'>]
        """
        expected = self.next.get(partition)
        if expected is None:
            return Step.UNKNOWN
        if offset == expected:
            self._gap_seen.pop(partition, None)
            return Step.PROCESS
        if offset < expected:
            self.duplicates += 1
            return Step.SEEN
        target, first, times = self._gap_seen.get(partition, (expected, offset, 0))
        times = times + 1 if (target, first) == (expected, offset) else 1
        self._gap_seen[partition] = (expected, offset, times)
        if times >= GAP_CONFIRMATIONS:
            log.warning(
                "partition %d has no records %d..%d (seen %d times after seeking back): going on at %d",
                partition,
                expected,
                offset - 1,
                times,
                offset,
            )
            self.next[partition] = offset
            self._gap_seen.pop(partition, None)
            return Step.PROCESS
        self.gaps += 1
        return Step.GAP

    def start(self, partition: int) -> None:
        self.busy.add(partition)

    def done(self, partition: int, offset: int) -> None:
        """The record at ``offset`` is handled and its outputs are acknowledged."""
        self.next[partition] = offset + 1
        self.busy.discard(partition)

    def snapshot(self, partitions: Iterable[int]) -> dict[int, int]:
        """Next offsets of ``partitions`` that are positioned and not in the middle of a record."""
        return {p: self.next[p] for p in partitions if p in self.next and p not in self.busy}

    def release(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.next.pop(p, None)
            self.committed.pop(p, None)
            self.busy.discard(p)
            self._gap_seen.pop(p, None)


class Bank(Protocol):
    """The part of the model bank a checkpoint step uses."""

    def checkpoints(self, select: Callable[[bytes], bool]) -> Iterable[tuple[bytes, bytes]]: ...

    def forget(self, keep: Callable[[bytes], bool]) -> None: ...

    def evict_idle(self) -> int: ...


@dataclass
class Checkpointer:
    """One checkpoint-then-commit step at a time (see the module docstring)."""

    bank: Bank
    ledger: Ledger
    partitions: int
    #: puts a checkpoint into the local table (synchronous: the table must answer reads at once)
    store: Callable[[bytes, bytes], None]
    #: sends a checkpoint to the changelog and returns once Kafka acknowledged it (retrying inside)
    write: Callable[[bytes, bytes], Awaitable[None]]
    #: commits ``{partition: next offset}``; False if the commit was refused (e.g. already rebalanced)
    commit: Callable[[Mapping[int, int]], Awaitable[bool]]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _serial: asyncio.Lock = field(default_factory=asyncio.Lock)
    checkpoints_written: int = 0
    commits: int = 0

    async def run(self, partitions: Iterable[int] | None = None, *, release: bool = False) -> dict[int, int]:
        """Checkpoint ``partitions`` (default: every positioned one) and commit them; return the commit.

        With ``release`` the partitions are given up afterwards: their models are dropped from memory and
        the ledger forgets them (revoke, shutdown).
        """
        async with self._serial:
            async with self.lock:
                chosen = set(self.ledger.next if partitions is None else partitions)
                offsets = self.ledger.snapshot(chosen)
                covered = set(offsets)
                n = self.partitions
                # Encoding is ~36 µs per key here (0.36 s per 10,000 keys, measured): in a thread, so
                # heartbeats, sends and scrapes go on meanwhile; the agent waits for the lock, so nothing
                # changes the models while they are encoded.
                blobs = await asyncio.to_thread(
                    lambda: list(self.bank.checkpoints(lambda key: partition_for(key, n) in covered))
                )
                for key, blob in blobs:
                    self.store(key, blob)
                self.bank.evict_idle()  # keys idle long enough leave memory once checkpointed
                due = {p: o for p, o in offsets.items() if o > max(0, self.ledger.committed.get(p, 0))}
                if release:
                    self.ledger.release(chosen)
                    self.bank.forget(lambda key: partition_for(key, n) not in chosen)
            if blobs:
                await asyncio.gather(*(self.write(key, blob) for key, blob in blobs))
                self.checkpoints_written += len(blobs)
            if due and await self.commit(due):
                self.commits += 1
                for p, o in due.items():
                    if p in self.ledger.committed:
                        self.ledger.committed[p] = o
                return due
            return {}
