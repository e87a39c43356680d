from __future__ import annotations

import doctest

from prometheus_client import generate_latest

from connectors.metrics import worker_registry
from engine import worker_stats
from engine.worker_stats import DeadLetterReason, WorkerStats, WorkerTally


def test_doctests() -> None:
    result = doctest.testmod(worker_stats)
    assert result.attempted > 0
    assert result.failed == 0


def test_checkpoint_age_counts_from_start_until_the_first_checkpoint() -> None:
    tally = WorkerTally(started=100.0)
    assert tally.checkpoint_age(now=130.0) == 30.0
    tally.checkpoint_done(now=125.0)
    assert tally.checkpoint_age(now=130.0) == 5.0


def test_revoked_partitions_lose_their_position() -> None:
    tally = WorkerTally()
    tally.processed("s", 0, 41)
    tally.processed("s", 1, 7)
    tally.revoked("s", {0})
    assert tally.processed_offsets == {("s", 1): 7}


def test_the_exposition_names_every_field_and_labels_only_closed_sets() -> None:
    stats = WorkerStats(
        samples_processed=12,
        consumer_lag={("vigil.samples", 3): 4},
        models=2,
        model_bytes=300,
        deadletters={DeadLetterReason.BAD_RECORD: 1},
        checkpoint_age_s=2.5,
        send_retries=6,
        deadletters_dropped=1,
        start_up_gaps=3,
        duplicates=7,
        out_of_order=0,
        evictions={"idle": 4, "cap": 1},
        checkpoints_refused=2,
        keys=1,
    )
    text = generate_latest(worker_registry(lambda: stats)).decode()
    for line in (
        "vigil_worker_samples_processed_total 12.0",
        'vigil_worker_consumer_lag{partition="3",topic="vigil.samples"} 4.0',
        "vigil_worker_models 2.0",
        "vigil_worker_model_state_bytes 300.0",
        "vigil_worker_model_bytes_per_series 150.0",
        "vigil_worker_model_keys 1.0",
        'vigil_worker_model_evictions_total{reason="idle"} 4.0',
        'vigil_worker_model_evictions_total{reason="cap"} 1.0',
        "vigil_worker_checkpoints_refused_total 2.0",
        'vigil_worker_deadletters_total{reason="checkpoint_mismatch"} 0.0',
        'vigil_worker_deadletters_total{reason="bad_record"} 1.0',
        'vigil_worker_deadletters_total{reason="processing_failed"} 0.0',
        "vigil_worker_checkpoint_age_seconds 2.5",
        "vigil_worker_send_retries_total 6.0",
        "vigil_worker_deadletters_dropped_total 1.0",
        "vigil_worker_start_up_gaps_total 3.0",
        'vigil_worker_points_skipped_total{reason="duplicate"} 7.0',
        'vigil_worker_points_skipped_total{reason="out_of_order"} 0.0',
    ):
        assert line in text.splitlines(), line
