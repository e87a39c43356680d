"""Samples/s with 1 and 2 ``vigil worker`` and with 1 and 2 ``vigil ingest`` processes, on Apache Kafka.

    python -m bench.scale [--runs 5] [--requests 1000] [--backlog 600] [--in-flight 8] [--bootstrap HOST:PORT]

Everything is real: an Apache Kafka node (started here with ``tests/kafka/run-kafka.sh``, unless
``--bootstrap`` names one), ``vigil ingest`` and ``vigil worker`` processes with their default settings.
The workload is :mod:`bench.workload`: remote-write 1.0 requests of 500 series x 1 sample from 24 services
x 4 targets (counters, histograms, gauges; 3,360 series scraped every 15 s), as Prometheus sends them.

**Ingest** — the clock runs from the first request to the last 204: every sample decoded, validated,
turned into raw records and acknowledged by Kafka (``acks=all``, zstd). ``--in-flight`` requests are
outstanding at all times (Prometheus' shards send concurrently); with 2 ingest processes the client sends
each request to the next process in turn (what a round-robin load balancer does, without the extra hop a
proxy would cost on the same cores). The **bare baseline**, in the same run over the same bodies: one
process, the same number of requests in flight, each decoded with snappy + plain protobuf (upb), grouped
by partition (service, family) into the same raw JSON records and produced by a plain aiokafka producer
with the same settings, every acknowledgement awaited.

**Worker** — the samples topic is loaded with the records ingest produces for such requests (one message
per partition per request, ~125 series x 1 point with 4 partitions), as fast as a producer can write them,
while the workers consume; the clock stops when every partition is drained: a marker record sent after
the data on each partition has come back as a dead letter (a partition is processed in order). Then every
worker's metrics (``worker.metrics_port``) must show a consumer lag of 0 on each of its partitions;
prepared points are counted from ``vigil_worker_samples_processed_total``. Samples/s counts raw samples
(what Prometheus sent), for ingest and worker alike. Each run of the worker part continues the scrape
stream in time, so nothing is skipped as a duplicate.

Each figure is the **median of ``--runs`` runs, with the min-max**, printed with the cores each process
used meanwhile (from /proc) and the samples/s per core the measured processes used: on a shared machine
the share of a core a process gets wanders, and the rate per core used is the steadier figure. This
machine's core count is printed: on 2 cores, two processes plus Kafka and the load generator share the
CPU, so a ratio near 1 says the machine is full, not that Vigil does not scale.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from the repository root
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import cramjam  # noqa: E402
import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from bench import workload  # noqa: E402
from bench.common import machine  # noqa: E402
from connectors.broker import free_port  # noqa: E402
from connectors.kafka import compacted_topics, ensure_topics, start_producer, topic_names  # noqa: E402
from connectors.receiver.delivery import PRODUCER_OPTIONS  # noqa: E402
from connectors.remote_write.proto import remote_v1_pb2  # noqa: E402
from engine.config import VigilConfig, load_config  # noqa: E402
from engine.samples import RAW_KIND, WIRE_VERSION, family_of, partition_for, sample_key  # noqa: E402
from vigil.runtime import child_env  # noqa: E402

HEADERS = {
    "Content-Type": "application/x-protobuf",
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}
START_TIMEOUT_S = 120.0
DRAIN_TIMEOUT_S = 600.0


# --- configuration and processes ---------------------------------------------------------------------


def bench_config(bootstrap: str, name: str) -> VigilConfig:
    """Default settings on ``bootstrap``, with topics and a consumer group of this run's own."""
    base = load_config(None)
    topics = base.kafka.topics.model_copy(
        update={
            "samples": f"{name}.samples",
            "verdicts": f"{name}.verdicts",
            "deadletter": f"{name}.deadletter",
            "metadata": f"{name}.metadata",
        }
    )
    kafka = base.kafka.model_copy(
        update={
            "bootstrap_servers": bootstrap,
            "embedded_quirks": False,
            "app_id": f"vigil-{name}",
            "topics": topics,
        }
    )
    return base.model_copy(update={"kafka": kafka})


