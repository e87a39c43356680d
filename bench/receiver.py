"""Samples/s through the remote-write receive path, against decoding alone, and what compression costs.

    python bench/receiver.py [--seconds 2] [--runs 5] [--compression lz4]

Full path: :meth:`connectors.receiver.Pipeline.write` — snappy, protobuf, label validation, raw records
(stale markers, dropped non-finite values, key and partition per (service, family)), orjson encoding, and
produce with ``acks=all`` to an embedded broker started here, every acknowledgement awaited before a
request counts. 1 and 4 requests in flight (Prometheus' shards send concurrently).

Against two decoders, over the same bodies, in the same process, in the same run:

* **Vigil's decoder alone** — :meth:`connectors.remote_write.Decoder.decode`: snappy, its fast paths and
  protobuf, label validation with its cache (steady state, as in a receiver running for a minute);
* **plain protobuf** — :func:`connectors.remote_write.bare_decode`: snappy, ``ParseFromString`` with the
  ``protobuf`` package's default backend (upb, printed below) and a naive walk building label tuples and
  sample lists, no validation.

Two shapes: what Prometheus really sends (500 series x 1 sample, realistic labels, the series of a target
sharing its scrape timestamp, the same series set across requests) and a backlog catch-up (1,000 series x
10 samples). Each figure is the **median of ``--runs`` runs, with the min-max**: the machine is small and
shared, so the spread says how far to trust it.

Compression: the raw messages of both shapes compressed and decompressed with aiokafka's own codec
functions (what the producer and the worker's consumer run, via cramjam): bytes and CPU per message.
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

from aiokafka import codec  # noqa: E402
from google.protobuf.internal import api_implementation  # noqa: E402

from bench.common import machine  # noqa: E402
from connectors.broker import EmbeddedBroker  # noqa: E402
from connectors.kafka import topic_names  # noqa: E402
from connectors.receiver import PRODUCER_OPTIONS, Kafka, Pipeline, RecordBuilder, Stats  # noqa: E402
from connectors.receiver import delivery as delivery_module  # noqa: E402
from connectors.remote_write import Decoder, Limits, bare_decode  # noqa: E402
from engine.config import VigilConfig, load_config  # noqa: E402
from tests.fixtures.remote_write import V1_CONTENT_TYPE, dense_shape, prometheus_shape  # noqa: E402

SHAPES: dict[str, tuple[Callable[[int, str], bytes], int]] = {
    "prometheus 500x1": (prometheus_shape, 500),
    "dense 1000x10": (dense_shape, 10_000),
}
NOW_MS = 1_731_622_400_000 + 10**9  # after every shape timestamp: nothing is "in the future"
CODECS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "gzip": (codec.gzip_encode, codec.gzip_decode),
    "snappy": (codec.snappy_encode, codec.snappy_decode),
    "lz4": (codec.lz4_encode, codec.lz4_decode),
    "zstd": (codec.zstd_encode, codec.zstd_decode),
}


def upb_rate(bodies: list[bytes]) -> float:
    """Samples/s of the plain protobuf decode."""
    started = time.perf_counter()
    samples = sum(bare_decode(body, "1.0") for body in bodies)
    return samples / (time.perf_counter() - started)


def decoder_rate(decoder: Decoder, bodies: list[bytes]) -> float:
    """Samples/s of Vigil's decoder alone."""
    started = time.perf_counter()
    samples = sum(decoder.decode(b, V1_CONTENT_TYPE, "snappy", NOW_MS).request.sample_count for b in bodies)
    return samples / (time.perf_counter() - started)


