"""The API server on the embedded broker and a real Prometheus holding generated canary data: create,
long-poll, idempotent retries, events, auth, errors as JSON (broken, hostile, oversized bodies), and a
second replica that answers for and takes over another's jobs."""

from __future__ import annotations

import asyncio
import base64
import io
import ssl
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer

from connectors.api import ApiServer
from connectors.broker import EmbeddedBroker, free_port
from engine.config import ApiConfig, SourceConfig, VigilConfig
from tests.conftest import Broker, isolated_config
from tests.fixtures.canary import END, START, generate
from tests.fixtures.prometheus import Prometheus
from tests.fixtures.tsdb import prometheus_with

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(180)]

URL = "/api/v1/verifications"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    with prometheus_with(generate(), tmp_path_factory.mktemp("prometheus-api")) as running:
        yield running


@pytest.fixture
def config(broker: EmbeddedBroker, prometheus: Prometheus) -> VigilConfig:
    """Topics of its own on the session broker, the Prometheus as source ``main``, any free API port."""
    return on_broker(broker, prometheus)


def on_broker(broker: Broker, prometheus: Prometheus) -> VigilConfig:
    base = isolated_config(broker)
    source = SourceConfig(name="main", url=prometheus.url, retries=1)
    return base.model_copy(
        update={
            "poller": base.poller.model_copy(update={"sources": (source,)}),
            "labels": base.labels.model_copy(update={"instance": "pod"}),
            "api": base.api.model_copy(update={"port": 0}),
        }
    )


def with_api(config: VigilConfig, **api: Any) -> VigilConfig:
    return config.model_copy(update={"api": ApiConfig(**(config.api.model_dump() | api))})


def request(service: str, **extra: Any) -> dict[str, Any]:
    return {
        "service": service,
        "baseline": 'version="v41"',
        "canary": 'version="v42"',
        "pack": ["http"],
        "start": START,
        "end": END,
    } | extra


async def started(config: VigilConfig) -> ApiServer:
    server = ApiServer(config)
    await server.start()
    async with asyncio.timeout(60):
        await server.api.jobs.ready.wait()
        await server.api.views.ready.wait()  # /-/ready also waits for the status and verdict topics
        await server.api.deployments.ready.wait()  # and for the deployments topic
    return server


@pytest_asyncio.fixture
async def server(config: VigilConfig) -> AsyncIterator[ApiServer]:
    running = await started(config)
    yield running
    await running.stop()


async def done(session: aiohttp.ClientSession, base: str, ident: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        async with session.get(f"{base}{URL}/{ident}", params={"wait_s": "10"}) as r:
            assert r.status == 200
            doc: dict[str, Any] = await r.json()
        if doc["status"] != "running":
            return doc
        assert time.monotonic() < deadline, doc


async def events(config: VigilConfig, wanted: set[str], subject: str) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(
        config.kafka.topics.verdicts,
        bootstrap_servers=config.kafka.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    seen: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(60):
            async for record in consumer:
                event = orjson.loads(record.value)
                if event["subject"] == subject:
                    seen.append(event)
                if wanted <= {e["type"] for e in seen}:
                    return seen
    finally:
        await consumer.stop()
    return seen


async def test_a_failing_canary_is_judged_and_announced(server: ApiServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url + URL, json=request("errors5", key="deploy-1")) as r:
            assert r.status == 201, await r.text()
            created = await r.json()
            assert r.headers["Location"] == f"{URL}/{created['id']}"
        assert created["status"] == "running"
        assert created["verdict"] is None
        doc = await done(session, server.url, created["id"])
        assert doc["status"] == "done"
        assert doc["verdict"] == "fail"
        blamed = {m["name"]: m["result"] for m in doc["metrics"]}
        assert blamed["http_error_ratio"] == "high"
        assert doc["decided_at"] < "2026-12-02T10:05:00Z"
        # a deployment tool retrying the call gets the same verification
        async with session.post(server.url + URL, json=request("errors5", key="deploy-1")) as r:
            assert r.status == 200
            assert (await r.json())["id"] == created["id"]
        async with session.get(server.url + URL, params={"service": "errors5"}) as r:
            listed = (await r.json())["verifications"]
        assert [v["id"] for v in listed] == [created["id"]]
        async with session.delete(f"{server.url}{URL}/{created['id']}") as r:
            assert r.status == 409
            assert (await r.json())["error"] == "not_running"
    seen = await events(
        server.config,
        {"vigil.verification.started", "vigil.verification.failed"},
        f"errors5/{created['id']}",
    )
    failed = next(e for e in seen if e["type"] == "vigil.verification.failed")
    assert failed["data"]["verdict"] == "fail"
    assert failed["specversion"] == "1.0"


async def test_a_query_the_source_refuses_ends_the_job_in_error_and_says_so(server: ApiServer) -> None:
    broken = request("errors5", pack=[], metrics=[{"name": "q", "query": "sum(rate(x{{{selector}}}[1m]"}])
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url + URL, json=broken) as r:
            assert r.status == 201, await r.text()
            ident = (await r.json())["id"]
        doc = await done(session, server.url, ident)
    assert doc["status"] == "error"
    assert doc["verdict"] is None
    seen = await events(server.config, {"vigil.verification.error"}, f"errors5/{ident}")
    error = next(e for e in seen if e["type"] == "vigil.verification.error")
    assert error["data"]["status"] == "error"
    assert error["data"]["reason"] == doc["reason"]


async def test_post_with_wait_s_answers_with_the_verdict(server: ApiServer) -> None:
    """A deployment tool that measures once per call (Argo's web provider): POST with a key and wait_s."""
    body = request("errors5", key="argo-1")
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url + URL, json=body, params={"wait_s": "30"}) as r:
            assert r.status == 201
            first = await r.json()
        async with session.post(server.url + URL, json=body, params={"wait_s": "30"}) as r:
            assert r.status == 200
            again = await r.json()
        async with session.post(server.url + URL, json=body, params={"wait_s": "-1"}) as r:
            assert r.status == 400
    assert first["state"] == "fail"  # the POST waited for the verdict (a replay takes about a second)
    assert first["verdict"] == "fail"
    assert again["id"] == first["id"]
    assert again["state"] == "fail"