def env_of(config: VigilConfig, **extra: str) -> dict[str, str]:
    """The environment that makes a child ``vigil`` process use ``config``'s Kafka and topics."""
    k = config.kafka
    return child_env(config) | {
        "VIGIL_KAFKA__APP_ID": k.app_id,
        "VIGIL_KAFKA__TOPICS__SAMPLES": k.topics.samples,
        "VIGIL_KAFKA__TOPICS__VERDICTS": k.topics.verdicts,
        "VIGIL_KAFKA__TOPICS__DEADLETTER": k.topics.deadletter,
        "VIGIL_KAFKA__TOPICS__METADATA": k.topics.metadata,
        **extra,
    }


def _default_signals() -> None:  # pragma: no cover - runs in the child between fork and exec
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


@dataclass
class Child:
    """A ``vigil`` child process, its stderr in ``log``."""

    command: str
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vigil", self.command, "--loglevel", "warn"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=out,
                preexec_fn=_default_signals,
            )
        return self

    def check(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"vigil {self.command} exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}"
            )

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def children(*started: Child) -> Iterator[list[Child]]:
    running = []
    try:
        for child in started:
            child.start()
            running.append(child)
        yield running
    finally:
        for child in running:
            child.stop()


@contextlib.contextmanager
def kafka_broker(bootstrap: str | None, workdir: Path) -> Iterator[tuple[str, int | None]]:
    """(``bootstrap``, None) if given, else a fresh Apache Kafka node in ``workdir`` (stopped afterwards)
    and its JVM's PID."""
    if bootstrap:
        yield bootstrap, None
        return
    from tests.kafka.node import KafkaNode  # the same script the tests and people use

    node = KafkaNode(workdir / "kafka")
    node.start()
    try:
        yield node.bootstrap_servers, node.pid
    finally:
        node.stop()


# --- ingest ------------------------------------------------------------------------------------------


async def send_all(
    session: aiohttp.ClientSession, urls: Sequence[str], bodies: Sequence[bytes], in_flight: int
) -> float:
    """POST every body, request ``i`` to ``urls[i % len(urls)]``, ``in_flight`` at a time; seconds taken.
    Anything but 204 is an error."""
    queue = iter(enumerate(bodies))

    async def sender() -> None:
        for i, body in queue:
            async with session.post(urls[i % len(urls)], data=body, headers=HEADERS) as response:
                if response.status != 204:
                    raise RuntimeError(
                        f"{urls[i % len(urls)]} answered {response.status}: {await response.text()}"
                    )

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(in_flight)))
    return time.perf_counter() - started


class BareIngest:
    """The same work with nothing of Vigil's: snappy + upb + a naive walk, the same raw JSON records
    grouped by partition, a plain aiokafka producer with ingest's settings, every ack awaited."""

    def __init__(self, config: VigilConfig, producer: AIOKafkaProducer, partitions: int) -> None:
        self.topic = config.kafka.topics.samples
        self.service_label = config.labels.service
        self.producer = producer
        self.partitions = partitions
        self.where: dict[bytes, int] = {}

    def records(self, body: bytes) -> dict[int, bytes]:
        request = remote_v1_pb2.WriteRequest()
        request.ParseFromString(bytes(cramjam.snappy.decompress_raw(body)))
        by_partition: dict[int, list[dict[str, Any]]] = {}
        for ts in request.timeseries:
            labels = {label.name: label.value for label in ts.labels}
            key = sample_key(labels.get(self.service_label, ""), family_of(labels.get("__name__", "")))
            p = self.where.get(key)
            if p is None:
                p = self.where[key] = partition_for(key, self.partitions)
            samples = [[s.timestamp, s.value] for s in ts.samples]
            by_partition.setdefault(p, []).append({"labels": labels, "samples": samples})
        return {
            p: orjson.dumps({"v": WIRE_VERSION, "kind": RAW_KIND, "series": series})
            for p, series in by_partition.items()
        }

    async def run(self, bodies: Sequence[bytes], in_flight: int) -> float:
        queue = iter(bodies)

        async def sender() -> None:
            for body in queue:
                sent = [
                    await self.producer.send(self.topic, value, partition=p)
                    for p, value in self.records(body).items()
                ]
                await asyncio.gather(*sent)

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(in_flight)))
        return time.perf_counter() - started


