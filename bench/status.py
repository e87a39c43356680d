"""What per-series status costs the worker: the hook per judged series and the flush per interval.

The production shape (bench/workload.py: raw records of ~125 series x 1 point, as ingest produces them)
through :meth:`engine.processor.Processor.handle` in-process, without and with a
:class:`engine.status.StatusBoard`, alternating per run on fresh banks warmed up by as many records before;
then one flush (read the guards,
build and encode every changed series' status) of what those records changed.

    python -m bench.status [--requests 400] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import workload
from bench.common import machine
from engine.bank import ModelBank
from engine.config import load_config
from engine.processor import Processor, Source
from engine.status import StatusBoard, encode_status


def board_of(bank: ModelBank) -> StatusBoard:
    def guard_of(key: bytes, metric: str, instance: str) -> object:
        unit = bank.units.get(key)
        return None if unit is None else unit.guards.get((metric, instance))

    return StatusBoard(guard_of, lambda metric: bank.rule_for(metric).type)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    config = load_config(None)
    partitions = config.kafka.partitions
    warm_up = workload.raw_messages(config, workload.requests(0, args.requests), partitions)
    messages = workload.raw_messages(config, workload.requests(args.requests, args.requests), partitions)
    samples = args.requests * workload.SERIES_PER_REQUEST
    without: list[float] = []
    with_hook: list[float] = []
    flush_s: list[float] = []
    changed: list[int] = []
    for _ in range(args.runs):
        for hooked in (False, True):
            bank = ModelBank(config)
            board = board_of(bank) if hooked else None
            processor = Processor(bank, max_future_ms=10**12, status=board)
            for offset, (p, value) in enumerate(warm_up):  # models exist: the steady state is measured
                processor.handle(value, Source("bench", p, offset), now_ms=workload.NOW_MS)
            if board is not None:
                board.flush()
            started = time.perf_counter()
            for offset, (p, value) in enumerate(messages):
                processor.handle(value, Source("bench", p, offset), now_ms=workload.NOW_MS)
            elapsed = time.perf_counter() - started
            (with_hook if hooked else without).append(elapsed)
            if board is not None:
                changed.append(len(board.changed))
                started = time.perf_counter()
                encoded = [encode_status(s) for s in board.flush()]
                flush_s.append(time.perf_counter() - started)
                assert len(encoded) == changed[-1]
    a, b = statistics.median(without), statistics.median(with_hook)
    print(f"machine: {machine()}, load average {os.getloadavg()[0]:.2f}")
    print(f"{len(messages)} records, {samples} raw samples, {args.runs} runs (median, min-max)")
    print(
        f"  Processor.handle without status: {samples / a:,.0f} samples/s "
        f"({samples / max(without):,.0f}-{samples / min(without):,.0f})"
    )
    print(
        f"  Processor.handle with the hook:  {samples / b:,.0f} samples/s "
        f"({samples / max(with_hook):,.0f}-{samples / min(with_hook):,.0f})"
    )
    print(f"  with / without: {a / b:.3f}  (hook cost {(b - a) / samples * 1e9:+.0f} ns per raw sample)")
    f, n = statistics.median(flush_s), statistics.median(changed)
    print(f"  flush of {n:,.0f} changed series: {f * 1000:.1f} ms ({f / n * 1e6:.2f} us per series)")


if __name__ == "__main__":
    main()