async def test_pass_and_inconclusive(server: ApiServer) -> None:
    async with aiohttp.ClientSession() as session:
        ids = {}
        for service in ("clean", "idle"):
            async with session.post(server.url + URL, json=request(service)) as r:
                assert r.status == 201
                ids[service] = (await r.json())["id"]
        clean = await done(session, server.url, ids["clean"])
        idle = await done(session, server.url, ids["idle"])
    assert clean["verdict"] == "pass"
    assert clean["state"] == "pass"
    assert idle["verdict"] == "inconclusive"
    assert "no canary traffic since" in idle["reason"]


LATENCY = (
    "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{ {{selector}} }[1m])))"
)


async def test_a_load_test_against_an_earlier_run_by_key_or_id(server: ApiServer) -> None:
    """The earlier run is a verification of 10:02-10:17; the load test (10:17-10:32, the same canary pods'
    p95 latency, load within ±20 %, so latency within ±2 %) is judged against its window and passes."""
    earlier = request("clean", end="2026-12-02T10:17:00Z", key="load-run-1")
    metric = {"name": "latency_p95", "query": LATENCY, "direction": "higher"}
    load = {
        "service": "clean",
        "type": "load_test",
        "selector": 'job="clean",version="v42"',
        "metrics": [metric],
        "start": "2026-12-02T10:17:00Z",
        "end": END,
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url + URL, json=earlier) as r:
            assert r.status == 201
            first = await r.json()
        for run in ("load-run-1", first["id"]):
            body = load | {"baseline_run": run, "key": f"load-{run}"}
            async with session.post(server.url + URL, json=body) as r:
                assert r.status == 201, await r.text()
                ident = (await r.json())["id"]
            doc = await done(session, server.url, ident)
            assert doc["verdict"] == "pass", doc["reason"]
            assert doc["type"] == "load_test"
            assert doc["baseline_run"] == run
            assert doc["request"]["baseline_start"] == "2026-12-02T10:02:00Z"
            assert doc["reason"].startswith("as good as the earlier run")
        async with session.post(server.url + URL, json=load | {"baseline_run": "no-such-run"}) as r:
            assert r.status == 400
            assert "baseline_run: no verification with id or key 'no-such-run'" in (await r.json())["reason"]
        both = load | {"baseline_run": "load-run-1", "baseline_start": "2026-12-02T10:02:00Z"}
        async with session.post(server.url + URL, json=both) as r:
            assert r.status == 400
            assert "one of baseline_start and baseline_run" in (await r.json())["reason"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "reason"),
    [
        (b"{", "application/json", 400, "not JSON"),
        (b"[]", "application/json", 400, "request"),
        (b'"x"', "application/json", 400, "request"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "not JSON"),
        (orjson.dumps(request("s", colour=1)), "application/json", 400, "colour: Extra inputs"),
        (orjson.dumps(request("s", source="nope")), "application/json", 400, "no source named 'nope'"),
        (orjson.dumps(request("s", pack=["nope"])), "application/json", 400, "pack.0"),
        (orjson.dumps(request("s", step="-1s")), "application/json", 400, "step"),
        (orjson.dumps(request("s")), "text/plain", 415, "application/json"),
        (b" " * (2 * 1024 * 1024), "application/json", 413, "api.max_body_bytes"),
    ],
)
async def test_bad_bodies_are_refused_with_a_json_reason(
    server: ApiServer, body: bytes, content_type: str, status: int, reason: str
) -> None:
    headers = {"Content-Type": content_type}
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.url + URL, data=io.BytesIO(body), headers=headers) as r,
    ):
        assert r.status == status
        doc = await r.json()
    assert reason in doc["reason"]
    assert not server.api.jobs.running


