"""``vigil demo``: synthetic services with injected incidents, streamed through the real pipeline.

An embedded broker and a real worker process run as in ``vigil run``. This process plays Prometheus and the
ingest: at 20 simulated minutes per second it scrapes synthetic instances of three services — request
counters by status code, a latency histogram, a memory gauge — and produces them as raw series (wire format
v2, keyed by service and metric family), as ingest does; the worker prepares them (counters to rates,
histogram buckets to p50/p90/p99) and detects. It shows the verdicts as they arrive.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.live import Live
from rich.table import Table

from connectors.kafka import follow, start_producer
from engine.config import VigilConfig
from engine.raw import RawSeries
from engine.records import encode_raw
from engine.samples import family_of, partition_for, sample_key
from vigil.runtime import kafka_for, signals_raise, spawn, stop_all

STEP_MS = 60_000  # one simulated minute per step
STEPS_PER_SECOND = 20
DAY_STEPS = 24 * 60


@dataclass(frozen=True)
class Incident:
    service: str
    metric: str  # the prepared series it shows in
    instance: str | None  # None: every instance
    start: int
    steps: int
    what: str
    latency: float = 1.0  # factor on request latency
    errors: float = 1.0  # factor on the error rate
    traffic: float = 1.0  # factor on the request rate


@dataclass(frozen=True)
class Service:
    name: str
    rps: float  # requests per second at the daily mean
    latency: float  # median latency, seconds
    error_share: float


SERVICES = (
    Service("checkout", 120.0, 0.08, 0.004),
    Service("search", 300.0, 0.03, 0.002),
    Service("payments", 40.0, 0.15, 0.003),
)
INSTANCES = ("0", "1")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, math.inf)
INCIDENTS = (
    Incident(
        "checkout", "http_request_duration_seconds:p90", "checkout-1", 200, 15, "slow instance", latency=4.0
    ),
    Incident("search", 'http_requests_total:rate{code="500"}', None, 350, 20, "error burst", errors=15.0),
    Incident("payments", 'http_requests_total:rate{code="200"}', None, 500, 25, "traffic drop", traffic=0.3),
)


@dataclass
class Instance:
    """Cumulative counters of one instance, as Prometheus would scrape them."""

    service: Service
    name: str
    ok: float = 0.0
    errors: float = 0.0
    buckets: list[float] = field(default_factory=lambda: [0.0] * len(BUCKETS))
    count: float = 0.0
    total: float = 0.0

    def scrape(self, step: int, ts: int, rng: random.Random) -> list[RawSeries]:
        svc = self.service
        latency, errors, traffic = 1.0, 1.0, 1.0
        for i in INCIDENTS:
            if (
                i.service == svc.name
                and i.instance in (None, self.name)
                and i.start <= step < i.start + i.steps
            ):
                latency, errors, traffic = i.latency, i.errors, i.traffic
        daily = 1 + 0.4 * math.sin(2 * math.pi * step / DAY_STEPS)
        requests = max(0.0, rng.gauss(svc.rps * daily * traffic, svc.rps * 0.03)) * STEP_MS / 1000
        failed = min(
            requests,
            max(0.0, rng.gauss(requests * svc.error_share * errors, requests * svc.error_share * 0.15)),
        )
        self.ok += requests - failed
        self.errors += failed
        # 200 sampled observations stand for this step's requests in the latency histogram.
        weight = requests / 200
        for _ in range(200):
            observed = rng.lognormvariate(math.log(svc.latency * latency), 0.5)
            self.total += observed * weight
            for b, bound in enumerate(BUCKETS):
                if observed <= bound:
                    self.buckets[b] += weight
        self.count += requests
        base = (("instance", self.name), ("job", svc.name))

        def series(name: str, value: float, *extra: tuple[str, str]) -> RawSeries:
            return RawSeries(labels=tuple(sorted((("__name__", name), *base, *extra))), samples=[(ts, value)])

        memory = 5.0e8 * (1 + 0.01 * rng.gauss(0, 1))
        return [
            series("http_requests_total", self.ok, ("code", "200")),
            series("http_requests_total", self.errors, ("code", "500")),
            *(
                series(
                    "http_request_duration_seconds_bucket",
                    count,
                    ("le", "+Inf" if math.isinf(b) else repr(b)),
                )
                for b, count in zip(BUCKETS, self.buckets, strict=True)
            ),
            series("http_request_duration_seconds_count", self.count),
            series("http_request_duration_seconds_sum", self.total),
            series("process_resident_memory_bytes", memory),
        ]


@dataclass
class Scoreboard:
    sent: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)

    def table(self, elapsed: float, seconds: float) -> Table:
        table = Table(title=f"Vigil demo — {elapsed:4.0f}/{seconds:.0f}s, {self.sent} samples streamed")
        for column in ("sim. time", "event", "service / metric / instance", "value", "expected", "score"):
            table.add_column(column)
        for e in self.events[-15:]:
            d = e["data"]
            table.add_row(
                e["time"][5:16].replace("T", " "),
                "[red]opened[/]" if e["type"].endswith("opened") else "[green]resolved[/]",
                f"{d['service']} / {d['metric']} / {d['instance']}",
                _num(d["value"]),
                f"{_num(d['expected']['low'])} … {_num(d['expected']['high'])}",
                _num(d["score"]),
            )
        return table


def _num(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) else "—"


def _caused_by(event: dict[str, Any], incident: Incident, start_ms: int) -> bool:
    """An anomaly opened on the incident's service (and instance) while it ran, in any metric."""
    begin = start_ms + incident.start * STEP_MS
    end = begin + (incident.steps + 10) * STEP_MS
    return bool(
        event["service"] == incident.service
        and incident.instance in (None, event["instance"])
        and begin <= event["window"]["start_ms"] < end
    )


