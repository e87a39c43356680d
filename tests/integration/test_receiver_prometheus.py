"""A real Prometheus (Debian's 2.42) remote-writes to the receiver: what it stored must reach the topic.

Every sample of every series Prometheus stored must be on the topic as a raw record — values bit-equal, per
series in the order sent, no gap, and no duplicate while nothing fails (helpers: ``tests/fixtures/
prometheus.py``). Then the broker fails behind a TCP proxy mid-stream while Prometheus sends with 4 shards
(4 requests in flight), and TLS with bearer auth runs through ``vigil ingest`` as a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from connectors.broker import EmbeddedBroker, free_port
from connectors.kafka import ensure_topics, topic_names, wait_for_port
from connectors.receiver import Receiver
from engine.config import VigilConfig
from tests.conftest import Broker, config_env, isolated_config
from tests.fixtures.prometheus import (
    Collector,
    Prometheus,
    Proxy,
    assert_complete,
    check_complete,
    prometheus_config,
    remote_storage,
    tansu,
    until,
)
from tests.kafka.node import KafkaNode

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

# No skip: these tests are the proof that a real Prometheus' samples arrive; without it they must fail.
assert shutil.which("prometheus"), "needs Debian's `prometheus` package (apt-get install prometheus)"

#: Four shards, small requests: four requests in flight most of the time.
FOUR_SHARDS = {
    "queue_config": {
        "min_shards": 4,
        "max_shards": 4,
        "max_samples_per_send": 100,
        "batch_send_deadline": "200ms",
        "min_backoff": "100ms",
        "max_backoff": "1s",
    }
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def up_key(prometheus: Prometheus) -> tuple[tuple[str, str], ...]:
    return (("__name__", "up"), ("instance", prometheus.instance), ("job", "prometheus"))


async def flowing(
    collector: Collector, prometheus: Prometheus, samples: int = 5, timeout: float = 40
) -> None:
    """Wait until Prometheus' ``up`` has ``samples`` points on the topic."""
    key = up_key(prometheus)
    await until(lambda: len(collector.points.get(key, ())) >= samples, timeout, "samples on the topic")


# --- fixtures -----------------------------------------------------------------------------------------


def receiver_config(broker: Broker) -> VigilConfig:
    config = isolated_config(broker)
    topics = config.kafka.topics.model_copy(update={"metadata": f"{config.kafka.topics.samples}.metadata"})
    kafka = config.kafka.model_copy(update={"ack_timeout_s": 2.0, "topics": topics})
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


# --- 1: everything Prometheus stored arrives, exactly once --------------------------------------------


async def test_every_stored_sample_arrives_once_as_raw_records(config: VigilConfig, tmp_path: Path) -> None:
    async with running(Receiver(config)) as receiver, aiohttp.ClientSession() as session:
        vigil = f"127.0.0.1:{receiver.port}"
        prometheus = Prometheus(tmp_path, {})
        prometheus.config = prometheus_config(prometheus.instance, f"{receiver.url}/api/v1/write", vigil)
        with stopped_at_exit(prometheus):
            async with Collector(config) as collector:
                await prometheus.start(session)
                await flowing(collector, prometheus)
                results = await check_complete(prometheus, session, collector, now_ms() - 3000)
                assert_complete(results, exactly_once=True)
                jobs = {dict(key)["job"] for key in results}
                assert jobs == {"prometheus", "vigil"}
                assert len(results) > 200  # Prometheus' own series: counters, gauges, classic histograms
                counters = await remote_storage(prometheus, session)
                stats = receiver.ingest.stats
                # 1.0 metadata (sent every 5 s, in requests of its own) goes to the metadata topic
                await until(lambda: stats.metadata_produced > 0, 30, "metadata on the metadata topic")
        assert counters["total"] > 0
        assert (counters["failed_total"], counters["dropped_total"]) == (0, 0), counters
        assert set(stats.requests) == {204}, stats.requests


# --- 2: the broker fails mid-stream under 4 concurrent requests ---------------------------------------


async def test_broker_cut_under_four_shards_loses_nothing_and_keeps_order(
    config: VigilConfig, tmp_path: Path
) -> None:
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
            prometheus.config = prometheus_config(
                prometheus.instance, f"{receiver.url}/api/v1/write", remote_extra=FOUR_SHARDS
            )
            stats = receiver.ingest.stats
            with stopped_at_exit(prometheus):
                async with Collector(config) as collector:
                    await prometheus.start(session)
                    await flowing(collector, prometheus, samples=3)
                    assert stats.request_seconds_count > 8  # many requests already, from 4 shards

                    await proxy.cut()
                    await until(lambda: stats.requests[503] >= 8, 40, "503 answers while the broker is away")
                    assert stats.requests.keys() <= {204, 503}
                    await proxy.start()
                    restored_at = now_ms()

                    key = up_key(prometheus)
                    await until(lambda: collector.last(key) > restored_at + 3000, 40, "samples after the cut")
                    results = await check_complete(prometheus, session, collector, restored_at + 2000)
                    duplicates = assert_complete(results, exactly_once=False)
                    counters = await remote_storage(prometheus, session)
        assert counters["retried_total"] > 0, counters
        assert (counters["failed_total"], counters["dropped_total"]) == (0, 0), counters
        assert stats.produce_failures > 0
        assert stats.internal_errors == 0
        print(
            f"broker cut: {len(results)} series, {stats.requests[503]} answers 503, "
            f"{duplicates} duplicate points on the topic (resends), none out of order"
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
    config = embedded_config
    import ssl

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
                    await flowing(collector, prometheus)
                    results = await check_complete(prometheus, session, collector, now_ms() - 3000)
                    assert_complete(results, exactly_once=True)
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