async def test_other_errors_are_json_too(server: ApiServer) -> None:
    async with aiohttp.ClientSession() as session:
        for method, path, status in [
            ("GET", f"{URL}/nope", 404),
            ("GET", "/nowhere", 404),
            ("PUT", URL, 405),
            ("GET", f"{URL}/x?wait_s=abc", 400),
            ("GET", f"{URL}/x?wait_s=100000", 400),
            ("DELETE", f"{URL}/nope", 404),
        ]:
            async with session.request(method, server.url + path) as r:
                assert r.status == status, (method, path)
                assert "reason" in await r.json()
        for path in ("/-/healthy", "/-/ready"):
            async with session.get(server.url + path) as r:
                assert r.status == 200
        async with session.get(server.url + "/api/v1/openapi.json") as r:
            spec = await r.json()
        assert spec["openapi"].startswith("3.")
        assert "/api/v1/verifications/{id}" in spec["paths"]
        assert {"/api/v1/services", "/api/v1/services/{service}", "/api/v1/anomalies"} <= set(spec["paths"])
        assert "baseline" in spec["components"]["schemas"]["Request"]["properties"]
        async with session.get(server.url + "/metrics") as r:
            text = await r.text()
        assert 'vigil_api_requests_total{code="404",method="GET"}' in text


