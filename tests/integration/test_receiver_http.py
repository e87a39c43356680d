"""The receiver's HTTP surface against a real producer on the embedded broker: the bad-input matrix, auth,
size limits, the in-flight budget and hostile headers. Every refusal is checked on the topic itself: after
the bad request a valid "sentinel" request that lands on every partition is sent, and the topic must hold
the sentinel's records and nothing else."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import SecretStr

from connectors.broker import EmbeddedBroker
from connectors.receiver import (
    HEADER_EXEMPLARS,
    HEADER_HISTOGRAMS,
    HEADER_SAMPLES,
    INGEST,
    SERVER_OPTIONS,
    Auth,
    Ingest,
    encode_chunks,
    make_app,
    max_compressed_length,
)
from engine.config import AuthConfig, VigilConfig, load_config
from engine.raw import NativeHistogram
from engine.samples import family_of, partition_for, sample_key
from tests.conftest import isolated_config
from tests.fixtures.remote_write import (
    BASE_MS,
    V1_CONTENT_TYPE,
    V2_CONTENT_TYPE,
    Series,
    labels_of,
    snappy,
    v1_body,
    v2_body,
    v2_message,
    wire_series_v1,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

V1 = {"Content-Type": V1_CONTENT_TYPE, "Content-Encoding": "snappy"}
V2 = {"Content-Type": V2_CONTENT_TYPE, "Content-Encoding": "snappy"}
MAX_BODY = 64 * 1024
TOKEN = "s3cret-token-4f1c"
PASSWORD = "pa55-w0rd-9e2a"
SENTINEL_JOB = "sentinel"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def one(name: str = "up", **labels: str) -> list[Series]:
    return [Series(labels_of(name=name, job="app", **labels), [(now_ms(), 1.0)])]


def with_metadata_topic(config: VigilConfig) -> VigilConfig:
    """``config`` with a metadata topic of its own (``isolated_config`` isolates the other topics)."""
    topics = config.kafka.topics.model_copy(update={"metadata": f"{config.kafka.topics.samples}.metadata"})
    return config.model_copy(update={"kafka": config.kafka.model_copy(update={"topics": topics})})


def limited(broker: EmbeddedBroker, **receiver: Any) -> VigilConfig:
    config = with_metadata_topic(isolated_config(broker))
    limits = {
        "port": 0,
        "max_body_bytes": MAX_BODY,
        "max_labels": 8,
        "max_label_name_length": 32,
        "max_label_value_length": 64,
    }
    return config.model_copy(update={"receiver": config.receiver.model_copy(update=limits | receiver)})


@dataclass
class Harness:
    client: TestClient[Any, Any]
    ingest: Ingest
    config: VigilConfig

    async def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str, Any]:
        async with self.client.post("/api/v1/write", data=body, headers=headers) as response:
            return response.status, await response.text(), response.headers

    async def sentinel(self, headers: dict[str, str] | None = None) -> None:
        """A valid request with one gauge per partition; the topic must then hold exactly its records."""
        status, text, _ = await self.post(v1_body(sentinel_series()), {**V1, **(headers or {})})
        assert status == 204, text
        records = await partition_records(self.config, lambda got: len(got) == self.config.kafka.partitions)
        others = [(p, doc) for p, doc in records if doc["series"][0]["labels"]["job"] != SENTINEL_JOB]
        assert others == [], "a refused request produced records"
        assert sorted(p for p, _ in records) == list(range(self.config.kafka.partitions))


def sentinel_series() -> list[Series]:
    """Gauges of the sentinel job whose sample keys cover every partition (4)."""
    chosen: dict[int, str] = {}
    i = 0
    while len(chosen) < 4:
        name = f"sentinel_{i}"
        chosen.setdefault(partition_for(sample_key(SENTINEL_JOB, family_of(name)), 4), name)
        i += 1
    return [Series(labels_of(name=name, job=SENTINEL_JOB), [(now_ms(), 1.0)]) for name in chosen.values()]


async def partition_records(
    config: VigilConfig, until: Any, timeout: float = 15.0
) -> list[tuple[int, dict[str, Any]]]:
    """(partition, decoded message) of the samples topic, from the start, until ``until(records)`` holds."""
    k = config.kafka
    consumer = AIOKafkaConsumer(bootstrap_servers=k.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(k.topics.samples, p) for p in range(k.partitions)])
        await consumer.seek_to_beginning()
        records: list[tuple[int, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout
        while not until(records):
            assert time.monotonic() < deadline, f"topic did not reach the expected state: {records}"
            batch = await consumer.getmany(timeout_ms=200)
            for tp, messages in batch.items():
                records.extend((tp.partition, orjson.loads(m.value)) for m in messages if m.value)
        return records
    finally:
        await consumer.stop()


async def serve_for_test(app: web.Application) -> TestClient[Any, Any]:
    """aiohttp's test server, run with the options the real server uses."""
    server = TestServer(app)
    await server.start_server(**SERVER_OPTIONS)
    client: TestClient[Any, Any] = TestClient(server)
    await client.start_server()
    return client