async def ready(session: aiohttp.ClientSession, url: str, child: Child) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        child.check()
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{url}/-/ready") as response:
                if response.status == 200:
                    return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} never became ready:\n{child.log.read_text()[-3000:]}")
        await asyncio.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Cpu:
    """Cores used by named processes during a timed section (``None`` for this process itself)."""

    def __init__(self, processes: dict[str, list[int | None]]) -> None:
        self.processes = processes
        self.cores: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {
            name: sum(time.process_time() if pid is None else cpu_seconds(pid) for pid in pids)
            for name, pids in self.processes.items()
        }

    def __enter__(self) -> Cpu:
        self._before = self._now()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self._started
        after = self._now()
        self.cores = {name: (after[name] - self._before[name]) / elapsed for name in after}


def cores_text(cores: Sequence[dict[str, float]]) -> str:
    """Median cores per process name, e.g. ``ingest 0.98, kafka 0.31``."""
    names = list(cores[0]) if cores else []
    return ", ".join(f"{name} {statistics.median(c[name] for c in cores):.2f}" for name in names)


@dataclass
class Figure:
    """Samples/s of one configuration over the runs, and the cores each process used meanwhile."""

    rates: list[float] = field(default_factory=list)
    cores: list[dict[str, float]] = field(default_factory=list)
    prepared: list[float] = field(default_factory=list)  # prepared points judged per second (worker)


async def end_offsets(producer: AIOKafkaProducer, config: VigilConfig, partitions: int) -> int:
    """Records on the samples topic so far (sum of the partitions' end offsets; exact on Apache Kafka)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=config.kafka.bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(config.kafka.topics.samples, p) for p in range(partitions)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def measure_ingest(
    config: VigilConfig, workdir: Path, runs: int, requests: int, in_flight: int, kafka_pid: int | None
) -> dict[str, Figure]:
    """Figures for ``bare``, ``1 ingest`` and ``2 ingests``, measured in turn within each run over the
    same bodies (ingest keeps no series state: a body sent again is the same work)."""
    bodies = workload.requests(0, requests)
    samples = requests * workload.SERIES_PER_REQUEST
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    writes = [f"{u}/api/v1/write" for u in urls]
    ingests = [
        Child("ingest", env_of(config, VIGIL_RECEIVER__PORT=str(p)), workdir / f"ingest{i}.log")
        for i, p in enumerate(ports)
    ]
    out = {name: Figure() for name in ("bare", "1 ingest", "2 ingests")}
    with children(*ingests):
        pids: list[int | None] = [c.process.pid for c in ingests if c.process is not None]
        kafka: list[int | None] = [kafka_pid] if kafka_pid else []
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            for url, child in zip(urls, ingests, strict=True):
                await ready(session, url, child)
            producer = await start_producer(config.kafka, **PRODUCER_OPTIONS)
            try:
                partitions = len(await producer.partitions_for(config.kafka.topics.samples))
                expected = len(workload.raw_messages(config, bodies, partitions))
                bare = BareIngest(config, producer, partitions)
                warm = bodies[: min(len(bodies), 40)]  # label caches, connections
                await bare.run(warm, in_flight)
                await send_all(session, writes, warm, in_flight)

                async def bare_run() -> float:
                    return await bare.run(bodies, in_flight)

                async def one_run() -> float:
                    return await send_all(session, writes[:1], bodies, in_flight)

                async def two_run() -> float:
                    return await send_all(session, writes, bodies, in_flight)

                plan: dict[str, tuple[Callable[[], Awaitable[float]], dict[str, list[int | None]]]] = {
                    "bare": (bare_run, {"bare (this process)": [None], "kafka": kafka}),
                    "1 ingest": (
                        one_run,
                        {"ingest": pids[:1], "load generator": [None], "kafka": kafka},
                    ),
                    "2 ingests": (
                        two_run,
                        {"ingests": pids, "load generator": [None], "kafka": kafka},
                    ),
                }
                for run in range(runs):
                    for name, (timed, processes) in plan.items():
                        before = await end_offsets(producer, config, partitions)
                        with Cpu(processes) as cpu:
                            seconds = await timed()
                        written = await end_offsets(producer, config, partitions) - before
                        if written != expected:
                            raise RuntimeError(f"{name}: {written} records on Kafka, {expected} expected")
                        out[name].rates.append(samples / seconds)
                        out[name].cores.append(cpu.cores)
                    for child in ingests:
                        child.check()
                    print(
                        f"  ingest run {run + 1}: "
                        + ", ".join(f"{name} {f.rates[-1]:,.0f}" for name, f in out.items())
                        + " samples/s",
                        flush=True,
                    )
            finally:
                await producer.stop()
    return out


# --- worker ------------------------------------------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    """A worker's metrics by name{labels}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            found[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return found