async def test_bearer_auth(config: VigilConfig, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    server = await started(with_api(config, auth={"bearer_token_file": token}))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url + URL) as r:
                assert r.status == 401
                assert "Bearer" in r.headers["WWW-Authenticate"]
                assert "s3cret" not in await r.text()
            async with session.get(server.url + URL, headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
            async with session.get(server.url + URL, headers={"Authorization": "Bearer s3cret-token"}) as r:
                assert r.status == 200
            async with session.get(server.url + "/-/healthy") as r:
                assert r.status == 200
    finally:
        await server.stop()


@pytest.fixture(
    params=["embedded", pytest.param("kafka", marks=pytest.mark.kafka)], ids=["embedded", "kafka"]
)
def both(request: pytest.FixtureRequest, prometheus: Prometheus) -> VigilConfig:
    """As ``config``, on the embedded broker and on Apache Kafka."""
    found: Broker = request.getfixturevalue("broker" if request.param == "embedded" else "kafka")
    return on_broker(found, prometheus)


async def test_another_replica_answers_and_takes_over_after_a_restart(both: VigilConfig) -> None:
    """A live verification (10 minutes from now) on replica A; A stops; B, started on the same topic,
    answers for it and takes it over once its lease (1 s here) has run out; B can cancel it."""
    config = with_api(both, lease_s=1.0)
    first = await started(config)
    async with aiohttp.ClientSession() as session:
        live = request("clean", duration="10m")
        del live["start"], live["end"]
        async with session.post(first.url + URL, json=live) as r:
            assert r.status == 201, await r.text()
            ident = (await r.json())["id"]
        await first.stop()
        second = await started(config)
        try:
            async with session.get(f"{second.url}{URL}/{ident}") as r:
                assert (await r.json())["status"] == "running"
            deadline = time.monotonic() + 30
            while ident not in second.api.jobs.running:
                assert time.monotonic() < deadline, "replica B never took the job over"
                await asyncio.sleep(0.1)
            async with session.delete(f"{second.url}{URL}/{ident}") as r:
                assert r.status == 200
                assert (await r.json())["status"] == "cancelled"
            deadline = time.monotonic() + 10
            while ident in second.api.jobs.running:
                assert time.monotonic() < deadline, "the cancelled job still runs"
                await asyncio.sleep(0.1)
            seen = await events(config, {"vigil.verification.cancelled"}, f"clean/{ident}")
            cancelled = next(e for e in seen if e["type"] == "vigil.verification.cancelled")
            assert cancelled["data"]["status"] == "cancelled"
            assert cancelled["data"]["reason"] == "cancelled by a DELETE"
        finally:
            await second.stop()


async def test_tls_and_basic_auth(config: VigilConfig, tmp_path: Path) -> None:
    from tests.integration.test_receiver_prometheus import self_signed

    cert_file, key_file = self_signed(tmp_path)
    tls = {"cert_file": cert_file, "key_file": key_file}
    server = await started(with_api(config, tls=tls, auth={"basic_username": "ci", "basic_password": "pw"}))
    try:
        assert server.url.startswith("https://")
        context = ssl.create_default_context(cafile=str(cert_file))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            for password, status in (("pw", 200), ("nope", 401)):
                basic = "Basic " + base64.b64encode(f"ci:{password}".encode()).decode()
                async with session.get(server.url + URL, headers={"Authorization": basic}) as r:
                    assert r.status == status
            async with session.get(server.url + URL, headers={"Authorization": "Basic %%%"}) as r:
                assert r.status == 401
    finally:
        await server.stop()


def flagger_payload(name: str, **metadata: str) -> dict[str, Any]:
    meta = {
        "baseline": 'version="v41"',
        "canary": 'version="v42"',
        "pack": "http",
        "start": START,
        "end": END,
    }
    return {
        "name": name,
        "namespace": "shop",
        "phase": "Progressing",
        "checksum": "7f9c6d",
        "metadata": meta | metadata,
    }


async def test_flagger_webhooks(server: ApiServer) -> None:
    hook = server.url + "/api/v1/flagger/"
    async with aiohttp.ClientSession() as session:
        async with session.post(hook + "rollout", json=flagger_payload("errors5")) as r:
            assert r.status in (200, 412)  # running (go on), or already failed
            ident = (await r.json())["id"]
        await done(session, server.url, ident)
        async with session.post(hook + "rollout", json=flagger_payload("errors5")) as r:
            assert r.status == 412
            body = await r.json()
        assert body["id"] == ident
        assert "http_error_ratio high" in body["reason"]
        async with session.post(hook + "rollback", json=flagger_payload("errors5")) as r:
            assert r.status == 200
        async with session.post(hook + "confirm-promotion", json=flagger_payload("clean")) as r:
            clean = (await r.json())["id"]
        await done(session, server.url, clean)
        async with session.post(hook + "confirm-promotion", json=flagger_payload("clean")) as r:
            assert r.status == 200
            assert (await r.json())["state"] == "pass"
        async with session.post(hook + "rollback", json=flagger_payload("clean")) as r:
            assert r.status == 409
        # the other types through metadata: the leak pods' memory after 10:17 against before it
        before_after = {"type": "before_after", "selector": 'version="v42"', "pack": "process"}
        before_after |= {"deployed_at": "2026-12-02T10:17:00Z", "end": END}
        payload = flagger_payload("leak") | {"checksum": "ba"}
        payload["metadata"] = before_after
        async with session.post(hook + "confirm-promotion", json=payload) as r:
            judged = (await r.json())["id"]
        doc = await done(session, server.url, judged)
        assert (doc["type"], doc["verdict"]) == ("before_after", "fail"), doc["reason"]
        async with session.post(hook + "confirm-promotion", json=payload) as r:
            assert r.status == 412
            assert "before the deploy" in (await r.json())["reason"]
        for kind, body, status in [
            ("rollout", {"namespace": "shop"}, 400),
            ("rollout", flagger_payload("x", colour="blue"), 400),
            ("rollout", flagger_payload("x", pack="nope"), 400),
            ("rollout", flagger_payload("x", type="before_after"), 400),  # baseline: not of that type
            ("nonsense", flagger_payload("x"), 404),
        ]:
            async with session.post(hook + kind, json=body) as r:
                assert r.status == status, (kind, body)
                assert (await r.json())["reason"]


async def vigil_verify_api(url: str, service: str, *extra: str) -> tuple[int, str, str]:
    args = ["-m", "vigil", "verify", "--api", url, "--service", service, "--baseline", 'version="v41"']
    args += ["--canary", 'version="v42"', "--pack", "http", "--start", START, "--end", END, *extra]
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(120):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_vigil_verify_with_api_submits_and_exits_by_the_verdict(server: ApiServer) -> None:
    code, out, err = await vigil_verify_api(server.url, "errors5")
    assert code == 1, err
    assert "http_error_ratio" in out
    assert "high !" in out
    assert "verdict: fail: canary regressed" in out
    code, out, err = await vigil_verify_api(server.url, "clean", "--json")
    assert code == 0, err
    assert orjson.loads(out)["verdict"] == "pass"
    code, out, err = await vigil_verify_api(server.url, "idle")
    assert code == 3, err
    code, out, err = await vigil_verify_api(server.url, "clean", "--pack", "nope")
    assert code == 2
    assert "400" in err
    code, out, err = await vigil_verify_api(f"http://127.0.0.1:{free_port()}", "clean")
    assert code == 2
    assert "cannot reach the API" in err
