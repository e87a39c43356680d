"""The streaming poller on the embedded broker against a real Prometheus holding known data around now:
stopped mid-backfill and started again it emits every stored sample exactly once; with Prometheus down
for a while and back, the gap is backfilled; a rejected query is disabled with a ``vigil.source.error``
event while the other goes on; its metrics port serves ``vigil_poller_*``."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import re
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import generate_latest

from connectors.broker import EmbeddedBroker, free_port
from connectors.poller import Poller
from connectors.poller.metrics import poller_registry
from engine.config import PollerConfig, VigilConfig
from tests.conftest import Broker, config_env, isolated_config, read_topic
from tests.fixtures.fake_prometheus import FakePrometheus
from tests.fixtures.prometheus import Prometheus
from tests.fixtures.tsdb import Labels, openmetrics, prometheus_with, wait_ready
from tests.integration.processes import default_signals, listening_ports
from tests.integration.test_worker_metrics import MetricsWorker, scrape, try_scrape

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

NOW = int(time.time())
D0 = NOW - 2 * 3600  # data from two hours ago ...
D1 = NOW + 3600  # ... to an hour ahead, one sample a second: every step the poller reaches has one


def known_data() -> dict[Labels, list[tuple[int, float]]]:
    rng = random.Random(5)
    ts = range(D0, D1 + 1)
    return {
        (("instance", "a:1"), ("job", "checkout")): [(t, rng.uniform(-1e3, 1e3)) for t in ts],
        (("instance", "b:2"), ("job", "checkout")): [
            (t, math.nan if t % 97 == 0 else rng.random()) for t in ts
        ],
    }


DATA = known_data()
EXPECTED = {dict(k)["instance"]: {t * 1000: v for t, v in s if math.isfinite(v)} for k, s in DATA.items()}


def watch(**extra: Any) -> dict[str, Any]:
    queries = [{"name": "value", "query": 'vigil_test_value{job="{{service}}"}'}]
    return {
        "name": "checkout",
        "service": "checkout",
        "queries": queries + extra.pop("more", []),
        "step_s": 1,
        "interval_s": 0.2,
        "delay_s": 1,
        **extra,
    }


def poller_section(url: str, **extra: Any) -> dict[str, Any]:
    chunk = extra.pop("chunk_steps", 50)
    return {
        "sources": [{"name": "main", "url": url, "timeout_s": 2, "retries": 1, "backoff_s": 0.05}],
        "watches": [watch(**extra)],
        "chunk_steps": chunk,
        # the embedded broker's group joins take about half the session timeout (../shared/TESTING.md)
        "session_timeout_s": 6,
        "heartbeat_interval_s": 0.5,
    }


class Samples:
    """Every prepared point on the samples topic, per instance, in topic order (duplicates kept)."""

    def __init__(self, config: VigilConfig, metrics: tuple[str, ...] = ("value",)) -> None:
        self.config = config
        self.metrics = metrics
        #: the points of query "value", by instance
        self.points: dict[str, list[tuple[int, float]]] = defaultdict(list)
        #: every query's points, by (query, instance)
        self.all: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Samples:
        k = self.config.kafka
        consumer = AIOKafkaConsumer(bootstrap_servers=k.bootstrap_servers, enable_auto_commit=False)
        await consumer.start()
        consumer.assign([TopicPartition(k.topics.samples, p) for p in range(k.partitions)])
        await consumer.seek_to_beginning()

        async def run() -> None:
            try:
                while True:
                    for messages in (await consumer.getmany(timeout_ms=200)).values():
                        for m in messages:
                            doc = orjson.loads(m.value or b"{}")
                            assert (doc["v"], doc["kind"]) == (2, "prepared"), doc
                            for s in doc["series"]:
                                assert s["service"] == "checkout"
                                assert s["metric"] in self.metrics
                                points = [(t, v) for t, v in s["points"]]
                                self.all[(s["metric"], s["instance"])].extend(points)
                                if s["metric"] == "value":
                                    self.points[s["instance"]].extend(points)
            finally:
                await consumer.stop()

        self._task = asyncio.create_task(run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def newest(self) -> int:
        return (
            min((max(t for t, _ in p) for p in self.points.values() if p), default=0)
            if len(self.points) == 2
            else 0
        )

    def count(self) -> int:
        return sum(len(p) for p in self.all.values())


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        await asyncio.sleep(0.1)


def assert_exactly_once(samples: Samples, first_ms: int, last_ms: int, at_least: int) -> None:
    """Every stored finite sample in [first_ms, last_ms] once, nothing else, values bit-equal."""
    assert sorted(samples.points) == ["a:1", "b:2"]
    for instance, got in samples.points.items():
        times = [t for t, _ in got]
        assert len(times) == len(set(times)), f"{instance}: {len(times) - len(set(times))} points twice"
        want = {t: v for t, v in EXPECTED[instance].items() if first_ms <= t <= last_ms}
        assert dict(got) == want, instance
        assert len(want) >= at_least


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    workdir = tmp_path_factory.mktemp("prometheus-now")
    with prometheus_with(openmetrics("vigil_test_value", DATA), workdir) as running:
        yield running


@contextlib.contextmanager
def vigil_poller(config_file: Path, config: VigilConfig) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "vigil", "poller", "-c", str(config_file)],
        env=config_env(config),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=default_signals,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
def config(broker: EmbeddedBroker) -> VigilConfig:
    return isolated_config(broker)


@pytest.fixture
def any_config(any_broker: Broker) -> VigilConfig:
    return isolated_config(any_broker)


async def test_stopped_mid_backfill_and_restarted_emits_each_sample_once(
    any_config: VigilConfig, prometheus: Prometheus, tmp_path: Path
) -> None:
    config = any_config
    # ten minutes before the data (those steps have none), from now: the module may be imported long before
    lookback = int(time.time()) - D0 + 600
    section = poller_section(prometheus.url, lookback_s=lookback) | {"metrics_port": 0}
    k = config.kafka
    path = tmp_path / "vigil.yaml"
    path.write_text(yaml.safe_dump({"kafka": {"bootstrap_servers": k.bootstrap_servers}, "poller": section}))
    async with Samples(config) as samples:
        with vigil_poller(path, config) as first:
            assert first.stdout is not None
            line = await asyncio.to_thread(first.stdout.readline)
            url = re.search(r"metrics on (\S+)", line)
            assert url, line
            await until(lambda: samples.count() > 1000, 60, "the backfill to begin")
            first.terminate()
            assert await asyncio.to_thread(first.wait, 15) == 0
        stopped_at = samples.newest()
        # Really mid-backfill: far from live when it stopped.
        assert 0 < stopped_at < (time.time() - 600) * 1000, stopped_at
        with vigil_poller(path, config) as second:
            assert second.stdout is not None
            line = await asyncio.to_thread(second.stdout.readline)
            url = re.search(r"metrics on (\S+)", line)
            assert url, line
            live = int(time.time() * 1000) - 3000
            await until(lambda: samples.newest() >= live, 90, "the poller to catch up with live")
            scraped = await asyncio.to_thread(
                lambda: urllib.request.urlopen(url[1], timeout=5).read().decode()  # noqa: S310
            )
            second.terminate()
            assert await asyncio.to_thread(second.wait, 15) == 0
        await asyncio.sleep(0)  # let the collector read what is left: poll until it stops growing
        await until_stable(samples)
    assert_exactly_once(samples, D0 * 1000, samples.newest(), at_least=7000)
    # the second process' metrics port answered with its counts
    assert 'vigil_poller_points_total{query="value",watch="checkout"}' in scraped
    assert "vigil_poller_lag_seconds" in scraped


async def until_stable(samples: Samples, quiet: float = 1.5) -> None:
    """Wait until no new point arrived for ``quiet`` seconds (the producer is stopped: nothing more comes)."""
    last, since = samples.count(), time.monotonic()
    deadline = since + 30
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
        if samples.count() != last:
            last, since = samples.count(), time.monotonic()


@pytest.fixture
def own_prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    with prometheus_with(openmetrics("vigil_test_value", DATA), tmp_path / "prom") as running:
        yield running


async def test_prometheus_down_then_up_the_gap_is_backfilled(
    config: VigilConfig, own_prometheus: Prometheus
) -> None:
    base = config
    broken = {"name": "broken", "query": "sum(rate(vigil_test_value[1m]"}
    section = poller_section(own_prometheus.url, lookback_s=30, more=[broken], chunk_steps=20)
    config = base.model_copy(update={"poller": PollerConfig(**section)})
    poller = Poller(config)
    value = ("checkout", "value")
    async with Samples(config) as samples:
        started = time.time()
        await poller.start()
        try:
            stats = poller.stats.queries
            await until(lambda: samples.newest() >= (time.time() - 3) * 1000, 30, "live")
            first = min(t for p in samples.points.values() for t, _ in p)
            assert first <= (started - 1 - 30 + 5) * 1000  # the lookback was backfilled (start-up takes ~1 s)
            own_prometheus.stop()
            down_at = time.time()
            failed = stats[value].failed
            await until(lambda: stats[value].failed >= failed + 3 and time.time() - down_at > 4, 30, "outage")
            mark_in_outage = stats[value].watermark_ms or 0
            own_prometheus.launch()
            await asyncio.to_thread(wait_ready, own_prometheus)
            back = time.time()
            await until(lambda: samples.newest() >= (back - 2) * 1000, 30, "the backfill")
        finally:
            await poller.stop()
        await until_stable(samples)
        assert mark_in_outage < (back - 3) * 1000  # the watermark waited for Prometheus
        assert_exactly_once(samples, first, poller.stats.queries[value].watermark_ms or 0, at_least=30)
        assert stats[("checkout", "broken")].disabled
        events = await read_topic(
            config.kafka.bootstrap_servers, config.kafka.topics.verdicts, lambda r: len(r) >= 1, 20
        )
    (event,) = events
    assert event["type"] == "vigil.source.error"
    assert event["data"]["query"] == "broken"
    assert event["data"]["kind"] == "rejected"
    assert "bad_data" in event["data"]["message"]
    text = generate_latest(poller_registry(poller.stats)).decode()
    assert 'vigil_poller_query_disabled{query="broken",watch="checkout"} 1.0' in text
    assert re.search(r'vigil_poller_errors_total\{kind="connection",source="main"\} [1-9]', text)
    assert 'vigil_poller_queries_total{outcome="failed",query="value",watch="checkout"}' in text


def vigil_run(config_file: Path, state_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "vigil", "run", "-c", str(config_file)],
        env=dict(os.environ, VIGIL_STATE_DIR=str(state_dir)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        preexec_fn=default_signals,
    )


async def test_vigil_run_runs_the_poller_when_enabled(prometheus: Prometheus, tmp_path: Path) -> None:
    section = poller_section(prometheus.url, lookback_s=60) | {"enabled": True, "metrics_port": 0}
    path = tmp_path / "vigil.yaml"
    path.write_text(yaml.safe_dump({"receiver": {"port": 0}, "poller": section}))
    process = vigil_run(path, tmp_path)
    try:
        state = tmp_path / "embedded.json"
        await until(state.exists, 30, "vigil run to start its broker")
        bootstrap = orjson.loads(state.read_bytes())["bootstrap_servers"]
        records = await read_topic(
            bootstrap, "vigil.samples", lambda r: sum(len(x["series"]) for x in r) >= 2, 60
        )
        process.terminate()
        assert await asyncio.to_thread(process.wait, 15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    instances = {s["instance"] for r in records for s in r["series"]}
    assert instances == {"a:1", "b:2"}
    assert all((r["v"], r["kind"]) == (2, "prepared") for r in records)


async def test_a_selector_watch_follows_the_services_it_finds(
    config: VigilConfig, prometheus: Prometheus
) -> None:
    section = poller_section(prometheus.url, lookback_s=20)
    section["watches"][0] |= {"service": None, "selector": '{job=~"check.+"}'}
    config = config.model_copy(update={"poller": PollerConfig(**section)})
    poller = Poller(config)
    async with Samples(config) as samples:
        await poller.start()
        try:
            await until(
                lambda: samples.newest() >= (time.time() - 3) * 1000, 30, "the discovered service's samples"
            )
        finally:
            await poller.stop()
        await until_stable(samples)
    assert list(poller.stats.queries) == [("checkout/checkout", "value")]
    first = min(t for p in samples.points.values() for t, _ in p)
    assert_exactly_once(
        samples, first, poller.stats.queries[("checkout/checkout", "value")].watermark_ms or 0, at_least=15
    )


NAMES = ["value", *(f"value{n}" for n in range(8))]  # the same data under nine query names


def nine_queries(url: str, **extra: Any) -> dict[str, Any]:
    more = [{"name": n, "query": 'vigil_test_value{job="{{service}}"}'} for n in NAMES[1:]]
    return poller_section(url, lookback_s=20, more=more, **extra)


def all_live(pollers: list[Poller], since: float) -> bool:
    """Between them the pollers follow all nine queries, each once, all caught up with ``since``."""
    followed = [set(p.stats.queries) for p in pollers]
    if sum(len(f) for f in followed) != len(NAMES) or set().union(*followed) != {
        ("checkout", n) for n in NAMES
    }:
        return False
    return all((q.watermark_ms or 0) >= since * 1000 for p in pollers for q in p.stats.queries.values())


def assert_no_gap(samples: Samples, through_ms: float, repeats: int) -> int:
    """Each query and instance: every stored step from its first to ``through_ms`` at least once, values
    bit-equal, at most ``repeats`` of them twice. Returns the number of repeated points."""
    assert sorted(samples.all) == sorted((n, i) for n in NAMES for i in ("a:1", "b:2"))
    twice = 0
    for (name, instance), points in samples.all.items():
        assert all(EXPECTED[instance][t] == v for t, v in points), (name, instance)
        times = [t for t, _ in points]
        want = [t for t in EXPECTED[instance] if min(times) <= t <= max(times)]
        assert max(times) >= through_ms, (name, instance)
        assert set(times) == set(want), f"{name}/{instance}: {len(set(want) - set(times))} steps missing"
        twice += len(times) - len(set(times))
        assert len(times) - len(set(times)) <= repeats, (name, instance)
    return twice


async def test_two_pollers_split_the_queries_without_polling_one_twice(
    config: VigilConfig, prometheus: Prometheus
) -> None:
    """Two pollers in one group: each follows the queries of its partitions of the watermark topic; the
    one that had them all before the other joined hands half over (its chunks finished, the other resumes
    from its watermarks): every step once."""
    section = nine_queries(prometheus.url)
    pollers = [Poller(config.model_copy(update={"poller": PollerConfig(**section)})) for _ in range(2)]
    async with Samples(config, tuple(NAMES)) as samples:
        for poller in pollers:
            await poller.start()
        try:
            await until(
                lambda: all(p.owned for p in pollers) and all_live(pollers, time.time() - 3),
                60,
                "both pollers to get a share and reach live",
            )
            through = min(q.watermark_ms or 0 for p in pollers for q in p.stats.queries.values())
        finally:
            for poller in pollers:
                await poller.stop()
        await until_stable(samples)
    assert not pollers[0].owned & pollers[1].owned
    assert pollers[0].owned | pollers[1].owned == set(range(config.kafka.partitions))
    followed = [set(p.stats.queries) for p in pollers]
    assert followed[0], followed  # both got queries
    assert followed[1], followed
    assert assert_no_gap(samples, through, repeats=0) == 0


async def test_a_killed_poller_is_taken_over_from_its_watermarks(
    any_config: VigilConfig, prometheus: Prometheus, tmp_path: Path
) -> None:
    """A `vigil poller` follows all nine queries; a second poller joins and takes a share; the first is
    SIGKILLed: after its session times out the survivor follows all nine from the dead one's watermarks —
    no step missing, at most the chunk being written repeated (the worker drops those)."""
    config = any_config
    section = nine_queries(prometheus.url, chunk_steps=50) | {"metrics_port": 0}
    path = tmp_path / "vigil.yaml"
    k = config.kafka
    path.write_text(yaml.safe_dump({"kafka": {"bootstrap_servers": k.bootstrap_servers}, "poller": section}))
    survivor = Poller(config.model_copy(update={"poller": PollerConfig(**section)}))
    async with Samples(config, tuple(NAMES)) as samples:
        with vigil_poller(path, config) as doomed:
            assert doomed.stdout is not None
            await asyncio.to_thread(doomed.stdout.readline)  # "metrics on ..."
            await until(lambda: len(samples.all) == 2 * len(NAMES), 60, "the first poller to poll all nine")
            await survivor.start()
            try:
                await until(
                    lambda: survivor.owned and 0 < len(survivor.stats.queries) < len(NAMES),
                    60,
                    "the second poller to take a share",
                )
                share = set(survivor.stats.queries)
                doomed.kill()
                doomed.wait()
                killed = time.time()
                await until(lambda: all_live([survivor], time.time() - 3), 60, "the survivor to take over")
                taken_after = time.time() - killed
                through = min(q.watermark_ms or 0 for q in survivor.stats.queries.values())
            finally:
                await survivor.stop()
        await until_stable(samples)
    assert survivor.owned == set(range(k.partitions))
    assert share < set(survivor.stats.queries)
    assert taken_after < 30
    assert_no_gap(samples, through, repeats=50)


@contextlib.contextmanager
def vigil_ingest(config_file: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "vigil", "ingest", "-c", str(config_file)],
        env=env,
        stdin=subprocess.DEVNULL,
        preexec_fn=default_signals,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_vigil_ingest_never_polls(config: VigilConfig, tmp_path: Path) -> None:
    """`vigil ingest` with an enabled poller and a watch: no request reaches the source, no watermark and
    no sample of that watch is written. A `vigil poller` on the same source, started after ingest was up,
    polls several times meanwhile: ingest had longer than a poller needs."""

    def section(url: str, who: str) -> dict[str, Any]:
        doc = poller_section(url, lookback_s=30) | {"enabled": True, "metrics_port": 0}
        doc["sources"][0]["headers"] = {"X-Vigil-Test": who}
        doc["watches"][0] |= {"name": f"{who}-watch", "service": f"{who}-svc"}
        return doc

    k = config.kafka
    ingest_state = f"{k.topics.poller_state}-ingest"
    async with FakePrometheus() as fake:
        paths = {}
        for who in ("ingest", "poller"):
            paths[who] = tmp_path / f"{who}.yaml"
            doc = {"kafka": {"bootstrap_servers": k.bootstrap_servers}, "poller": section(fake.url, who)}
            paths[who].write_text(yaml.safe_dump(doc))
        port = free_port()
        env = config_env(config) | {
            "VIGIL_RECEIVER__PORT": str(port),
            "VIGIL_KAFKA__TOPICS__POLLER_STATE": ingest_state,
        }
        with vigil_ingest(paths["ingest"], env) as ingest:
            await until(lambda: port in listening_ports(ingest.pid), 60, "vigil ingest to listen")
            with vigil_poller(paths["poller"], config) as poller:

                def asked(who: str) -> list[dict[str, str]]:
                    heard = fake.headers + [h for _, _, h in fake.others]
                    return [h for h in heard if h.get("X-Vigil-Test") == who]

                await until(lambda: len(asked("poller")) >= 5, 60, "the poller to poll five times")
                assert poller.poll() is None
            assert ingest.poll() is None, "vigil ingest exited"
            ingest.terminate()
            assert await asyncio.to_thread(ingest.wait, 15) == 0
        assert asked("ingest") == []
        assert fake.others == []
    samples = await read_topic(
        k.bootstrap_servers,
        k.topics.samples,
        lambda r: any(s["service"] == "poller-svc" for x in r for s in x["series"]),
        30,
    )
    services = {s["service"] for x in samples for s in x["series"]}
    assert services == {"poller-svc"}
    assert await read_topic(k.bootstrap_servers, k.topics.poller_state, lambda r: len(r) > 0, 30)
    # the poller wrote its watermarks; had ingest polled, its own state topic would hold some
    assert await read_topic(k.bootstrap_servers, ingest_state, lambda r: len(r) > 0, 3) == []


#: ``vigil poller`` with one fault: its ``hold_at``-th watermark write never happens — it prints
#: ``held <watermark_ms>`` once that chunk's samples are acknowledged, and waits there to be killed.
HELD_POLLER = """
import asyncio
import sys
from pathlib import Path

