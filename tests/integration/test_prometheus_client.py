"""The query client against a fake server doing what a real Prometheus will not do on demand: 500, 429
with Retry-After, hanging, malformed and truncated bodies, a wrong resultType; also the split of long
windows, the concurrency limit, auth, TLS and that no secret reaches a log line or an error message."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from connectors.prometheus import ErrorKind, PrometheusClient, QueryError, Window
from engine.config import SourceConfig
from tests.fixtures.fake_prometheus import (
    FakePrometheus,
    body,
    hang,
    matrix,
    status,
    steps,
    truncated,
)

pytestmark = pytest.mark.asyncio

STEP = 15_000
WINDOW = Window(1_732_530_000_000, 1_732_530_000_000 + 20 * STEP, STEP)
EXPECTED = [(t, t / 1000) for t in WINDOW.steps()]
FAST = {"backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 5}


def source(url: str, **extra: Any) -> SourceConfig:
    return SourceConfig(name="fake", url=url, **(FAST | extra))


async def run(fake: FakePrometheus, window: Window = WINDOW, **extra: Any) -> tuple[Any, PrometheusClient]:
    async with PrometheusClient(source(fake.url, **extra), seed=1) as client:
        return await client.query_range("up", window, name="q"), client


async def test_a_correct_answer_is_exact() -> None:
    async with FakePrometheus() as fake:
        result, client = await run(fake)
    (series,) = result.series
    assert series.points == EXPECTED
    assert fake.forms[0]["start"] == "1732530000"
    assert fake.forms[0]["step"] == "15"
    assert fake.forms[0]["query"] == "up"
    assert (client.stats.requests, client.stats.points, client.stats.retries) == (1, 21, 0)


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (status(500, b"oops"), ErrorKind.SERVER),
        (status(503, b'{"status":"error","errorType":"unavailable","error":"busy"}'), ErrorKind.SERVER),
        (status(429), ErrorKind.THROTTLED),
        (body(b"<html>bad gateway</html>"), ErrorKind.BAD_RESPONSE),
        (body(matrix([])[:-3]), ErrorKind.BAD_RESPONSE),
        (truncated, ErrorKind.BAD_RESPONSE),
        (body(b'{"status":"success","data":{"resultType":"vector","result":[]}}'), ErrorKind.BAD_RESPONSE),
        (hang(30), ErrorKind.TIMEOUT),
    ],
    ids=["500", "503", "429", "html", "malformed", "truncated", "vector", "hang"],
)
async def test_retriable_faults_are_retried_then_succeed(fault: Any, kind: ErrorKind) -> None:
    async with FakePrometheus(plan=[fault, fault]) as fake:
        started = time.monotonic()
        result, client = await run(fake, timeout_s=0.5)
    assert result.series[0].points == EXPECTED
    assert client.stats.errors == {kind: 2}
    assert (client.stats.requests, client.stats.retries) == (3, 2)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("fault", "kind", "message"),
    [
        (status(500, b"oops"), ErrorKind.SERVER, "HTTP 500: non-JSON body"),
        (truncated, ErrorKind.BAD_RESPONSE, "cut short"),
        (body(b"{"), ErrorKind.BAD_RESPONSE, "invalid JSON"),
        (hang(30), ErrorKind.TIMEOUT, "no answer within 0.3s"),
    ],
)
async def test_retries_end(fault: Any, kind: ErrorKind, message: str) -> None:
    async with FakePrometheus(plan=[fault] * 3) as fake:
        with pytest.raises(QueryError, match=message) as caught:
            await run(fake, retries=2, timeout_s=0.3)
    assert caught.value.kind is kind
    assert caught.value.retriable
    assert len(fake.forms) == 3


async def test_a_rejected_query_is_not_retried() -> None:
    rejection = b'{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected \\")\\""}'
    async with FakePrometheus(plan=[status(400, rejection)]) as fake:
        with pytest.raises(QueryError, match="HTTP 400: bad_data: 1:5: parse error") as caught:
            await run(fake)
    assert caught.value.kind is ErrorKind.REJECTED
    assert not caught.value.retriable
    assert len(fake.forms) == 1


async def test_retry_after_is_honoured() -> None:
    async with FakePrometheus(plan=[status(429, headers={"Retry-After": "1"})]) as fake:
        started = time.monotonic()
        result, client = await run(fake)
        waited = time.monotonic() - started
    assert result.series[0].points == EXPECTED
    assert waited >= 1.0  # the backoff alone would be at most 0.05 s
    assert client.stats.errors == {ErrorKind.THROTTLED: 1}


async def test_backoff_grows() -> None:
    async with FakePrometheus(plan=[status(502)] * 4) as fake:
        started = time.monotonic()
        await run(fake, backoff_s=0.1, max_backoff_s=10, retries=4)
        waited = time.monotonic() - started
    # 0.1, 0.2, 0.4, 0.8 s, each jittered to between half and all of it: at least 0.75 s in all.
    assert waited >= 0.75


async def test_an_oversized_answer_fails_without_retry() -> None:
    big = matrix([{"metric": {}, "values": [[1, "1"]] * 1000}])
    async with FakePrometheus(plan=[body(big)]) as fake:
        with pytest.raises(QueryError, match=r"larger than the limit|limit 2048") as caught:
            await run(fake, max_response_bytes=2048)
    assert caught.value.kind is ErrorKind.TOO_LARGE
    assert len(fake.forms) == 1


async def test_nan_and_inf_are_counted_not_returned() -> None:
    values = [[1, "NaN"], [2, "1"], [3, "+Inf"], [4, "-Inf"]]
    async with FakePrometheus(plan=[body(matrix([{"metric": {}, "values": values}]))]) as fake:
        result, client = await run(fake, window=Window(1000, 4000, 1000))
    assert result.series[0].points == [(2000, 1.0)]
    assert (result.nonfinite, client.stats.nonfinite) == (3, 3)


async def test_warnings_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    answer = matrix([], warnings=["PromQL info: metric might not be a counter"])
    async with FakePrometheus(plan=[body(answer)]) as fake:
        with caplog.at_level(logging.WARNING):
            result, client = await run(fake)
    assert result.series == []
    assert client.stats.warnings == 1
    assert "source fake: query q: Prometheus warns: PromQL info: metric might not be a counter" in caplog.text


async def test_a_long_window_is_split_without_losing_or_repeating_a_step() -> None:
    window = Window(0, 24 * STEP, STEP)  # 25 steps, at most 10 per request
    async with FakePrometheus() as fake, PrometheusClient(source(fake.url), max_points=10) as client:
        result = await client.query_range("up", window)
    asked = [steps(form) for form in fake.forms]
    assert [len(a) for a in asked] == [10, 10, 5]
    assert [t for a in asked for t in a] == list(window.steps())
    (series,) = result.series
    assert series.points == [(t, t / 1000) for t in window.steps()]


async def test_concurrency_is_limited_per_source() -> None:
    async with (
        FakePrometheus(plan=[hang(0.2)] * 8) as fake,
        PrometheusClient(source(fake.url, max_concurrency=2)) as client,
    ):
        results = await asyncio.gather(*(client.query_range("up", WINDOW) for _ in range(8)))
    assert all(r.series[0].points == EXPECTED for r in results)
    assert fake.max_in_flight == 2


async def test_a_refused_connection_is_retried_then_fails() -> None:
    async with FakePrometheus() as fake:
        url = fake.url
    with pytest.raises(QueryError, match="cannot reach the source") as caught:
        async with PrometheusClient(source(url, retries=2)) as client:
            await client.query_range("up", WINDOW)
    assert caught.value.kind is ErrorKind.CONNECTION
    assert client.stats.errors == {ErrorKind.CONNECTION: 3}


# --- auth and secrets ---------------------------------------------------------------------------------


async def test_bearer_token_file_is_read_for_every_request(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first-token\n")
    async with (
        FakePrometheus() as fake,
        PrometheusClient(source(fake.url, bearer_token_file=token)) as client,
    ):
        await client.query_range("up", WINDOW)
        token.write_text("rotated-token")
        await client.query_range("up", WINDOW)
        token.unlink()  # gone: the last good token is kept
        await client.query_range("up", WINDOW)
    assert [h["Authorization"] for h in fake.headers] == [
        "Bearer first-token",
        "Bearer rotated-token",
        "Bearer rotated-token",
    ]


async def test_basic_auth_from_env_and_extra_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROM_PASSWORD", "pa:ss")
    extra = {
        "basic_username": "vigil",
        "basic_password_env": "PROM_PASSWORD",
        "headers": {"X-Scope-OrgID": "t1"},
    }
    async with FakePrometheus() as fake:
        await run(fake, **extra)
    assert fake.headers[0]["Authorization"] == "Basic dmlnaWw6cGE6c3M="  # base64 of vigil:pa:ss
    assert fake.headers[0]["X-Scope-OrgID"] == "t1"


async def test_secrets_never_reach_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr3t-t0ken-value"
    echo = f'{{"status":"error","errorType":"bad_data","error":"token {secret} refused"}}'.encode()
    plan = [status(503, echo), status(401, echo)]
    async with FakePrometheus(plan=plan) as fake:
        with caplog.at_level(logging.DEBUG), pytest.raises(QueryError) as caught:
            await run(fake, bearer_token=secret, headers={"X-Api-Key": "k3y-" + secret})
    assert fake.headers[0]["Authorization"] == f"Bearer {secret}"
    assert "token *** refused" in str(caught.value)
    assert secret not in str(caught.value)
    assert secret not in caplog.text
    assert "token *** refused" in caplog.text


# --- TLS ----------------------------------------------------------------------------------------------


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


async def test_tls_with_a_ca_file_and_without(tmp_path: Path) -> None:
    cert_file, key_file = self_signed(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    async with FakePrometheus(ssl_context=server) as fake:
        assert fake.url.startswith("https://")
        trusted, _ = await run(fake, tls={"ca_file": cert_file})
        skipped, _ = await run(fake, tls={"insecure_skip_verify": True})
        with pytest.raises(QueryError, match="cannot reach the source") as caught:
            await run(fake, retries=0)  # the system CAs do not know this certificate
    assert trusted.series[0].points == EXPECTED
    assert skipped.series[0].points == EXPECTED
    assert caught.value.kind is ErrorKind.CONNECTION


async def test_series_sharing_an_instance_keep_the_first(caplog: pytest.LogCaptureFixture) -> None:
    from connectors.prometheus.watch import poll_watch
    from engine.config import LabelsConfig, QueryConfig, WatchConfig

    answer = matrix(
        [
            {"metric": {"instance": "a", "code": "200"}, "values": [[1, "1"]]},
            {"metric": {"instance": "a", "code": "500"}, "values": [[1, "2"]]},
            {"metric": {"code": "200"}, "values": [[1, "3"]]},
        ]
    )
    watch = WatchConfig(name="w", service="s", queries=[QueryConfig(name="q", query="x")])
    async with FakePrometheus(plan=[body(answer)]) as fake, PrometheusClient(source(fake.url)) as client:
        with caplog.at_level(logging.WARNING):
            poll = await poll_watch(client, watch, LabelsConfig(), Window(1000, 1000, 1000))
    assert [(s.service, s.metric, s.instance, list(s.points)) for s in poll.series] == [
        ("s", "q", "a", [(1000, 1.0)]),
        ("s", "q", "", [(1000, 3.0)]),
    ]
    assert poll.clashes == 1
    assert "1 result series share an instance label value" in caplog.text