_LAG = re.compile(r'vigil_worker_consumer_lag\{partition="(\d+)",topic="([^"]*)"\}')


def lags(metrics: dict[str, float], topic: str) -> dict[int, float]:
    """Consumer lag by partition of ``topic``."""
    out = {}
    for name, value in metrics.items():
        found = _LAG.fullmatch(name)
        if found and found.group(2) == topic:
            out[int(found.group(1))] = value
    return out


class Worker(Child):
    """A ``vigil worker`` serving its metrics on a port of its own."""

    def __init__(self, config: VigilConfig, log: Path) -> None:
        self.port = free_port()
        super().__init__("worker", env_of(config, VIGIL_WORKER__METRICS_PORT=str(self.port)), log)

    def metrics(self) -> dict[str, float]:
        self.check()
        try:
            return scrape(self.port)
        except OSError:
            return {}  # not serving yet (table recovery)


class Drain:
    """Loads the samples topic and tells when every partition has been processed up to a marker."""

    def __init__(self, config: VigilConfig, producer: AIOKafkaProducer, partitions: int) -> None:
        self.topic = config.kafka.topics.samples
        self.producer = producer
        self.partitions = partitions
        self.deadletters = AIOKafkaConsumer(
            bootstrap_servers=config.kafka.bootstrap_servers, group_id=None, enable_auto_commit=False
        )
        self.deadletter_topic = config.kafka.topics.deadletter
        self.markers = 0

    async def start(self) -> None:
        await self.deadletters.start()
        parts = await self.producer.partitions_for(self.deadletter_topic)
        tps = [TopicPartition(self.deadletter_topic, p) for p in sorted(parts)]
        self.deadletters.assign(tps)
        await self.deadletters.seek_to_end(*tps)
        for tp in tps:
            await self.deadletters.position(tp)  # resolved now, before any marker is sent

    async def stop(self) -> None:
        await self.deadletters.stop()

    async def load(self, messages: Sequence[tuple[int, bytes]]) -> float:
        """Produce ``messages`` (partition, value) in order; seconds until all are acknowledged."""
        started = time.perf_counter()
        for p, value in messages:
            await self.producer.send(self.topic, value, partition=p)
        await self.producer.flush()
        return time.perf_counter() - started

    async def finish_line(self, timeout: float) -> None:
        """Send a marker after everything on each partition and wait until each came back as a dead letter:
        then every record before it has been processed."""
        self.markers += 1
        wanted = {f"bench marker {self.markers} {p}".encode() for p in range(self.partitions)}
        for marker in wanted:
            await self.producer.send(self.topic, marker, partition=int(marker.rsplit(b" ", 1)[1]))
        await self.producer.flush()
        deadline = time.monotonic() + timeout
        while wanted:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(wanted)} partitions not drained after {timeout:.0f}s")
            for records in (await self.deadletters.getmany(timeout_ms=100)).values():
                for record in records:
                    doc = orjson.loads(record.value) if record.value else {}
                    wanted.discard(base64.b64decode(doc.get("payload_base64", "")))