def summary(board: Scoreboard, start_ms: int, steps_sent: int) -> list[str]:
    lines = []
    opened = [e["data"] for e in board.events if e["type"].endswith("opened")]
    detected = 0
    for incident in INCIDENTS:
        name = f"{incident.service} {incident.what}"
        hits = [d for d in opened if _caused_by(d, incident, start_ms)]
        if incident.start >= steps_sent:
            lines.append(f"  not reached: {name} (run longer)")
        elif any(d["metric"] == incident.metric for d in hits):
            detected += 1
            delay = (min(d["window"]["end_ms"] for d in hits) // STEP_MS) - (
                start_ms // STEP_MS + incident.start
            )
            metrics = ", ".join(sorted({d["metric"] for d in hits}))
            lines.append(f"  detected:    {name} after {delay} simulated min, in {metrics}")
        else:
            lines.append(f"  missed:      {name} ({incident.metric})")
    other = sum(1 for d in opened if not any(_caused_by(d, i, start_ms) for i in INCIDENTS))
    lines.append(
        f"  {detected}/{len(INCIDENTS)} incidents detected, {other} false alarms, {board.sent} samples"
    )
    return lines


async def _stream(config: VigilConfig, seconds: float, board: Scoreboard, console: Console) -> int:
    kafka = config.kafka
    rng = random.Random(7)
    instances = [Instance(svc, f"{svc.name}-{i}") for svc in SERVICES for i in INSTANCES]
    producer = await start_producer(kafka)
    start_ms = (int(time.time() * 1000) // STEP_MS - 2 * DAY_STEPS) * STEP_MS
    started = time.monotonic()
    step = 0

    async def collect() -> None:
        async for raw in follow(kafka, kafka.topics.verdicts, from_beginning=True):
            board.events.append(orjson.loads(raw))

    collector = asyncio.create_task(collect())
    try:
        with Live(board.table(0, seconds), console=console, refresh_per_second=4) as live:
            while (elapsed := time.monotonic() - started) < seconds:
                due = int(elapsed * STEPS_PER_SECOND)
                batches: dict[bytes, list[RawSeries]] = {}
                while step <= due:
                    ts = start_ms + step * STEP_MS
                    for instance in instances:
                        for r in instance.scrape(step, ts, rng):
                            batches.setdefault(
                                sample_key(instance.service.name, family_of(r.name)), []
                            ).append(r)
                    step += 1
                for key, group in batches.items():  # one message per sample key, keyed by it
                    value = encode_raw(group)
                    await producer.send(
                        kafka.topics.samples, value, key=key, partition=partition_for(key, kafka.partitions)
                    )
                    board.sent += sum(len(g.samples) for g in group)
                live.update(board.table(elapsed, seconds))
                await asyncio.sleep(0.05)
            await producer.flush()
            await asyncio.sleep(3)  # let the last verdicts arrive
            live.update(board.table(seconds, seconds))
    finally:
        collector.cancel()
        await producer.stop()
    for line in ["", "Summary:", *summary(board, start_ms, step)]:
        console.print(line)
    return 0


def run_demo(config_path: Path | None, config: VigilConfig, seconds: float) -> int:
    console = Console()
    board = Scoreboard()
    # The demo's worker opens no metrics port: nothing to clash with a running Vigil, nothing to announce.
    config = config.model_copy(update={"worker": config.worker.model_copy(update={"metrics_enabled": False})})
    with signals_raise(), kafka_for(config) as live:
        console.print(f"embedded pipeline on {live.kafka.bootstrap_servers}: starting a worker …")
        worker = spawn("worker", config_path, live)
        try:
            return asyncio.run(_stream(live, seconds, board, console))
        finally:
            stop_all([worker])
    return 130