from connectors.poller import state
from connectors.poller.service import serve
from engine.config import load_config

hold_at = int(sys.argv[2])
saves = 0
save = state.Watermarks.save


async def held(self, key, watermark_ms):
    global saves
    saves += 1
    if saves == hold_at:
        print(f"held {watermark_ms}", flush=True)
        await asyncio.Event().wait()
    await save(self, key, watermark_ms)


state.Watermarks.save = held
asyncio.run(serve(load_config(Path(sys.argv[1])), asyncio.Event()))
"""


@contextlib.contextmanager
def held_poller(config_file: Path, config: VigilConfig, hold_at: int) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", HELD_POLLER, str(config_file), str(hold_at)],
        env=config_env(config),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=default_signals,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def test_killed_between_samples_and_watermark_repeats_the_chunk_and_the_worker_drops_it(
    config: VigilConfig, prometheus: Prometheus, tmp_path: Path
) -> None:
    """SIGKILL after a chunk's samples are acknowledged and before its watermark is written: the restarted
    poller sends that chunk again (and only it); a real worker reads every point, learns each step once and
    counts the repeats with its duplicate rule (``vigil_worker_points_skipped_total``)."""
    chunk = 50
    section = poller_section(prometheus.url, lookback_s=400, chunk_steps=chunk) | {"metrics_port": 0}
    path = tmp_path / "vigil.yaml"
    k = config.kafka
    path.write_text(yaml.safe_dump({"kafka": {"bootstrap_servers": k.bootstrap_servers}, "poller": section}))
    worker = MetricsWorker(config, tmp_path / "worker.log")
    try:
        async with Samples(config) as samples:
            with held_poller(path, config, hold_at=3) as first:
                assert first.stdout is not None
                lines = [await asyncio.to_thread(first.stdout.readline) for _ in range(2)]
                assert lines[0].startswith("vigil poller: metrics on"), lines
                assert lines[1].startswith("held "), lines
                held = int(lines[1].split()[1])
                # the held chunk's samples are on the topic, its watermark is not: kill now
                await until(lambda: samples.newest() >= held, 30, "the held chunk's samples")
                first.kill()
                first.wait()
            await until_stable(samples)
            assert samples.newest() == held  # nothing after the held chunk was sent
            with vigil_poller(path, config) as second:
                live = int(time.time() * 1000) - 3000
                await until(lambda: samples.newest() >= live, 90, "the restarted poller to reach live")
                second.terminate()
                assert await asyncio.to_thread(second.wait, 15) == 0
            await until_stable(samples)
        total = samples.count()
        distinct: dict[tuple[str, int], float] = {}
        repeated: set[tuple[str, int]] = set()
        for instance, points in samples.points.items():
            for t, v in points:
                if (instance, t) in distinct:
                    repeated.add((instance, t))
                    assert distinct[(instance, t)] == v  # a repeat carries the same value
                distinct[(instance, t)] = v
        # exactly the held chunk came twice: its steps (held - 50 s, held], finite points only
        want_repeats = {
            (i, t) for i, points in EXPECTED.items() for t in points if held - chunk * 1000 < t <= held
        }
        assert repeated == want_repeats
        assert total - len(distinct) == len(repeated) > 50
        first_ms = min(t for _, t in distinct)
        for instance in ("a:1", "b:2"):
            got = {t: v for (i, t), v in distinct.items() if i == instance}
            want = {t: v for t, v in EXPECTED[instance].items() if first_ms <= t <= samples.newest()}
            assert got == want, instance

        await until(lambda: worker.port() or worker.process.poll() is not None, 60, "the worker's port")
        port = worker.port()
        assert port

        def judged_all() -> dict[str, float] | None:
            m = try_scrape(port)
            return m if m.get("vigil_worker_samples_processed_total") == total else None

        await until(judged_all, 120, "the worker to read every point on the topic")
        m = scrape(port)
        skipped = (
            m['vigil_worker_points_skipped_total{reason="duplicate"}']
            + m['vigil_worker_points_skipped_total{reason="out_of_order"}']
        )
        # every repeat dropped by the duplicate rule, each step learned once
        assert skipped == len(repeated)
        assert m["vigil_worker_samples_processed_total"] - skipped == len(distinct)
    finally:
        worker.stop()
