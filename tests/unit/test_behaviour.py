"""Behaviour users rely on, end to end through the worker's record handling (remote-write series in, events
out): counters are judged as rates, histograms as latency quantiles, with the default configuration."""

from __future__ import annotations

import random
from collections.abc import Callable

import orjson

from engine.bank import ModelBank
from engine.config import load_config
from engine.processor import Processor, Source
from engine.raw import RawSeries
from engine.records import encode_raw

T0 = 1_700_000_000_000
S = 15_000
SRC = Source("vigil.samples", 0, 1)
BOUNDS = ("0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf")
LEARN = load_config(None).detection.warmup


def raw(name: str, ts: int, value: float, **extra: str) -> RawSeries:
    labels = {"__name__": name, "job": "shop", "instance": "pod-a", **extra}
    return RawSeries(tuple(sorted(labels.items())), [(ts, value)])


def opened(processor: Processor, records: list[list[RawSeries]], now: int) -> list[dict[str, object]]:
    events = []
    for r in records:
        outcome = processor.handle(encode_raw(r), SRC, now_ms=now)
        assert outcome.deadletters == []
        events += [orjson.loads(e) for _, e in outcome.events]
    return [e["data"] for e in events if e["type"] == "vigil.anomaly.opened"]


def counter_stream(steps: int, rate: Callable[[int], float], seed: int) -> list[list[RawSeries]]:
    rng = random.Random(seed)
    total = 0.0
    out = []
    for i in range(steps):
        total += max(0.0, rate(i) * 15 + rng.gauss(0.0, 15.0))
        out.append([raw("http_requests_total", T0 + i * S, total)])
    return out


def test_a_tripled_request_rate_opens_on_the_rate_and_a_steady_one_is_quiet() -> None:
    steps, jump = LEARN + 700, LEARN + 500
    stream = counter_stream(steps, lambda i: 100.0 if i < jump else 300.0, seed=1)
    processor = Processor(ModelBank(load_config(None)), max_future_ms=600_000)
    events = opened(processor, stream, T0 + steps * S)
    starts = [(e["window"]["start_ms"] - T0) // S for e in events]  # type: ignore[index,operator]
    assert [e["metric"] for e in events] == ["http_requests_total:rate"]
    assert jump <= starts[0] < jump + 20, starts
    assert events[0]["score"] >= 1.0  # the normalised score: 1 is the opening threshold


def histogram(ts: int, cumulative: list[float]) -> list[RawSeries]:
    name = "rpc_duration_seconds_bucket"
    buckets = [raw(name, ts, c, le=le) for le, c in zip(BOUNDS, cumulative, strict=True)]
    return [
        *buckets,
        raw("rpc_duration_seconds_count", ts, cumulative[-1]),
        raw("rpc_duration_seconds_sum", ts, cumulative[-1] * 0.1),
    ]


def latency_stream(steps: int, slow: int, seed: int) -> list[list[RawSeries]]:
    """~1,000 requests per step: normally 2 % take 0.25-0.5 s; from ``slow`` on, 5 % take 1-2.5 s."""
    rng = random.Random(seed)
    counts = [0.0] * len(BOUNDS)
    stream = []
    for i in range(steps):
        shares = [0.5, 0.3, 0.18, 0.02, 0.0, 0.0, 0.0] if i < slow else [0.5, 0.3, 0.13, 0.02, 0.0, 0.05, 0.0]
        for b, share in enumerate(shares):
            expected = share * 1000
            counts[b] += max(0, round(expected + rng.gauss(0.0, expected**0.5)))  # Poisson-like
        stream.append(histogram(T0 + i * S, [sum(counts[: b + 1]) for b in range(len(BOUNDS))]))
    return stream


def test_steady_latency_quantiles_are_quiet_and_a_slow_tail_opens_on_p99_within_20_samples() -> None:
    """A steady histogram opens nothing on any of its series (quantiles, mean, count and sum rates)."""
    steps, slow = LEARN + 600, LEARN + 450
    processor = Processor(ModelBank(load_config(None)), max_future_ms=600_000)
    events = opened(processor, latency_stream(steps, slow, seed=2), T0 + steps * S)
    starts = {e["metric"]: (e["window"]["start_ms"] - T0) // S for e in events}  # type: ignore[index,operator]
    assert all(start >= slow for start in starts.values()), starts
    assert slow <= starts["rpc_duration_seconds:p99"] < slow + 20
