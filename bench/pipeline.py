"""Samples/s through the whole embedded pipeline vs the same detectors in a bare loop.

    python bench/pipeline.py [--keys 200] [--points 1000]

Pipeline: produce batches to ``vigil.samples`` on the embedded broker → a real ``vigil worker`` process
(Faust agent → decode → model bank → detectors) → committed offsets. The clock starts when the first
batch is produced (the worker is already consuming) and stops when the worker has committed every record.
Bare loop: the same samples through ``ModelBank.observe`` in this process. Both run here, now, so the
ratio is meaningful on a noisy machine even when absolute figures wander.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import machine
from connectors.broker import EmbeddedBroker
from connectors.kafka import start_producer, topic_names
from engine.bank import ModelBank
from engine.config import VigilConfig, load_config
from engine.samples import Series, encode_batch, partition_for
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
            partition_for(s.key, partitions),
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


async def committed(config: VigilConfig) -> dict[int, int]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=config.kafka.bootstrap_servers, group_id=config.kafka.app_id
    )
    await consumer.start()
    try:
        out = {}
        for p in range(config.kafka.partitions):
            offset = await consumer.committed(TopicPartition(config.kafka.topics.samples, p))
            out[p] = offset or 0
        return out
    finally:
        await consumer.stop()


async def pipeline(config: VigilConfig, messages: list[tuple[int, bytes]]) -> float:
    producer = await start_producer(config.kafka, linger_ms=5)
    topic = config.kafka.topics.samples
    # Warm-up: one record per partition, wait until the worker has committed them all.
    expected = dict.fromkeys(range(config.kafka.partitions), 1)
    for p in expected:
        await producer.send_and_wait(topic, encode_batch([]), partition=p)
    while await committed(config) != expected:  # noqa: ASYNC110 - polling another process
        await asyncio.sleep(0.2)
    started = time.perf_counter()
    for p, value in messages:
        await producer.send(topic, value, partition=p)
        expected[p] += 1
    await producer.flush()
    await producer.stop()
    while True:
        done = await committed(config)
        if all(done[p] >= expected[p] for p in expected):
            return time.perf_counter() - started
        await asyncio.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--points", type=int, default=1000)
    args = parser.parse_args()
    base = load_config(None)
    series = make_series(args.keys, args.points)
    total = args.keys * args.points
    with EmbeddedBroker(topic_names(base.kafka), base.kafka.partitions) as broker:
        config = with_kafka(base, broker.bootstrap_servers, quirks=True)
        messages = batches(series, config.kafka.partitions)
        worker = subprocess.Popen([sys.executable, "-m", "vigil", "worker"], env=child_env(config))
        try:
            piped = asyncio.run(asyncio.wait_for(pipeline(config, messages), 600))
        finally:
            worker.terminate()
            worker.wait(30)
    loop = bare(base, series)
    print(f"machine: {machine()}")
    print(f"samples: {total} ({args.keys} series x {args.points} points, {len(messages)} messages)")
    print(f"pipeline (produce -> broker -> Faust agent -> detectors): {total / piped:>10,.0f} samples/s")
    print(f"bare loop (same detectors, same samples, no Kafka):       {total / loop:>10,.0f} samples/s")
    print(f"ratio pipeline / bare loop: {loop / piped:.2f}")


if __name__ == "__main__":
    main()