@pytest.fixture
def config(broker: EmbeddedBroker) -> VigilConfig:
    return limited(broker)


async def started(config: VigilConfig) -> AsyncIterator[Harness]:
    app = make_app(config)
    client = await serve_for_test(app)
    try:
        ingest = app[INGEST]
        await asyncio.wait_for(ingest.connected.wait(), 20)
        yield Harness(client, ingest, config)
    finally:
        await client.close()


@pytest_asyncio.fixture
async def harness(config: VigilConfig) -> AsyncIterator[Harness]:
    async for h in started(config):
        yield h


# --- the bad-input matrix -----------------------------------------------------------------------------

OK_BODY = v1_body(one())


def _v2_broken(change: str) -> bytes:
    message = v2_message(one())
    if change == "symbol0":
        message.symbols[0] = "x"
    elif change == "range":
        message.timeseries[0].labels_refs.extend([999, 1])
    elif change == "odd":
        message.timeseries[0].labels_refs.append(1)
    return snappy(message.SerializeToString())


BAD = [
    pytest.param(  # aiohttp's client fills in application/octet-stream; a raw test sends none at all
        OK_BODY, {"Content-Encoding": "snappy"}, 415, "'application/octet-stream'", id="octet-stream"
    ),
    pytest.param(OK_BODY, {**V1, "Content-Type": "text/plain"}, 415, "unsupported Content-Type", id="text"),
    pytest.param(
        OK_BODY, {**V1, "Content-Type": "application/json"}, 415, "unsupported Content-Type", id="json"
    ),
    pytest.param(
        OK_BODY,
        {**V1, "Content-Type": V1_CONTENT_TYPE + ";proto=foo.Bar"},
        415,
        "unsupported proto",
        id="proto",
    ),
    pytest.param(
        OK_BODY, {"Content-Type": V1_CONTENT_TYPE}, 415, "missing Content-Encoding", id="no-encoding"
    ),
    pytest.param(OK_BODY, {**V1, "Content-Encoding": "gzip"}, 415, "Content-Encoding 'gzip'", id="gzip"),
    pytest.param(OK_BODY, {**V1, "Content-Encoding": "identity"}, 415, "Content-Encoding", id="identity"),
    pytest.param(b"", V1, 400, "corrupt snappy", id="empty-body"),
    pytest.param(b"\x00\x01garbage", V1, 400, "corrupt snappy", id="not-snappy"),
    pytest.param(snappy(b"\xff\xff\xff\xff"), V1, 400, "malformed protobuf", id="not-protobuf"),
    pytest.param(
        snappy(wire_series_v1([(b"__name__", b"up"), (b"job", b"\xff")], [(BASE_MS, 1.0)])),
        V1,
        400,
        "not valid UTF-8",
        id="invalid-utf8",
    ),
    pytest.param(
        v1_body([Series([("job", "a"), ("__name__", "up")], [(BASE_MS, 1.0)])]),
        V1,
        400,
        "not sorted",
        id="unsorted-labels",
    ),
    pytest.param(
        v1_body([Series([("__name__", "up"), ("job", "a"), ("job", "b")], [(BASE_MS, 1.0)])]),
        V1,
        400,
        "duplicate label 'job'",
        id="duplicate-label",
    ),
    pytest.param(v1_body([Series([("job", "a")], [(BASE_MS, 1.0)])]), V1, 400, "no __name__", id="no-name"),
    pytest.param(
        v1_body(one(**{f"l{i}": "x" for i in range(10)})),
        V1,
        400,
        "more than the limit of 8",
        id="too-many-labels",
    ),
    pytest.param(v1_body(one(**{"l" * 40: "x"})), V1, 400, "40 bytes long", id="long-label-name"),
    pytest.param(v1_body(one(pod="x" * 100)), V1, 400, "value of 100 bytes", id="long-label-value"),
    pytest.param(v1_body(one()), V2, 400, "1.0 prometheus.WriteRequest sent as 2.0", id="v1-body-as-v2"),
    pytest.param(_v2_broken("symbol0"), V2, 400, "must start with the empty string", id="v2-symbol0"),
    pytest.param(_v2_broken("range"), V2, 400, "refers to symbol 999", id="v2-ref-range"),
    pytest.param(_v2_broken("odd"), V2, 400, "odd number", id="v2-odd-refs"),
    pytest.param(b"\x80\x80\x80\x80\x04" + bytes(15), V1, 413, "1073741824 bytes", id="snappy-bomb"),
    pytest.param(
        v1_body([Series(labels_of(name=f"m{i}", job="a"), [(BASE_MS, 1.0)]) for i in range(5000)]),
        V1,
        413,
        "more than the limit",
        id="decompresses-too-large",
    ),
]


