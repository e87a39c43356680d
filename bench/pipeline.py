"""Samples/s through the whole embedded pipeline vs the same detectors in a bare loop.

    python bench/pipeline.py [--keys 200] [--points 1000]

Pipeline: produce batches to ``vigil.samples`` on the embedded broker → a real ``vigil worker`` process
(Faust agent → decode → model bank → detectors). The clock starts when the first batch is produced (the
worker is already consuming) and stops when the worker has processed every record.
Bare loop: the same samples through ``ModelBank.observe`` in this process. Both run here, now, so the
ratio is meaningful on a noisy machine even when absolute figures wander.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.common import machine
from connectors.broker import EmbeddedBroker
from connectors.kafka import compacted_topics, start_producer, topic_names
from engine.bank import ModelBank
from engine.config import VigilConfig, load_config
from engine.samples import Series, encode_batch, family_of, partition_for, sample_key
from vigil.runtime import child_env, with_kafka

BATCH = 500
T0 = 1_700_000_000_000


def make_series(keys: int, points: int) -> list[Series]:
    rng = random.Random(5)
    out = []
    for k in range(keys):
        base = rng.uniform(1, 1000)
        pts = [
            (T0 + i * 15_000, base * (1 + 0.1 * math.sin(i / 50)) + rng.gauss(0, base * 0.02))
            for i in range(points)
        ]
        out.append(Series(f"svc{k % 10}", f"metric_{k}:rate", "", pts))
    return out


def batches(series: list[Series], partitions: int) -> list[tuple[int, bytes]]:
    """Per-partition messages of up to BATCH points, in time order per series."""
    return [
        (
            partition_for(sample_key(s.service, family_of(s.metric)), partitions),
            encode_batch([Series(s.service, s.metric, s.instance, s.points[i : i + BATCH])]),
        )
        for s in series
        for i in range(0, len(s.points), BATCH)
    ]


def bare(config: VigilConfig, series: list[Series]) -> float:
    bank = ModelBank(config)
    started = time.perf_counter()
    for s in series:
        for i in range(0, len(s.points), BATCH):
            bank.observe(Series(s.service, s.metric, s.instance, s.points[i : i + BATCH]))
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def pipeline(
    config: VigilConfig, messages: list[tuple[int, bytes]], worker_pid: int
) -> tuple[float, float]:
    """Seconds from the first produced batch until the worker has processed the last of every partition.

    The finish line is a garbage record after the data on each partition: the worker answers each with a
    dead letter, and a partition is processed in order, so seeing them all means everything before is done.
    """
    kafka = config.kafka
    producer = await start_producer(kafka, linger_ms=5)
    deadletters = AIOKafkaConsumer(
        kafka.topics.deadletter, bootstrap_servers=kafka.bootstrap_servers, auto_offset_reset="latest"
    )
    await deadletters.start()
    try:
        await finish_line(producer, deadletters, kafka.topics.samples, kafka.partitions)  # worker is up
        started = time.perf_counter()
        cpu = cpu_seconds(worker_pid)
        for p, value in messages:
            await producer.send(kafka.topics.samples, value, partition=p)
        await producer.flush()
        print(f"produced in {time.perf_counter() - started:.2f}s")
        await finish_line(producer, deadletters, kafka.topics.samples, kafka.partitions)
        return time.perf_counter() - started, cpu_seconds(worker_pid) - cpu
    finally:
        await producer.stop()
        await deadletters.stop()


async def finish_line(
    producer: AIOKafkaProducer, deadletters: AIOKafkaConsumer, topic: str, partitions: int
) -> None:
    for p in range(partitions):
        await producer.send(topic, b"end of run", partition=p)
    seen = 0
    while seen < partitions:
        for records in (await deadletters.getmany(timeout_ms=100)).values():
            seen += len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--points", type=int, default=1000)
    args = parser.parse_args()
    base = load_config(None)
    series = make_series(args.keys, args.points)
    total = args.keys * args.points
    with EmbeddedBroker(
        topic_names(base.kafka), base.kafka.partitions, compacted=compacted_topics(base.kafka)
    ) as broker:
        config = with_kafka(base, broker.bootstrap_servers, quirks=True)
        messages = batches(series, config.kafka.partitions)
        worker = subprocess.Popen([sys.executable, "-m", "vigil", "worker"], env=child_env(config))
        try:
            piped, cpu = asyncio.run(asyncio.wait_for(pipeline(config, messages, worker.pid), 600))
        finally:
            worker.terminate()
            worker.wait(30)
    loop = bare(base, series)
    print(f"machine: {machine()}")
    print(f"samples: {total} ({args.keys} series x {args.points} points, {len(messages)} messages)")
    print(f"pipeline (produce -> broker -> Faust agent -> detectors): {total / piped:>10,.0f} samples/s")
    print(f"bare loop (same detectors, same samples, no Kafka):       {total / loop:>10,.0f} samples/s")
    print(f"ratio pipeline / bare loop: {loop / piped:.2f}")
    print(f"worker CPU time per sample: {cpu / total * 1e6:.2f} us (bare loop: {loop / total * 1e6:.2f} us)")


if __name__ == "__main__":
    main()
