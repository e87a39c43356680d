"""``vigil demo``: synthetic services with injected incidents, streamed through the real pipeline.

An embedded broker and a real worker process run as in ``vigil run``; this process plays the part of
Prometheus, at 20 simulated minutes per second, and shows the verdicts as they arrive.
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
from engine.samples import Series, encode_batch, partition_for
from vigil.runtime import kafka_for, signals_raise, spawn, stop_all

STEP_MS = 60_000  # one simulated minute per step
STEPS_PER_SECOND = 20
DAY_STEPS = 24 * 60


@dataclass(frozen=True)
class Incident:
    service: str
    metric: str
    instance: str | None  # None: every instance
    start: int
    steps: int
    factor: float
    what: str


@dataclass(frozen=True)
class Signal:
    service: str
    metric: str
    base: float
    daily: float  # amplitude of the daily cycle, as a share of base
    noise: float  # noise, as a share of base


SIGNALS = (
    Signal("checkout", "http_requests_total:rate", 120.0, 0.4, 0.03),
    Signal("checkout", "http_request_duration_seconds:p99", 0.25, 0.1, 0.04),
    Signal("checkout", "http_errors_total:rate", 0.5, 0.3, 0.1),
    Signal("search", "http_requests_total:rate", 300.0, 0.5, 0.03),
    Signal("search", "http_request_duration_seconds:p99", 0.08, 0.1, 0.04),
    Signal("search", "http_errors_total:rate", 1.0, 0.3, 0.1),
    Signal("payments", "http_requests_total:rate", 40.0, 0.3, 0.04),
    Signal("payments", "process_resident_memory_bytes", 5.0e8, 0.0, 0.01),
)
INSTANCES = ("0", "1")
INCIDENTS = (
    Incident("checkout", "http_request_duration_seconds:p99", "checkout-1", 200, 15, 3.0, "slow instance"),
    Incident("search", "http_errors_total:rate", None, 350, 20, 12.0, "error burst"),
    Incident("payments", "http_requests_total:rate", None, 500, 25, 0.3, "traffic drop"),
)


def value_at(signal: Signal, instance: str, step: int, rng: random.Random) -> float:
    cycle = 1 + signal.daily * math.sin(2 * math.pi * step / DAY_STEPS)
    value = signal.base * cycle * (1 + rng.gauss(0, signal.noise))
    for incident in INCIDENTS:
        if (
            incident.service == signal.service
            and incident.metric == signal.metric
            and incident.instance in (None, instance)
            and incident.start <= step < incident.start + incident.steps
        ):
            value *= incident.factor
    return max(value, 0.0)


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
    begin = start_ms + incident.start * STEP_MS
    end = begin + (incident.steps + 10) * STEP_MS
    return bool(
        event["service"] == incident.service
        and event["metric"] == incident.metric
        and begin <= event["window"]["start_ms"] < end
    )


def summary(board: Scoreboard, start_ms: int, steps_sent: int) -> list[str]:
    lines = []
    opened = [e["data"] for e in board.events if e["type"].endswith("opened")]
    detected = 0
    for incident in INCIDENTS:
        name = f"{incident.service} {incident.what} ({incident.metric})"
        hits = [d for d in opened if _caused_by(d, incident, start_ms)]
        if incident.start >= steps_sent:
            lines.append(f"  not reached: {name} (run longer)")
        elif hits:
            detected += 1
            delay = (min(d["window"]["end_ms"] for d in hits) // STEP_MS) - (
                start_ms // STEP_MS + incident.start
            )
            lines.append(f"  detected:    {name} after {delay} simulated min")
        else:
            lines.append(f"  missed:      {name}")
    other = sum(1 for d in opened if not any(_caused_by(d, i, start_ms) for i in INCIDENTS))
    lines.append(
        f"  {detected}/{len(INCIDENTS)} incidents detected, {other} other anomalies, {board.sent} samples"
    )
    return lines


async def _stream(config: VigilConfig, seconds: float, board: Scoreboard, console: Console) -> int:
    kafka = config.kafka
    rng = random.Random(7)
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
                batches: dict[int, list[Series]] = {}
                while step <= due:
                    ts = start_ms + step * STEP_MS
                    for s in SIGNALS:
                        for i in INSTANCES:
                            instance = f"{s.service}-{i}"
                            series = Series(
                                s.service, s.metric, instance, [(ts, value_at(s, instance, step, rng))]
                            )
                            batches.setdefault(partition_for(series.key, kafka.partitions), []).append(series)
                    step += 1
                for partition, group in batches.items():
                    await producer.send(kafka.topics.samples, encode_batch(group), partition=partition)
                    board.sent += len(group)
                live.update(board.table(elapsed, seconds))
                await asyncio.sleep(0.05)
            await producer.flush()
            await asyncio.sleep(3)  # let the last verdicts arrive
            live.update(board.table(seconds, seconds))
    finally:
        collector.cancel()
        await producer.stop()
    for line in ["Summary:", *summary(board, start_ms, step)]:
        console.print(line)
    return 0


def run_demo(config_path: Path | None, config: VigilConfig, seconds: float) -> int:
    console = Console()
    board = Scoreboard()
    with signals_raise(), kafka_for(config) as live:
        console.print(f"embedded pipeline on {live.kafka.bootstrap_servers}: starting a worker …")
        worker = spawn("worker", config_path, live)
        try:
            return asyncio.run(_stream(live, seconds, board, console))
        finally:
            stop_all([worker])
    return 130
