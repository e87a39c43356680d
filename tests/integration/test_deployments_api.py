"""Deployments through the API on the embedded broker: recorded, idempotent, listed by another replica after
a restart; Flagger's event hook; the Argo Rollouts notification template's body (rendered with Go's
text/template, as the notifications engine does) accepted as it is; broken and hostile bodies refused."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
import yaml

from connectors.api import ApiServer
from connectors.broker import EmbeddedBroker
from engine.config import VigilConfig
from tests.conftest import isolated_config

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
URL = "/api/v1/deployments"


@pytest.fixture
def config(broker: EmbeddedBroker) -> VigilConfig:
    base = isolated_config(broker)
    return base.model_copy(update={"api": base.api.model_copy(update={"port": 0, "max_body_bytes": 65_536})})


async def ready(config: VigilConfig) -> ApiServer:
    """An API whose topics are read (its consumers are started: a stop cannot catch one connecting)."""
    s = ApiServer(config)
    await s.start()
    async with asyncio.timeout(60):
        for event in (s.api.jobs.ready, s.api.views.ready, s.api.deployments.ready):
            await event.wait()
    return s


@pytest_asyncio.fixture
async def server(config: VigilConfig) -> AsyncIterator[ApiServer]:
    s = await ready(config)
    yield s
    await s.stop()


async def call(server: ApiServer, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else None if body is None else orjson.dumps(body)
    headers = kw.pop("headers", {"Content-Type": "application/json"})
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, server.url + path, data=data, headers=headers, **kw) as r,
    ):
        return r.status, orjson.loads(await r.read())


async def listed(server: ApiServer, service: str, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        status, doc = await call(server, "GET", f"{URL}?service={service}")
        assert status == 200
        if doc["deployments"] or time.monotonic() > deadline:
            return list(doc["deployments"])
        await asyncio.sleep(0.1)


async def test_a_deployment_is_recorded_once_and_known_to_a_replica_started_later(
    server: ApiServer, config: VigilConfig
) -> None:
    body = {"service": "checkout", "version": "v42", "time": "2026-11-01T19:00:00Z", "namespace": "shop"}
    status, created = await call(server, "POST", URL, body)
    assert status == 201
    assert (created["service"], created["version"], created["time"], created["source"]) == (
        "checkout",
        "v42",
        "2026-11-01T19:00:00.000Z",
        "api",
    )
    status, again = await call(server, "POST", URL, {**body, "time": "2026-11-01T19:05:00Z"})  # a retry
    assert status == 200
    assert again == created  # the first report's time is kept
    await server.stop()
    other = await ready(config)
    try:
        assert await listed(other, "checkout") == [created]
        status, everything = await call(other, "GET", URL)
        assert status == 200
        assert everything["deployments"] == [created]
    finally:
        await other.stop()


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"{not json", 400, "not JSON"),
        (b"[]", 400, "deployment"),
        ({"service": "checkout"}, 400, "version"),
        ({"service": "checkout", "version": "v1", "time": "2026-11-01T19:00:00"}, 400, "time zone"),
        ({"service": "checkout", "version": "v1", "rm -rf": "/"}, 400, "rm -rf"),
        ({"service": "x" * 5000, "version": "v1"}, 400, "service"),
        ({"service": "checkout", "version": "v1", "note": "a" * 70_000}, 413, ""),
    ],
)
async def test_bad_bodies_are_refused_with_a_json_reason(
    server: ApiServer, body: Any, status: int, reason: str
) -> None:
    got, doc = await call(server, "POST", URL, body)
    assert got == status
    assert reason in doc["reason"]
    assert (await call(server, "GET", URL))[1] == {"deployments": []}


async def test_a_deployment_must_be_sent_as_json(server: ApiServer) -> None:
    status, doc = await call(server, "POST", URL, b"service=checkout", headers={"Content-Type": "text/plain"})
    assert status == 415
    assert doc["error"] == "unsupported_media_type"


async def test_flagger_events_record_the_new_revision_and_nothing_else(server: ApiServer) -> None:
    def event(message: str, stamp: int) -> dict[str, Any]:
        return {
            "name": "podinfo",
            "namespace": "test",
            "phase": "Progressing",
            "checksum": "6d9f8c5b",
            "metadata": {"eventMessage": message, "eventType": "Normal", "timestamp": str(stamp)},
        }

    t0 = 1_793_559_600_000
    status, doc = await call(server, "POST", "/api/v1/flagger/event", event("Starting canary analysis", t0))
    assert (status, doc["recorded"]) == (200, False)
    status, doc = await call(
        server, "POST", "/api/v1/flagger/event", event("New revision detected! Scaling up", t0)
    )
    assert status == 201
    assert doc["deployment"]["version"] == "6d9f8c5b"
    assert doc["deployment"]["time_ms"] == t0
    status, doc = await call(
        server, "POST", "/api/v1/flagger/event", event("New revision detected! Scaling up", t0 + 60_000)
    )
    assert (status, doc["recorded"], doc["deployment"]["time_ms"]) == (200, False, t0)
    status, doc = await call(server, "POST", "/api/v1/flagger/event", {"name": "podinfo"})
    assert status == 400
    assert "namespace" in doc["reason"]


@pytest.fixture
def argo_body(tmp_path: Path) -> bytes:
    """The body config/argo/notifications.yaml makes Argo Rollouts send for a Rollout of checkout v42."""
    configmap = yaml.safe_load((ROOT / "config" / "argo" / "notifications.yaml").read_text())
    template = yaml.safe_load(configmap["data"]["template.vigil-deployment"])
    binary = tmp_path / "argo-notify"
    subprocess.run(
        ["go", "build", "-o", str(binary), "./notify"],
        cwd=ROOT / "tests" / "argo",
        check=True,
        timeout=240,
        capture_output=True,
    )
    rollout = {
        "metadata": {"name": "checkout", "namespace": "shop", "annotations": {}},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "registry/checkout:v42"}]}}},
    }
    return subprocess.run(
        [str(binary), template["webhook"]["vigil"]["body"]],
        input=orjson.dumps(rollout),
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout


async def test_the_argo_rollouts_notification_body_is_accepted_as_rendered(
    server: ApiServer, argo_body: bytes
) -> None:
    status, doc = await call(server, "POST", URL, argo_body)
    assert status == 201, doc
    assert (doc["service"], doc["version"], doc["source"], doc["namespace"]) == (
        "checkout",
        "registry/checkout:v42",
        "argo",
        "shop",
    )
