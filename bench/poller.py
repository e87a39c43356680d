"""Series x steps per second turned into produced samples by the poller, against bare fetching and parsing.

    python bench/poller.py [--series 50] [--steps 10800] [--chunk 1000] [--runs 3]

A real Prometheus (Debian's) is loaded with known data (``--series`` gauges, one sample a second for
``--steps`` seconds, via ``promtool tsdb create-blocks-from openmetrics``) and an embedded broker is started
here. Over the same chunked windows (``--chunk`` steps per request, every series in each answer):

* **answer** — the HTTP round trip alone: POST ``/api/v1/query_range``, body read (Prometheus' work);
* **bare parse** — ``orjson.loads`` and a naive walk turning every ``[t, "v"]`` into ``(int ms, float)``;
* **Vigil's parse** — :func:`connectors.prometheus.response.parse_range` (strict checks, NaN/Inf counted);
* **produce** — the series as prepared records (:func:`connectors.poller.service.messages`), sent with
  ``acks=all`` to the embedded broker, every acknowledgement awaited;
* **end to end** — :func:`connectors.prometheus.watch.poll_query` (client: fetch + parse + series) then
  produce, chunk after chunk as the poller's backfill does.

Each figure is the median of ``--runs`` runs with the min-max (a small shared machine). The ratio compares
end to end with the best bare baseline measured in the same run: answer + bare parse.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from the repository root
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import orjson  # noqa: E402

from bench.common import machine  # noqa: E402
from connectors.broker import EmbeddedBroker  # noqa: E402
from connectors.kafka import ensure_topics, start_producer, topic_names  # noqa: E402
from connectors.poller.service import messages  # noqa: E402
from connectors.prometheus import PrometheusClient, Window, split  # noqa: E402
from connectors.prometheus.response import parse_range  # noqa: E402
from connectors.prometheus.watch import poll_query  # noqa: E402
from connectors.prometheus.windows import seconds  # noqa: E402
from engine.config import LabelsConfig, QueryConfig, SourceConfig, VigilConfig, WatchConfig  # noqa: E402
from engine.samples import Series, partition_for, sample_key  # noqa: E402
from tests.fixtures.tsdb import openmetrics, prometheus_with  # noqa: E402

T0 = 1_767_225_600
QUERY = 'bench_value{job="bench"}'
VIGIL_PARSE = "Vigil's parse"


def data(series: int, steps: int) -> str:
    return openmetrics(
        "bench_value",
        {
            (("instance", f"i{n}"), ("job", "bench")): [
                (T0 + k, float(n * 1000 + k % 977) / 7) for k in range(steps)
            ]
            for n in range(series)
        },
    )


def form(chunk: Window) -> dict[str, str]:
    return {"query": QUERY, "start": seconds(chunk.start_ms), "end": seconds(chunk.end_ms), "step": "1"}


def bare_parse(body: bytes) -> int:
    points = 0
    for item in orjson.loads(body)["data"]["result"]:
        parsed = [(round(t * 1000), float(v)) for t, v in item["values"]]
        points += len(parsed)
    return points


async def one_run(url: str, config: VigilConfig, chunks: list[Window]) -> dict[str, float]:
    """Seconds spent in each phase over all chunks, and the points."""
    out: dict[str, float] = {}
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        bodies = []
        for chunk in chunks:
            async with session.post(f"{url}/api/v1/query_range", data=form(chunk)) as response:
                bodies.append(await response.read())
        out["answer"] = time.perf_counter() - started
    started = time.perf_counter()
    out["points"] = float(sum(bare_parse(b) for b in bodies))
    out["bare parse"] = time.perf_counter() - started
    started = time.perf_counter()
    results = [parse_range(b) for b in bodies]
    out["Vigil's parse"] = time.perf_counter() - started
    series = [[Series("bench", "value", s.labels["instance"], s.points) for s in r.series] for r in results]
    producer = await start_producer(config.kafka)
    topic = config.kafka.topics.samples
    key = sample_key("bench", "value")
    partition = partition_for(key, config.kafka.partitions)
    try:
        started = time.perf_counter()
        for chunk_series in series:
            await asyncio.gather(
                *[await producer.send(topic, v, key=key, partition=partition) for v in messages(chunk_series)]
            )
        out["produce"] = time.perf_counter() - started
        watch = WatchConfig(
            name="bench", service="bench", queries=(QueryConfig(name="value", query=QUERY),), step_s=1
        )
        async with PrometheusClient(SourceConfig(name="bench", url=url)) as client:
            started = time.perf_counter()
            for chunk in chunks:
                got, _, _ = await poll_query(client, watch, watch.queries[0], LabelsConfig(), chunk)
                await asyncio.gather(
                    *[await producer.send(topic, v, key=key, partition=partition) for v in messages(got)]
                )
            out["end to end"] = time.perf_counter() - started
    finally:
        await producer.stop()
    return out


async def bench(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    print(f"data: {args.series} series x {args.steps} steps (1 s), {args.chunk} steps per request")
    window = Window(T0 * 1000, (T0 + args.steps - 1) * 1000, 1000)
    chunks = list(split(window, args.chunk))
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        base = VigilConfig()
        config = base.model_copy(
            update={"kafka": base.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})}
        )
        await ensure_topics(broker.bootstrap_servers, topic_names(config.kafka), config.kafka.partitions)
        started = time.perf_counter()
        with prometheus_with(data(args.series, args.steps), Path(tmp)) as prometheus:
            print(f"loaded into Prometheus in {time.perf_counter() - started:.1f} s")
            runs = [await one_run(prometheus.url, config, chunks) for _ in range(args.runs)]
    points = runs[0]["points"]
    print(f"{points:,.0f} points per run, {args.runs} runs; points/s, median (min-max):")
    rates: dict[str, float] = {}
    for phase in ("answer", "bare parse", "Vigil's parse", "produce", "end to end"):
        values = sorted(points / r[phase] for r in runs)
        rates[phase] = statistics.median(values)
        print(f"  {phase:<14} {rates[phase]:>12,.0f}   ({values[0]:,.0f} - {values[-1]:,.0f})")
    bare = 1 / (1 / rates["answer"] + 1 / rates["bare parse"])
    print(f"  {'bare baseline':<14} {bare:>12,.0f}   (answer + bare parse)")
    print(f"end to end / bare baseline: {rates['end to end'] / bare:.2f}")
    total = 1 / rates["end to end"]
    print(
        "end-to-end time, split (from the phases measured alone): "
        f"Prometheus' answer {1 / rates['answer'] / total:.0%}, "
        f"Vigil's parse {1 / rates[VIGIL_PARSE] / total:.0%}, produce {1 / rates['produce'] / total:.0%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10_800)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
