"""Samples/s through the remote-write receive path vs a bare decode of the same payloads.

    python bench/receiver.py [--seconds 3] [--concurrency 4]

Full path: :meth:`connectors.receiver.Pipeline.write` — snappy, protobuf, label validation, series
preparation, per-partition batching, orjson encoding, and produce with ``acks=all`` to an embedded broker
started here, awaiting every acknowledgement before the next request is counted. ``--concurrency`` requests
are in flight at once, as Prometheus' shards send them (1 = strictly one after the other).
Bare decode: :func:`connectors.remote_write.bare_decode` — snappy, a plain protobuf parse and a naive walk
building label tuples and sample lists — over the same bodies, in the same process, right before.

Two shapes: what Prometheus really sends (500 series x 1 sample, realistic labels, the same series set
across requests with advancing timestamps) and a backlog catch-up (1,000 series x 10 samples). Both
paths are warmed up first on earlier requests of the same stream, so figures are steady state (label sets
cached, preparer tracking every series), as in a receiver that has been running for a minute.
The machine is small and shared: each figure is the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from the repository root
    sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from connectors.broker import EmbeddedBroker  # noqa: E402
from connectors.kafka import start_producer, topic_names  # noqa: E402
from connectors.receiver import PRODUCER_OPTIONS, Pipeline  # noqa: E402
from connectors.remote_write import bare_decode  # noqa: E402
from engine.config import VigilConfig, load_config  # noqa: E402
from tests.fixtures.remote_write import V1_CONTENT_TYPE, dense_shape, prometheus_shape  # noqa: E402

SHAPES: dict[str, tuple[Callable[[int, str], bytes], int]] = {
    "prometheus 500x1": (prometheus_shape, 500),
    "dense 1000x10": (dense_shape, 10_000),
}


def bare(bodies: list[bytes]) -> float:
    """Samples/s of the bare decode."""
    started = time.perf_counter()
    samples = sum(bare_decode(body, "1.0") for body in bodies)
    return samples / (time.perf_counter() - started)


async def full(pipeline: Pipeline, bodies: list[bytes], concurrency: int) -> tuple[float, float]:
    """Samples/s of the full path, and the mean time one request holds the event loop (decode, prepare,
    encode: the synchronous part), in ms."""
    queue = iter(bodies)
    written = 0
    work_before = pipeline.stats.work_seconds

    async def sender() -> None:
        nonlocal written
        for body in queue:
            result = await pipeline.write(body, V1_CONTENT_TYPE, "snappy")
            written += result.samples  # not `written += await ...`: that reads `written` before the await

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return written / elapsed, (pipeline.stats.work_seconds - work_before) / len(bodies) * 1000


async def measure(
    config: VigilConfig, name: str, seconds: float, concurrency: int, repeat: int
) -> tuple[float, float, float]:
    make, per_request = SHAPES[name]
    warm = max(20, int(20_000 / per_request))
    count = max(10, int(seconds * 150_000 / per_request))
    stream = [make(i, "1.0") for i in range(warm + count * repeat)]
    producer = await start_producer(config.kafka, **PRODUCER_OPTIONS)
    try:
        pipeline = Pipeline(config, producer, config.kafka.partitions)
        bare(stream[:warm])
        await full(pipeline, stream[:warm], concurrency)
        bare_best = full_best = 0.0
        blocked_ms = []
        for r in range(repeat):
            bodies = stream[warm + r * count : warm + (r + 1) * count]
            bare_best = max(bare_best, bare(bodies))
            rate, blocked = await full(pipeline, bodies, concurrency)
            full_best = max(full_best, rate)
            blocked_ms.append(blocked)
    finally:
        await producer.stop()
    return bare_best, full_best, statistics.median(blocked_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="rough length of one timed run")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (Prometheus shards)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is shown")
    args = parser.parse_args()

    print(f"receiver benchmark on {machine()}")
    base = load_config(None)
    with EmbeddedBroker(topic_names(base.kafka), base.kafka.partitions) as broker:
        kafka = base.kafka.model_copy(
            update={"bootstrap_servers": broker.bootstrap_servers, "embedded_quirks": True}
        )
        config = base.model_copy(update={"kafka": kafka})
        print(
            f"{'shape':<18} {'in flight':>9} {'bare decode/s':>14} {'full path/s':>12} {'ratio':>6} "
            f"{'loop held/request':>18}"
        )
        for name in SHAPES:
            for concurrency in sorted({1, args.concurrency}):
                bare_rate, full_rate, blocked = asyncio.run(
                    measure(config, name, args.seconds, concurrency, args.repeat)
                )
                print(
                    f"{name:<18} {concurrency:>9} {bare_rate:>14,.0f} {full_rate:>12,.0f} "
                    f"{full_rate / bare_rate:>6.2f} {blocked:>15.1f} ms",
                    flush=True,
                )


if __name__ == "__main__":
    main()
