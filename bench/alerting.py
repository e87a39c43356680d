"""The delay from a sample's arrival at ingest to its alert at Alertmanager, on the embedded broker.

    python -m bench.alerting [--series 20] [--runs 3] [--pace 0.25]

Started here: an embedded broker, a real Alertmanager (Debian's ``prometheus-alertmanager``), ``vigil
ingest`` and ``vigil worker`` processes, and an Alertmanager notifier in this process. Per run, ``--series``
gauges of a metric of the run's own (one per instance) learn 250 samples, sent as fast as ingest takes them
(remote-write 1.0, every series x 1 sample per request: Prometheus' shape); once the worker has caught up,
the incident — every series at 5x its level — is sent one request every ``--pace`` s. Alertmanager's alerts
are read every 20 ms. A series' delay runs from the answer (204) to the request holding the sample that
opened its anomaly (the alert's ``window_end``) to the first read that shows its alert.

Baseline, measured in the same run for the same incident requests: the path's floor without Vigil's
judging — a consumer of the samples topic (no group) seeing the record ingest wrote for the request, plus
an alert POSTed straight to Alertmanager until a read shows it. The ratio is Vigil's delay over it. Figures
are the median, p99 and min-max over every series of every run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from the repository root
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402

from bench.common import machine  # noqa: E402
from bench.scale import Child, Worker, bench_config, children, env_of, ready  # noqa: E402
from connectors.broker import EmbeddedBroker, free_port  # noqa: E402
from connectors.kafka import (  # noqa: E402
    FETCH_WAIT_MS,
    compacted_topics,
    ensure_topics,
    topic_names,
)
from connectors.notify.service import Notifier  # noqa: E402
from connectors.notify.stats import NotifyStats  # noqa: E402
from engine.config import NotifierConfig, NotifierType, VigilConfig  # noqa: E402
from tests.fixtures.alertmanager import Alertmanager  # noqa: E402
from tests.fixtures.remote_write import V1_CONTENT_TYPE, Series, v1_body  # noqa: E402

STEP_MS = 15_000
LEARN = 250
INCIDENT = 12
POLL_S = 0.02


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def ms_of(rfc3339: str) -> int:
    return int(datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1000)


class Ingest:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def send(self, metric: str, series: int, ts: int, level: list[float]) -> float:
        """POST one request (every series x 1 sample at ``ts``); the wall time of its 204."""
        body = v1_body(
            Series(
                labels=[("__name__", metric), ("instance", f"pod-{i}"), ("job", "checkout")],
                samples=[(ts, level[i])],
            )
            for i in range(series)
        )
        headers = {"Content-Type": V1_CONTENT_TYPE, "Content-Encoding": "snappy"}
        async with self.session.post(f"{self.url}/api/v1/write", data=body, headers=headers) as r:
            if r.status != 204:
                raise RuntimeError(f"ingest answered {r.status}: {await r.text()}")
        return time.monotonic()


class Seen:
    """Reads Alertmanager's active alerts every :data:`POLL_S`; the first time each alert was seen."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url
        self.first: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}
        self._changed = asyncio.Event()

    async def until(self, keys: list[tuple[str, str]], timeout: float) -> None:
        """Until every one of ``keys`` has been seen, or ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not all(k in self.first for k in keys):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def run(self) -> None:
        while True:
            async with self.session.get(f"{self.url}/api/v2/alerts") as r:
                alerts = await r.json()
            now = time.monotonic()
            for a in alerts:
                key = (
                    a["labels"].get("alertname", ""),
                    a["labels"].get("metric", "") + a["labels"].get("instance", ""),
                )
                if key not in self.first:
                    self.first[key] = (now, a["annotations"])
                    self._changed.set()
            await asyncio.sleep(POLL_S)


async def wait_processed(worker: Worker, at_least: float, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while worker.metrics().get("vigil_worker_samples_processed_total", 0.0) < at_least:
        if time.monotonic() > deadline:
            raise RuntimeError("the worker did not catch up")
        await asyncio.sleep(0.2)


async def floor(
    config: VigilConfig, ingest: Ingest, seen: Seen, metric: str, series: int, t0: int
) -> list[float]:
    """Baseline delays: ingest → a consumer of the samples topic, plus a direct POST until Alertmanager
    shows it, for ``INCIDENT`` requests sent at the same pace."""
    k = config.kafka
    consumer = AIOKafkaConsumer(  # asking with the short fetch wait the embedded broker needs, as Vigil does
        bootstrap_servers=k.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=FETCH_WAIT_MS,
    )
    await consumer.start()
    delays = []
    try:
        parts = [TopicPartition(k.topics.samples, p) for p in range(k.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_end(*parts)
        for tp in parts:
            await consumer.position(tp)
        for i in range(INCIDENT):
            sent = await ingest.send(metric, series, t0 + i * STEP_MS, [1.0] * series)
            needle = f"{metric}".encode()
            found = False
            while not found:
                batch = await consumer.getmany(timeout_ms=1000)
                found = any(needle in (r.value or b"") for rs in batch.values() for r in rs)
            arrived = time.monotonic()
            name = f"floor-{metric}-{i}"
            alert = [{"labels": {"alertname": name, "metric": name}, "annotations": {}}]
            async with ingest.session.post(f"{seen.url}/api/v2/alerts", json=alert) as r:
                r.raise_for_status()
            await seen.until([(name, name)], 30)
            delays.append(arrived - sent + seen.first[(name, name)][0] - arrived)
    finally:
        await consumer.stop()
    return delays


async def one_run(
    config: VigilConfig, ingest: Ingest, seen: Seen, worker: Worker, run: int, series: int, pace: float
) -> tuple[list[float], list[float]]:
    rng = random.Random(run)
    metric = f"bench_queue_depth_r{run}"
    base = [100.0 + 10 * i for i in range(series)]
    t0 = int(time.time() * 1000) - (LEARN + INCIDENT + 5) * STEP_MS
    before = worker.metrics().get("vigil_worker_samples_processed_total", 0.0)
    for n in range(LEARN):
        await ingest.send(metric, series, t0 + n * STEP_MS, [b * (1 + rng.gauss(0, 0.02)) for b in base])
    await wait_processed(worker, before + LEARN * series)
    sent: dict[int, float] = {}
    start = t0 + LEARN * STEP_MS
    for n in range(INCIDENT):
        ts = start + n * STEP_MS
        sent[ts] = await ingest.send(metric, series, ts, [5 * b * (1 + rng.gauss(0, 0.02)) for b in base])
        await asyncio.sleep(pace)
    keys = [("VigilAnomaly", f"{metric}pod-{i}") for i in range(series)]
    await seen.until(keys, 60)
    delays = []
    early = 0  # alerts of a sample before the incident (a false alarm while learning): no delay to measure
    for k in keys:
        if k in seen.first:
            at, annotations = seen.first[k]
            opened_by = ms_of(annotations["window_end"])
            if opened_by in sent:
                delays.append(at - sent[opened_by])
            else:
                early += 1
    missing = len(keys) - len(delays) - early
    if missing or early:
        print(
            f"  run {run + 1}: of {series} series, {missing} raised no alert within 60 s, "
            f"{early} before the incident"
        )
    bare = await floor(config, ingest, seen, f"bench_floor_r{run}", series, t0)
    return delays, bare


def spread(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"p50 {statistics.median(ms):,.0f} ms, p99 {percentile(ms, 0.99):,.0f} ms "
        f"({min(ms):,.0f}-{max(ms):,.0f}, n={len(ms)})"
    )


async def measure(config: VigilConfig, runs: int, series: int, pace: float, workdir: Path) -> None:
    k = config.kafka
    await ensure_topics(k.bootstrap_servers, topic_names(k), k.partitions, compacted=compacted_topics(k))
    am = Alertmanager(workdir / "alertmanager").start()
    port = free_port()
    worker = Worker(config, workdir / "worker.log")
    ingest_child = Child("ingest", env_of(config, VIGIL_RECEIVER__PORT=str(port)), workdir / "ingest.log")
    notifier = Notifier(
        config, NotifierConfig(name="am", type=NotifierType.ALERTMANAGER, url=am.url), NotifyStats()
    )
    stop = asyncio.Event()
    try:
        with children(ingest_child, worker):
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{port}"
                await ready(session, url, ingest_child)
                ingest, seen = Ingest(session, url), Seen(session, am.url)
                tasks = [asyncio.create_task(notifier.run(stop)), asyncio.create_task(seen.run())]
                vigil: list[float] = []
                bare: list[float] = []
                for run in range(runs):
                    delays, floor_delays = await one_run(config, ingest, seen, worker, run, series, pace)
                    vigil += delays
                    bare += floor_delays
                    print(f"  run {run + 1}: vigil {spread(delays)}; bare {spread(floor_delays)}", flush=True)
                stop.set()
                tasks[1].cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*tasks)
    finally:
        am.stop()
    print(f"\ningest -> Alertmanager, {runs} runs x {series} series, a request every {pace} s:")
    print(f"  vigil (ingest, worker, verdict, notifier, Alertmanager): {spread(vigil)}")
    print(f"  bare  (ingest -> samples consumer, direct POST to Alertmanager): {spread(bare)}")
    ratio = statistics.median(vigil) / statistics.median(bare)
    print(f"  ratio of medians vigil / bare: {ratio:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pace", type=float, default=0.25, help="seconds between incident requests")
    args = parser.parse_args()
    print(f"alerting delay benchmark on {machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="vigil-bench-alerting-") as tmp:
        broker = EmbeddedBroker().start()
        try:
            config = bench_config(broker.bootstrap_servers, f"alert{int(time.time())}")
            config = config.model_copy(
                update={"kafka": config.kafka.model_copy(update={"embedded_quirks": True})}
            )
            asyncio.run(measure(config, args.runs, args.series, args.pace, Path(tmp)))
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
