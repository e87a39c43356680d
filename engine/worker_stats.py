"""What a worker reports about itself, as plain data: the contract between the worker and its metrics.

The worker fills a :class:`WorkerStats` snapshot on demand (``connectors/metrics.py`` asks for one on every
scrape), so the metrics exposition knows nothing of Faust, the processor or the model bank, and those can
change without touching it. :class:`WorkerTally` keeps the counts that nothing else keeps yet.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import orjson


class DeadLetterReason(StrEnum):
    """A closed set, so a metric label never carries free text (one series per distinct error message)."""

    BAD_RECORD = "bad_record"  # the whole record was unusable (not JSON, wrong shape or version)
    REJECTED = "rejected"  # a series or some points of an otherwise good record broke a rule
    PROCESSING_FAILED = "processing_failed"  # a bug: the model raised on a valid series
    #: the key's checkpoint is of another format, River version or configuration and is kept
    #: (detection.on_checkpoint_mismatch: error)
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"
    UNKNOWN = "unknown"  # not a dead letter this module understands


def reason_of(deadletter: bytes) -> DeadLetterReason:
    """Which kind of dead letter ``deadletter`` (the JSON document sent to the dead-letter topic) is.

    >>> reason_of(b'{"reason": "not JSON: x", "payload_base64": ""}')
    <DeadLetterReason.BAD_RECORD: 'bad_record'>
    >>> reason_of(b'{"reason": "value must be finite", "payload": {}}')
    <DeadLetterReason.REJECTED: 'rejected'>
    >>> reason_of(b'{"reason": "processing failed: KeyError()", "payload": {}}')
    <DeadLetterReason.PROCESSING_FAILED: 'processing_failed'>
    >>> reason_of(b'{"reason": "checkpoint mismatch: checkpoint format 2 / ...", "payload": {}}')
    <DeadLetterReason.CHECKPOINT_MISMATCH: 'checkpoint_mismatch'>
    >>> reason_of(b"[")
    <DeadLetterReason.UNKNOWN: 'unknown'>
    """
    try:
        doc = orjson.loads(deadletter)
    except orjson.JSONDecodeError:
        return DeadLetterReason.UNKNOWN
    if not isinstance(doc, dict) or not isinstance(doc.get("reason"), str):
        return DeadLetterReason.UNKNOWN
    if doc["reason"].startswith("processing failed"):
        return DeadLetterReason.PROCESSING_FAILED
    if doc["reason"].startswith("checkpoint mismatch"):
        return DeadLetterReason.CHECKPOINT_MISMATCH
    if "payload_base64" in doc:
        return DeadLetterReason.BAD_RECORD
    return DeadLetterReason.REJECTED


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """One worker's state at one moment. Counters only ever grow during the life of the process."""

    samples_processed: int
    #: (topic, partition) → records not yet processed (the partition's high watermark minus our position)
    consumer_lag: Mapping[tuple[str, int], int]
    models: int  # series (guards) held in memory
    #: measured: the size of the latest checkpoint of each key held (0 for one never checkpointed yet)
    model_bytes: int
    deadletters: Mapping[DeadLetterReason, int]
    #: seconds since the last completed checkpoint (since the worker started, before the first one)
    checkpoint_age_s: float
    send_retries: int = 0
    #: dead letters refused by the broker even when cut to the smallest size, and dropped (logged)
    deadletters_dropped: int = 0
    #: records after a hole in a partition (Faust dropped what it fetched during start-up or a
    #: rebalance): the partition was sought back to the next offset to process
    start_up_gaps: int = 0
    duplicates: int = 0  # points skipped: timestamp equal to the series' watermark
    out_of_order: int = 0  # points skipped: timestamp before the series' watermark
    #: keys that left memory: ``idle`` (no samples for detection.idle_evict_s) or ``cap`` (max_keys)
    evictions: Mapping[str, int] = field(default_factory=dict)
    #: checkpoints refused and started fresh (damaged, or a mismatch under on_checkpoint_mismatch: fresh)
    checkpoints_refused: int = 0
    #: sample keys held in memory
    keys: int = 0


@dataclass
class WorkerTally:
    """Counts the worker keeps for its metrics. Times are ``time.monotonic()`` seconds."""

    started: float = field(default_factory=time.monotonic)
    last_checkpoint: float = field(init=False)
    deadletters: Counter[DeadLetterReason] = field(default_factory=Counter)
    #: (topic, partition) → offset of the last record processed
    processed_offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.last_checkpoint = self.started

    def deadletter(self, value: bytes) -> None:
        self.deadletters[reason_of(value)] += 1

    def checkpoint_done(self, now: float | None = None) -> None:
        self.last_checkpoint = time.monotonic() if now is None else now

    def processed(self, topic: str, partition: int, offset: int) -> None:
        self.processed_offsets[(topic, partition)] = offset

    def revoked(self, topic: str, partitions: Collection[int]) -> None:
        """Forget positions in partitions given away: if one comes back, it restarts elsewhere."""
        for partition in partitions:
            self.processed_offsets.pop((topic, partition), None)

    def checkpoint_age(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.last_checkpoint
