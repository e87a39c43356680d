"""Anomaly events per second through a notifier to a local sink, against a bare consume-and-POST loop.

    python bench/notify.py [--events 2000] [--runs 3]

An embedded broker is started here and ``--events`` anomaly events (as a worker writes them, 30 series per
service) are put on a verdicts topic. A local aiohttp sink answers every POST with 204. Measured, each on a
topic of its own, from the first record read to the last one acknowledged by the sink:

* **bare** — an aiokafka consumer (no group) reading the topic and POSTing each record's value, one request
  at a time: the best a webhook notifier could do on this path;
* **webhook** — Vigil's webhook notifier (consumer group, parsing and checking, signing, commits);
* **slack** — Vigil's Slack notifier (grouped: one message per service per ``group_interval_s``, here
  0.05 s), counted in events.

Each figure is the median of ``--runs`` runs with the min-max. The ratio compares each notifier with bare.
The delay from a sample at ingest to the alert at Alertmanager is bench/alerting.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import re
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
from aiohttp import web  # noqa: E402
from aiokafka import AIOKafkaConsumer  # noqa: E402

from bench.common import machine  # noqa: E402
from connectors.broker import EmbeddedBroker  # noqa: E402
from connectors.kafka import ensure_topics, start_producer  # noqa: E402
from connectors.notify.service import Notifier  # noqa: E402
from connectors.notify.stats import NotifyStats  # noqa: E402
from engine import events  # noqa: E402
from engine.config import NotifierConfig, VigilConfig, load_config  # noqa: E402
from engine.guard import Transition, TransitionKind  # noqa: E402


class Sink:
    """Counts events: one per request, or for a Slack message the count on its first line."""

    def __init__(self) -> None:
        self.events = 0
        self.last = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        if "text" in body:
            found = re.search(r": (\d+) anomal", body["text"])
            self.events += int(found.group(1)) if found else 0
        else:
            self.events += 1
        self.last = time.perf_counter()
        return web.Response(status=204)


def anomaly_events(config: VigilConfig, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        t = Transition(TransitionKind.OPENED, 1_700_000_000_000 + i, 900.0, 2.0, 2.0, 200.0, 300.0, i, i)
        rule = config.rule_for("http_errors_total:rate")
        out.append(
            events.encode(events.anomaly_event(f"svc-{i // 30}", "http_errors_total:rate", f"p{i}", rule, t))
        )
    return out


async def fill(config: VigilConfig, topic: str, values: list[bytes]) -> None:
    await ensure_topics(config.kafka.bootstrap_servers, [topic], config.kafka.partitions)
    producer = await start_producer(config.kafka, linger_ms=5)
    try:
        await asyncio.gather(*[producer.send(topic, v) for v in values])
        await producer.flush()
    finally:
        await producer.stop()


async def bare(config: VigilConfig, topic: str, n: int, url: str, sink: Sink) -> float:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=config.kafka.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    start = None
    try:
        async with aiohttp.ClientSession() as session:
            while sink.events < n:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for r in records:
                        start = start or time.perf_counter()
                        async with session.post(url, data=r.value) as resp:
                            await resp.read()
    finally:
        await consumer.stop()
    assert start is not None
    return n / (sink.last - start)


async def notifier(
    config: VigilConfig, topic: str, n: int, kind: str, url: str, sink: Sink, tmp: Path
) -> float:
    url_file = tmp / "url"
    url_file.write_text(url)
    settings: dict[str, object] = {"name": f"b{time.monotonic_ns()}", "type": kind}
    if kind == "slack":
        settings |= {"webhook_url_file": str(url_file), "group_interval_s": 0.05}
    else:
        settings |= {"url": url}
    topics = config.kafka.topics.model_copy(update={"verdicts": topic})
    cfg = config.model_copy(update={"kafka": config.kafka.model_copy(update={"topics": topics})})
    n_cfg = NotifierConfig(**settings)  # type: ignore[arg-type]
    worker = Notifier(cfg, n_cfg, NotifyStats(), since_ms=0)
    first: list[float] = []
    original = worker.take

    def take(tp, record):  # type: ignore[no-untyped-def]
        if not first:
            first.append(time.perf_counter())
        original(tp, record)

    worker.take = take  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    deadline = time.monotonic() + 300
    while sink.events < n and time.monotonic() < deadline:  # noqa: ASYNC110 - a counter, not an event
        await asyncio.sleep(0.01)
    stop.set()
    await task
    return n / (sink.last - first[0])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        base = load_config(None)
        config = base.model_copy(
            update={
                "kafka": base.kafka.model_copy(
                    update={"bootstrap_servers": broker.bootstrap_servers, "embedded_quirks": True}
                )
            }
        )
        values = anomaly_events(config, args.events)
        sink = Sink()
        app = web.Application()
        app.router.add_post("/", sink.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/"  # type: ignore[union-attr]
        figures: dict[str, list[float]] = {"bare": [], "webhook": [], "slack": []}
        try:
            for run in range(args.runs):
                for name in figures:
                    topic = f"bench-notify-{name}-{run}"
                    await fill(config, topic, values)
                    sink.events = 0
                    if name == "bare":
                        figures[name].append(await bare(config, topic, args.events, url, sink))
                    else:
                        figures[name].append(
                            await notifier(config, topic, args.events, name, url, sink, Path(tmp))
                        )
        finally:
            await runner.cleanup()
    best = statistics.median(figures["bare"])
    print(f"{args.events} anomaly events, {args.runs} runs, embedded broker, local sink answering 204")
    for name, values_ in figures.items():
        med = statistics.median(values_)
        print(
            f"{name:<8} {med:,.0f} ({min(values_):,.0f}-{max(values_):,.0f}) events/s"
            f"  ratio vs bare {med / best:.2f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