@pytest.mark.parametrize(("body", "headers", "status", "reason"), BAD)
async def test_bad_input_is_refused_with_a_reason_and_nothing_is_produced(
    harness: Harness, body: bytes, headers: dict[str, str], status: int, reason: str
) -> None:
    got, text, response_headers = await harness.post(body, headers)
    assert (got, reason in text) == (status, True), text
    assert text.count("\n") == 1  # one line
    assert "Retry-After" not in response_headers  # 4xx: the sender must not retry
    assert harness.ingest.stats.requests[status] == 1
    assert harness.ingest.stats.messages_produced == 0
    await harness.sentinel()


async def test_v2_answers_with_written_counts(harness: Harness) -> None:
    histogram = NativeHistogram(
        timestamp_ms=now_ms(),
        schema=0,
        zero_threshold=1e-128,
        zero_count=0,
        count=3,
        sum=4.5,
        positive_spans=((0, 2),),
        positive_counts=(1, 2),
    )
    series = [
        Series(labels_of(name="temp", job="app"), [(now_ms() - 1000, 20.5), (now_ms(), 21.0)], exemplars=2),
        Series(labels_of(name="latency_seconds", job="app"), histograms=[histogram]),
    ]
    status, text, headers = await harness.post(v2_body(series), V2)
    assert status == 204, text
    assert (headers[HEADER_SAMPLES], headers[HEADER_HISTOGRAMS], headers[HEADER_EXEMPLARS]) == ("2", "1", "2")

    status, _, headers = await harness.post(_v2_broken("odd"), V2)
    assert (status, headers[HEADER_SAMPLES]) == (400, "0")


async def test_samples_too_far_in_future_are_dropped_and_counted(harness: Harness) -> None:
    body = v1_body([Series(labels_of(name="up", job="app"), [(now_ms(), 1.0), (now_ms() + 3_600_000, 2.0)])])
    status, text, _ = await harness.post(body, V1)
    assert status == 204, text
    assert harness.ingest.stats.samples_rejected["too_far_in_future"] == 1
    records = await partition_records(harness.config, lambda got: len(got) >= 1)
    assert [len(s["samples"]) for _, doc in records for s in doc["series"]] == [1]


async def test_metrics_exposition_counts_requests(harness: Harness) -> None:
    await harness.post(OK_BODY, V1)
    await harness.post(b"junk", V1)
    async with harness.client.get("/metrics") as response:
        text = await response.text()
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert 'vigil_receiver_requests_total{code="204"} 1' in text
    assert 'vigil_receiver_requests_total{code="400"} 1' in text
    assert "vigil_receiver_samples_written_total 1.0\n" in text
    assert "# TYPE vigil_receiver_in_flight_bytes gauge" in text
    for path, expected in (("/-/healthy", 200), ("/-/ready", 200)):
        async with harness.client.get(path) as response:
            assert response.status == expected


# --- sizes and budget, with hand-written HTTP ---------------------------------------------------------