async def settle(drain: Drain, workers: Sequence[Worker]) -> None:
    """Wait until the partitions are split over ``workers`` (each has some, none twice) and every one
    has processed a marker: the group is stable and every worker past table recovery."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        await drain.finish_line(START_TIMEOUT_S)
        owned = [set(lags(w.metrics(), drain.topic)) for w in workers]
        everyone = set().union(*owned)
        if all(owned) and sum(map(len, owned)) == len(everyone) == drain.partitions:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"partitions never split over {len(workers)} workers: {owned}")
        await asyncio.sleep(1.0)


def processed(workers: Sequence[Worker]) -> float:
    return sum(w.metrics().get("vigil_worker_samples_processed_total", 0.0) for w in workers)


class Stream:
    """Consecutive slices of the scrape stream, as raw messages: each backlog later in time than the last."""

    def __init__(self, config: VigilConfig, partitions: int) -> None:
        self.config = config
        self.partitions = partitions
        self.next = 0

    def take(self, requests: int) -> list[tuple[int, bytes]]:
        bodies = workload.requests(self.next, requests)
        self.next += requests
        return workload.raw_messages(self.config, bodies, self.partitions)


async def drain_once(
    drain: Drain, workers: Sequence[Worker], messages: list[tuple[int, bytes]]
) -> tuple[float, float, float]:
    """Load ``messages`` and wait until the workers drained them: (seconds, prepared points judged,
    seconds the load took)."""
    before = processed(workers)
    started = time.perf_counter()
    load_s = await drain.load(messages)
    await drain.finish_line(DRAIN_TIMEOUT_S)
    elapsed = time.perf_counter() - started
    # A worker counts a record processed just after delivering what it caused (the marker's dead letter the
    # finish line saw): its lag reaches 0 a moment later.
    deadline = time.monotonic() + 10
    for w in workers:
        while behind := {p: lag for p, lag in lags(w.metrics(), drain.topic).items() if lag}:
            if time.monotonic() > deadline:
                raise RuntimeError(f"a worker reports lag after the drain: {behind}")
            await asyncio.sleep(0.05)
    return elapsed, processed(workers) - before, load_s


async def measure_workers(
    config: VigilConfig, workdir: Path, runs: int, requests: int, kafka_pid: int | None
) -> dict[str, Figure]:
    """Figures for ``1 worker`` (all its runs), then ``2 workers`` (a second one joins)."""
    producer = await start_producer(config.kafka, **PRODUCER_OPTIONS)
    partitions = len(await producer.partitions_for(config.kafka.topics.samples))
    stream = Stream(config, partitions)
    samples = requests * workload.SERIES_PER_REQUEST
    drain = Drain(config, producer, partitions)
    out = {"1 worker": Figure(), "2 workers": Figure()}
    workers = [Worker(config, workdir / f"worker{i}.log") for i in range(2)]
    kafka: list[int | None] = [kafka_pid] if kafka_pid else []
    try:
        await drain.start()
        with children(workers[0]):
            for count, figure in zip((1, 2), out.values(), strict=True):
                if count == 2:
                    workers[1].start()
                active = workers[:count]
                started = time.perf_counter()
                await settle(drain, active)
                print(f"  {count} worker(s) ready in {time.perf_counter() - started:.1f}s", flush=True)
                await drain_once(drain, active, stream.take(max(10, requests // 4)))  # warm-up
                pids: list[int | None] = [w.process.pid for w in active if w.process is not None]
                processes: dict[str, list[int | None]] = {
                    "workers" if count > 1 else "worker": pids,
                    "loader": [None],
                    "kafka": kafka,
                }
                for run in range(runs):
                    messages = stream.take(requests)  # built before the clock starts
                    with Cpu(processes) as cpu:
                        seconds, points, load_s = await drain_once(drain, active, messages)
                    figure.rates.append(samples / seconds)
                    figure.prepared.append(points / seconds)
                    figure.cores.append(cpu.cores)
                    print(
                        f"  {count} worker(s) run {run + 1}: {samples / seconds:,.0f} raw samples/s "
                        f"({points / seconds:,.0f} prepared points/s; {len(messages)} messages loaded "
                        f"in {load_s:.2f}s; cores: {cores_text([cpu.cores])})",
                        flush=True,
                    )
            workers[1].stop()
    finally:
        workers[1].stop()
        await drain.stop()
        await producer.stop()
    return out


# --- report ------------------------------------------------------------------------------------------


def spread(values: Sequence[float], fmt: str = ",.0f") -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=True)]


def report(figures: dict[str, Figure], runs: int) -> None:
    width = max(map(len, figures))
    for name, figure in figures.items():
        extra = f"  prepared points/s {spread(figure.prepared)}" if figure.prepared else ""
        print(f"  {name:<{width}}  {spread(figure.rates):>28}{extra}")
        print(f"  {'':<{width}}  cores used (median): {cores_text(figure.cores)}")
        if figure.cores:
            measured = next(iter(figure.cores[0]))  # the processes measured come first
            per_core = [
                r / c[measured] for r, c in zip(figure.rates, figure.cores, strict=True) if c[measured]
            ]
            if per_core:
                print(f"  {'':<{width}}  per core used by {measured}: {spread(per_core)} samples/s")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per figure: median and min-max are shown")
    parser.add_argument(
        "--requests", type=int, default=1000, help="ingest part: remote-write requests (500 samples) per run"
    )
    parser.add_argument(
        "--backlog", type=int, default=600, help="worker part: requests' worth of raw records per run"
    )
    parser.add_argument("--in-flight", type=int, default=8, help="requests outstanding (ingest part)")
    parser.add_argument("--bootstrap", help="an Apache Kafka to use instead of starting one")
    parser.add_argument("--part", choices=["all", "ingest", "worker"], default="all")
    args = parser.parse_args(argv)

    cores = os.cpu_count()
    print(f"scale benchmark on {machine()}")
    print(
        f"NOTE: this machine has {cores} cores. Every process below (ingest or worker processes, Apache "
        "Kafka's JVM, this load generator) shares them: a 2-vs-1 ratio is bounded by the machine, not only "
        "by Vigil; the cores each process used are printed with every figure."
    )
    print(
        f"workload: remote-write 1.0, {workload.SERIES_PER_REQUEST} series x 1 sample per request, "
        f"{len(workload.pool())} series of 24 services scraped every 15 s; per run: {args.requests} "
        f"requests to ingest, a backlog of {args.backlog} requests' raw records for the workers; "
        f"{args.runs} runs",
        flush=True,
    )
    results: dict[str, dict[str, Figure]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp,
        kafka_broker(args.bootstrap, Path(tmp)) as (bootstrap, kafka_pid),
    ):
        workdir = Path(tmp)
        name = f"bench{os.getpid()}"
        for part in ("ingest", "worker"):
            if args.part not in ("all", part):
                continue
            config = bench_config(bootstrap, f"{name}-{part}")
            kafka = config.kafka
            asyncio.run(
                ensure_topics(
                    bootstrap, topic_names(kafka), kafka.partitions, compacted=compacted_topics(kafka)
                )
            )
            print(
                f"\n{part} part on Apache Kafka at {bootstrap} ({kafka.partitions} partitions):", flush=True
            )
            if part == "ingest":
                results[part] = asyncio.run(
                    measure_ingest(config, workdir, args.runs, args.requests, args.in_flight, kafka_pid)
                )
            else:
                results[part] = asyncio.run(
                    measure_workers(config, workdir, args.runs, args.backlog, kafka_pid)
                )
    print(
        f"\nsamples/s (raw samples, as Prometheus sent them), median (min-max) of {args.runs} runs, "
        f"{cores} cores"
    )
    if "ingest" in results:
        ing = results["ingest"]
        print(
            f"ingest: HTTP -> decoded -> acknowledged by Kafka (acks=all), {args.in_flight} requests "
            "in flight"
        )
        report(ing, args.runs)
        one, two, bare = (ing[n].rates for n in ("1 ingest", "2 ingests", "bare"))
        print(f"  ratio 2 ingests / 1 ingest:  {spread(ratios(two, one), '.2f')}  (run by run)")
        print(f"  ratio 1 ingest / bare:       {spread(ratios(one, bare), '.2f')}")
        print(f"  ratio 2 ingests / bare:      {spread(ratios(two, bare), '.2f')}")
    if "worker" in results:
        work = results["worker"]
        print("worker: backlog of raw records on Kafka -> prepared, judged, drained")
        report(work, args.runs)
        single, double = (statistics.median(work[n].rates) for n in ("1 worker", "2 workers"))
        print(f"  ratio 2 workers / 1 worker:  {double / single:.2f}  (of the medians)")


if __name__ == "__main__":
    main()