async def full_rate(pipeline: Pipeline, bodies: list[bytes], concurrency: int) -> tuple[float, float]:
    """Samples/s of the full path, and the mean time one request holds the event loop (decode, validate,
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


def spread(values: list[float], fmt: str = ",.0f") -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


async def measure(config: VigilConfig, name: str, seconds: float, concurrency: int, runs: int) -> list[str]:
    make, per_request = SHAPES[name]
    warm = max(20, int(20_000 / per_request))
    count = max(10, int(seconds * 100_000 / per_request))
    stream = [make(i, "1.0") for i in range(warm + count * runs)]
    kafka = await Kafka.connect(config.kafka, Stats())
    try:
        pipeline = Pipeline(config, kafka)
        decoder = Decoder(Limits(max_future_ms=10**12))
        upb_rate(stream[:warm])
        decoder_rate(decoder, stream[:warm])
        await full_rate(pipeline, stream[:warm], concurrency)
        upb, vigil, full, held, to_vigil, to_upb = [], [], [], [], [], []
        for r in range(runs):
            bodies = stream[warm + r * count : warm + (r + 1) * count]
            upb.append(upb_rate(bodies))
            vigil.append(decoder_rate(decoder, bodies))
            rate, blocked = await full_rate(pipeline, bodies, concurrency)
            full.append(rate)
            held.append(blocked)
            to_vigil.append(rate / vigil[-1])
            to_upb.append(rate / upb[-1])
    finally:
        await kafka.stop()
    return [
        name,
        str(concurrency),
        spread(full),
        spread(vigil),
        spread(upb),
        spread(to_vigil, ".2f"),
        spread(to_upb, ".2f"),
        spread(held, ".1f"),
    ]


def compression(config: VigilConfig, runs: int) -> list[list[str]]:
    """Raw messages of each shape through each codec: bytes and CPU per message (median of ``runs``)."""
    rows = []
    for name, (make, _) in SHAPES.items():
        decoder = Decoder(Limits(max_future_ms=10**12))
        builder = RecordBuilder(config.labels, "samples", "metadata")
        values = [
            m.value
            for i in range(20)
            for m in builder.build(
                decoder.decode(make(i, "1.0"), V1_CONTENT_TYPE, "snappy", NOW_MS).request, 4
            ).messages
        ]
        raw = sum(map(len, values))
        rows.append([name, "none", f"{raw / len(values):,.0f}", "1.00", "-", "-"])
        for codec_name, (encode, decode) in CODECS.items():
            encode_us, decode_us = [], []
            for _ in range(runs):
                started = time.perf_counter()
                packed = [encode(v) for v in values]
                encode_us.append((time.perf_counter() - started) / len(values) * 1e6)
                started = time.perf_counter()
                for p in packed:
                    decode(p)
                decode_us.append((time.perf_counter() - started) / len(values) * 1e6)
            size = sum(map(len, packed))
            rows.append(
                [
                    name,
                    codec_name,
                    f"{size / len(values):,.0f}",
                    f"{raw / size:.2f}",
                    spread(encode_us),
                    spread(decode_us),
                ]
            )
    return rows


def table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                cell.rjust(w) if i else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="rough length of one timed run")
    parser.add_argument("--runs", type=int, default=5, help="runs per figure: median and min-max are shown")
    parser.add_argument(
        "--compression",
        default=PRODUCER_OPTIONS["compression_type"],
        choices=["none", *CODECS],
        help="the producer's compression for the full path",
    )
    args = parser.parse_args()

    print(f"receiver benchmark on {machine()}; protobuf backend: {api_implementation.Type()}")
    compression_type = None if args.compression == "none" else args.compression
    delivery_module.PRODUCER_OPTIONS["compression_type"] = compression_type
    base = load_config(None)
    with EmbeddedBroker(
        [*topic_names(base.kafka), base.kafka.topics.metadata], base.kafka.partitions
    ) as broker:
        kafka = base.kafka.model_copy(
            update={"bootstrap_servers": broker.bootstrap_servers, "embedded_quirks": True}
        )
        config = base.model_copy(update={"kafka": kafka})
        print(
            f"\nfull path (acks=all, compression {args.compression}) vs Vigil's decoder alone vs plain "
            f"protobuf; samples/s, median (min-max) of {args.runs} runs"
        )
        rows = [
            asyncio.run(measure(config, name, args.seconds, concurrency, args.runs))
            for name in SHAPES
            for concurrency in (1, 4)
        ]
        table(
            [
                "shape",
                "in flight",
                "full path",
                "Vigil decoder",
                "plain upb",
                "full/Vigil",
                "full/upb",
                "loop ms",
            ],
            rows,
        )
    print(
        f"\ncompression of the raw messages (aiokafka's codecs), per message, median (min-max) of {args.runs}"
    )
    table(
        ["shape", "codec", "bytes", "ratio", "compress µs", "decompress µs"], compression(config, args.runs)
    )


if __name__ == "__main__":
    main()
