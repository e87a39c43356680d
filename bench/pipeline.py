"""Samples/s through a real ``vigil worker`` vs the same records handled in-process, for two record shapes.

    python -m bench.pipeline [--runs 5] [--requests 200] [--keys 200] [--points 500] [--bootstrap HOST:PORT]

Two message shapes on ``vigil.samples``:

* **production** — what ``vigil ingest`` produces for what Prometheus sends: one raw record per partition
  per remote-write request (500 series x 1 sample from 24 services, :mod:`bench.workload`), so about
  125 series x 1 point per message with 4 partitions; the worker prepares them (counters to rates,
  histogram buckets to quantiles) and judges the prepared points. ``--requests`` requests per run.
* **dense** — prepared records of ``--keys`` series x ``--points`` points, 500 points of one series per
  message (what ``vigil replay`` writes for a CSV, and a backlog of one long series).

Pipeline: the run's records are produced to the embedded broker (or the Apache Kafka ``--bootstrap``
names) while a real ``vigil worker`` process (Faust agent, decode, preparation, model bank, detectors,
verdicts) consumes; the clock stops once a marker record after the data on each partition has come back
as a dead letter (a partition is processed in order).
Bare: the same record values through :meth:`engine.processor.Processor.handle` in this process — the
worker's whole work per record without Kafka and Faust — with its own state carried from run to run as the
worker's is. Both run here, now, run after run, so the ratio holds on a noisy machine even when the
absolute figures wander. Samples/s count what the records carry: raw samples (production), prepared
points (dense). Each figure is the median of ``--runs`` runs with the min-max.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from the repository root
    sys.path.insert(0, str(ROOT))

from bench import workload  # noqa: E402
from bench.common import machine  # noqa: E402
from bench.scale import Cpu, Drain, Worker, bench_config, children, drain_once, settle, spread  # noqa: E402
from connectors.broker import EmbeddedBroker  # noqa: E402
from connectors.kafka import compacted_topics, ensure_topics, start_producer, topic_names  # noqa: E402
from engine.bank import ModelBank  # noqa: E402
from engine.config import VigilConfig  # noqa: E402
from engine.processor import Processor, Source  # noqa: E402
from engine.samples import Series, encode_batch, family_of, partition_for, sample_key  # noqa: E402
from vigil.runtime import with_kafka  # noqa: E402

BATCH = 500  # points per dense message
T0 = 1_700_000_000_000
NOW_MS = workload.NOW_MS  # "now" for the bare path: after every timestamp sent


@dataclass
class Shape:
    """One message shape: the records of run ``r`` (each run later in time) and the samples they carry."""

    name: str
    description: str
    take: Callable[[int], list[tuple[int, bytes]]]
    samples: int


def production(config: VigilConfig, requests: int) -> Shape:
    def take(run: int) -> list[tuple[int, bytes]]:
        bodies = workload.requests(run * requests, requests)
        return workload.raw_messages(config, bodies, config.kafka.partitions)

    return Shape(
        "production",
        f"raw, 1 message per partition per request ({requests} requests of 500 series x 1 sample)",
        take,
        requests * workload.SERIES_PER_REQUEST,
    )


def dense(config: VigilConfig, keys: int, points: int) -> Shape:
    rng = random.Random(5)
    bases = [rng.uniform(1, 1000) for _ in range(keys)]
    partitions = config.kafka.partitions

    def take(run: int) -> list[tuple[int, bytes]]:
        noise = random.Random(run)
        out = []
        for k, base in enumerate(bases):
            series = Series(f"svc{k % 10}", f"metric_{k}:rate", "", [])
            where = partition_for(sample_key(series.service, family_of(series.metric)), partitions)
            for start in range(0, points, BATCH):
                stamps = range(run * points + start, run * points + min(points, start + BATCH))
                pts = [
                    (T0 + i * 15_000, base * (1 + 0.1 * math.sin(i / 50)) + noise.gauss(0, base * 0.02))
                    for i in stamps
                ]
                out.append((where, encode_batch([Series(series.service, series.metric, "", pts)])))
        return out

    return Shape(
        "dense",
        f"prepared, {BATCH} points of one series per message ({keys} series x {points} points)",
        take,
        keys * points,
    )


def bare(processor: Processor, messages: list[tuple[int, bytes]]) -> float:
    """Seconds to handle ``messages`` in this process (the worker's whole work per record, no Kafka)."""
    started = time.perf_counter()
    for offset, (p, value) in enumerate(messages):
        processor.handle(value, Source("bench", p, offset), now_ms=NOW_MS)
    return time.perf_counter() - started


@dataclass
class Figures:
    pipeline: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    worker_us: list[float] = field(default_factory=list)  # worker CPU per sample
    bare_us: list[float] = field(default_factory=list)


async def measure(config: VigilConfig, shape: Shape, runs: int, workdir: Path, worker: Worker) -> Figures:
    out = Figures()
    producer = await start_producer(config.kafka, linger_ms=5)
    drain = Drain(config, producer, config.kafka.partitions)
    processor = Processor(ModelBank(config), max_future_ms=int(config.detection.max_future_s * 1000))
    try:
        await drain.start()
        await settle(drain, [worker])
        for run in range(runs):
            messages = shape.take(run)  # built before the clock starts
            assert worker.process is not None
            with Cpu({"worker": [worker.process.pid]}) as cpu:
                seconds, _, _ = await drain_once(drain, [worker], messages)
            loop = bare(processor, messages)
            out.pipeline.append(shape.samples / seconds)
            out.bare.append(shape.samples / loop)
            out.worker_us.append(cpu.cores["worker"] * seconds / shape.samples * 1e6)
            out.bare_us.append(loop / shape.samples * 1e6)
            print(
                f"  {shape.name} run {run + 1}: pipeline {out.pipeline[-1]:,.0f}, bare {out.bare[-1]:,.0f} "
                f"samples/s ({len(messages)} messages)",
                flush=True,
            )
    finally:
        await drain.stop()
        await producer.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per figure: median and min-max are shown")
    parser.add_argument("--requests", type=int, default=200, help="production shape: requests per run")
    parser.add_argument("--keys", type=int, default=200, help="dense shape: series per run")
    parser.add_argument("--points", type=int, default=500, help="dense shape: points per series per run")
    parser.add_argument("--shape", choices=["all", "production", "dense"], default="all")
    parser.add_argument("--bootstrap", help="an Apache Kafka to use instead of the embedded broker")
    args = parser.parse_args()

    where = f"Apache Kafka at {args.bootstrap}" if args.bootstrap else "embedded broker"
    print(f"pipeline benchmark on {machine()} ({where}, one vigil worker)", flush=True)
    results: dict[str, tuple[Shape, Figures]] = {}
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp, contextlib.ExitStack() as stack:
        bootstrap = args.bootstrap or stack.enter_context(EmbeddedBroker()).bootstrap_servers
        for name in ("production", "dense"):
            if args.shape not in ("all", name):
                continue
            config = with_kafka(
                bench_config(bootstrap, f"pipe{os.getpid()}-{name}"), bootstrap, quirks=not args.bootstrap
            )
            kafka = config.kafka
            asyncio.run(
                ensure_topics(
                    bootstrap,
                    topic_names(kafka),
                    kafka.partitions,
                    compacted=compacted_topics(kafka),
                )
            )
            shape = (
                production(config, args.requests)
                if name == "production"
                else dense(config, args.keys, args.points)
            )
            print(f"\n{shape.name}: {shape.description}; {shape.samples:,} samples per run", flush=True)
            worker = Worker(config, Path(tmp) / f"worker-{name}.log")
            with children(worker):
                results[name] = (shape, asyncio.run(measure(config, shape, args.runs, Path(tmp), worker)))
    print(f"\nsamples/s, median (min-max) of {args.runs} runs")
    for shape, f in results.values():
        print(f"{shape.name} ({shape.description}):")
        print(f"  pipeline (produce -> broker -> Faust agent -> prepare -> detectors): {spread(f.pipeline)}")
        print(f"  bare (Processor.handle on the same records, in-process, no Kafka):  {spread(f.bare)}")
        ratio = [p / b for p, b in zip(f.pipeline, f.bare, strict=True)]
        print(f"  ratio pipeline / bare (run by run): {spread(ratio, '.2f')}")
        print(
            f"  worker CPU per sample: {spread(f.worker_us, '.2f')} us (bare: {spread(f.bare_us, '.2f')} us)"
        )


if __name__ == "__main__":
    main()