async def raw_http(port: int, head: str, body: bytes = b"", timeout: float = 10.0) -> tuple[int, bytes]:
    """Send ``head`` (request line and headers, CRLF-separated, without the blank line) and ``body``;
    return the status and the raw response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode("latin-1") + b"\r\n\r\n" + body)
        await writer.drain()
        async with asyncio.timeout(timeout):
            response = await reader.readuntil(b"\r\n\r\n")
        return int(response.split(b" ", 2)[1]), response
    finally:
        writer.close()


def post_head(length: int | str, extra: str = "") -> str:
    lines = [
        "POST /api/v1/write HTTP/1.1",
        "Host: localhost",
        f"Content-Type: {V1_CONTENT_TYPE}",
        "Content-Encoding: snappy",
        f"Content-Length: {length}",
    ]
    return "\r\n".join(lines) + extra


async def test_oversize_content_length_is_refused_before_the_body_is_read(harness: Harness) -> None:
    port = harness.client.port
    assert port is not None
    # Claims a gigabyte and sends nothing: the answer must come without waiting for the body.
    status, _ = await raw_http(port, post_head(10**9), timeout=5)
    assert status == 413
    assert harness.ingest.stats.in_flight_bytes == 0
    # Just over the snappy bound of max_body_bytes: refused too; at the bound: read and decoded.
    limit = max_compressed_length(MAX_BODY)
    status, _ = await raw_http(port, post_head(limit + 1), timeout=5)
    assert status == 413
    await harness.sentinel()


async def test_chunked_body_over_the_limit_is_refused(harness: Harness) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(200):
            yield b"\x00" * 1024

    async with harness.client.post("/api/v1/write", data=chunks(), headers=V1) as response:
        assert response.status == 413
    await harness.sentinel()


@pytest.fixture
def budget_config(broker: EmbeddedBroker) -> VigilConfig:
    return limited(broker, max_in_flight_bytes=4096)


async def test_in_flight_budget_answers_503_then_recovers(budget_config: VigilConfig) -> None:
    async for h in started(budget_config):
        port = h.client.port
        assert port is not None
        # A slow sender: announces 4090 bytes and sends 10; its reservation holds the budget.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post_head(4090).encode() + b"\r\n\r\n" + b"\x00" * 10)
        await writer.drain()
        deadline = time.monotonic() + 10
        while h.ingest.stats.in_flight_bytes != 4090:
            assert time.monotonic() < deadline, "the slow request never reserved its bytes"
            await asyncio.sleep(0.02)

        body = v1_body(sentinel_series())
        assert len(body) > 4096 - 4090
        status, text, headers = await h.post(body, V1)
        assert (status, headers.get("Retry-After")) == (503, "1"), text
        assert "too much in flight" in text
        assert h.ingest.stats.messages_produced == 0

        writer.write(b"\x00" * 4080)  # the rest of the slow body: not snappy, so 400
        await writer.drain()
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400")
        writer.close()
        assert h.ingest.stats.in_flight_bytes == 0
        await h.sentinel()  # the retried request is taken, and nothing else was produced


@pytest.mark.parametrize(
    ("head", "statuses"),
    [
        pytest.param(post_head("abc"), {400}, id="content-length-not-a-number"),
        pytest.param(post_head(-5), {400}, id="content-length-negative"),
        pytest.param(post_head(10, "\r\nContent-Length: 20"), {400}, id="content-length-twice"),
        pytest.param(post_head(10, "\r\nTransfer-Encoding: chunked"), {400}, id="length-and-chunked"),
        pytest.param(post_head(10, "\r\nX-Junk: " + "a" * 20_000), {400, 431}, id="huge-header"),
        pytest.param(post_head(10, "\r\nAuthorization: Bearer \x00\x01"), {400}, id="control-chars"),
        pytest.param(
            post_head(10).replace(V1_CONTENT_TYPE, V1_CONTENT_TYPE + ";a=b" * 1000),
            {400},
            id="many-params-ignored",
        ),
        pytest.param(post_head(10).replace(V1_CONTENT_TYPE, "\xff\xfe"), {415}, id="latin1-content-type"),
        pytest.param(
            post_head(10).replace(f"Content-Type: {V1_CONTENT_TYPE}\r\n", ""), {415}, id="no-content-type"
        ),
        pytest.param(post_head(10, "\r\nContent-Encoding: gzip"), {415}, id="two-encodings"),
    ],
)
async def test_hostile_headers_are_refused(harness: Harness, head: str, statuses: set[int]) -> None:
    port = harness.client.port
    assert port is not None
    status, response = await raw_http(port, head, b"0123456789")
    assert status in statuses, response
    await harness.sentinel()


# --- authentication -----------------------------------------------------------------------------------


@pytest.fixture
def auth_config(broker: EmbeddedBroker, tmp_path: Path) -> VigilConfig:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    auth = AuthConfig(bearer_token_file=token_file, basic_username="prom", basic_password=SecretStr(PASSWORD))
    return limited(broker, auth=auth)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        pytest.param(None, 401, id="none"),
        pytest.param("Bearer wrong-token", 401, id="bearer-wrong"),
        pytest.param(f"Bearer {TOKEN}x", 401, id="bearer-longer"),
        pytest.param(f"Bearer {TOKEN[:-1]}", 401, id="bearer-prefix"),
        pytest.param(f"Token {TOKEN}", 401, id="unknown-scheme"),
        pytest.param(basic("prom", "nope"), 401, id="basic-wrong-password"),
        pytest.param(basic("other", PASSWORD), 401, id="basic-wrong-user"),
        pytest.param("Basic !!!not-base64!!!", 401, id="basic-malformed"),
        pytest.param(basic("prom", TOKEN), 401, id="token-as-password"),
        pytest.param(f"Bearer {TOKEN}", 204, id="bearer-from-file"),
        pytest.param(f"bearer  {TOKEN} ", 204, id="bearer-case-and-spaces"),
        pytest.param(basic("prom", PASSWORD), 204, id="basic"),
    ],
)
async def test_auth(
    auth_config: VigilConfig, authorization: str | None, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async for h in started(auth_config):
        headers = dict(V1) if authorization is None else {**V1, "Authorization": authorization}
        got, text, response_headers = await h.post(v1_body(one()), headers)
        assert got == status, text
        if status == 401:
            challenges = response_headers.getall("WWW-Authenticate")
            assert challenges == ['Bearer realm="vigil"', 'Basic realm="vigil", charset="UTF-8"']
            assert h.ingest.stats.messages_produced == 0
            await h.sentinel({"Authorization": f"Bearer {TOKEN}"})
        async with h.client.get("/metrics") as response:
            metrics = await response.text()
    for secret in (TOKEN, PASSWORD):
        assert secret not in caplog.text
        assert secret not in metrics


async def test_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_RECEIVER__AUTH__BEARER_TOKEN", TOKEN)
    auth = Auth(load_config(None).receiver.auth)
    assert auth.admits(f"Bearer {TOKEN}")
    assert not auth.admits("Bearer other")
    assert not auth.admits(None)


async def test_no_auth_configured_admits_everyone() -> None:
    assert Auth(AuthConfig()).admits(None)


# --- Kafka not there ----------------------------------------------------------------------------------


@pytest.fixture
def dead_config(broker: EmbeddedBroker) -> Iterator[VigilConfig]:
    config = limited(broker)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # bound, never listening: connections are refused
        yield config.model_copy(update={"kafka": config.kafka.model_copy(update={"bootstrap_servers": dead})})


async def test_without_a_broker_the_receiver_is_healthy_not_ready_and_answers_503(
    dead_config: VigilConfig,
) -> None:
    app = make_app(dead_config)
    client = await serve_for_test(app)
    try:
        async with client.get("/-/healthy") as response:
            assert response.status == 200
        async with client.get("/-/ready") as response:
            assert response.status == 503
        async with client.post("/api/v1/write", data=OK_BODY, headers=V1) as response:
            assert (response.status, response.headers["Retry-After"]) == (503, "1")
            assert "not connected" in await response.text()
    finally:
        started_at = time.monotonic()
        await client.close()
        assert time.monotonic() - started_at < 5


async def test_large_batches_are_split_into_messages_under_the_limit() -> None:
    series = [
        {
            "labels": {"__name__": f"m{i}", "job": "svc"},
            "samples": [(BASE_MS + j, float(j)) for j in range(300)],
        }
        for i in range(20)
    ]
    chunks = encode_chunks(series, limit=4 * 1024)
    assert len(chunks) > 20  # every series was split too
    assert all(len(value) <= 4 * 1024 for value, _ in chunks)
    assert sum(points for _, points in chunks) == 20 * 300
    docs = [orjson.loads(value) for value, _ in chunks]
    assert {(doc["v"], doc["kind"]) for doc in docs} == {(2, "raw")}
    # order kept: a series split in two comes back as consecutive pieces, points in time order
    joined: dict[str, list[list[float]]] = {}
    for s in (s for doc in docs for s in doc["series"]):
        joined.setdefault(s["labels"]["__name__"], []).extend(s["samples"])
    assert list(joined) == [f"m{i}" for i in range(20)]
    assert all(points == [[BASE_MS + j, float(j)] for j in range(300)] for points in joined.values())
