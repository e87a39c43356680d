"""The API's HTTP routes. Every error is JSON ``{"error": <short name>, "reason": <one sentence>}``;
4xx means the call itself is wrong (do not resend it as is), 5xx and 503 that trying again may help."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from connectors.api import flagger, health_routes
from connectors.api.answers import error, ok
from connectors.api.deployments import DeploymentLog, flagger_event
from connectors.api.jobs import Jobs, now_ms, state_of
from connectors.api.openapi import openapi
from connectors.api.views import ServicesView, ViewFollower
from connectors.metrics import SeriesCollector
from connectors.receiver.auth import Auth
from engine.config import VigilConfig
from engine.deployments import parse_deployment
from engine.errors import ConfigError
from engine.verification.request import parse_request

log = logging.getLogger("vigil.api")

PREFIX = "/api/v1/verifications"
OPEN = ("/-/healthy", "/-/ready", "/metrics", "/api/v1/openapi.json")


class Api:
    """What the handlers share."""

    def __init__(self, config: VigilConfig) -> None:
        self.config = config
        self.auth = Auth(config.api.auth, "api.auth")
        self.jobs = Jobs(config)
        self.deployments = DeploymentLog(config)
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vigil_api_requests", "HTTP requests answered", ["method", "code"], registry=self.registry
        )
        running = Gauge(
            "vigil_api_verifications_running", "verifications this replica judges", registry=self.registry
        )
        running.set_function(lambda: len(self.jobs.running))
        known = Gauge("vigil_api_verifications", "verifications known (all replicas)", registry=self.registry)
        known.set_function(lambda: len(self.jobs.docs))
        finished = Gauge(
            "vigil_api_verifications_finished",
            "verifications this replica finished, by verdict or status",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in self.jobs.finished:
            finished.labels(outcome).set_function(self._finished(outcome))
        self.view = ServicesView(config)
        self.views = ViewFollower(config, self.view)
        self.registry.register(SeriesCollector(self.view.live, self.view.health))
        self.registry.register(health_routes.RefusedCollector(self.views))

    def _finished(self, outcome: str) -> Callable[[], float]:
        return lambda: float(self.jobs.finished.get(outcome, 0))


API = web.AppKey("api", Api)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Auth, JSON errors for everything aiohttp answers itself (404, 405, 413), an id for a bug."""
    api = request.app[API]
    try:
        if request.path not in OPEN and not api.auth.admits(request.headers.get("Authorization")):
            response: web.StreamResponse = error(
                401,
                "unauthorized",
                "missing or wrong credentials",
                {"WWW-Authenticate": ", ".join(api.auth.challenges)},
            )
        else:
            response = await handler(request)
    except web.HTTPRequestEntityTooLarge:
        response = error(
            413, "too_large", f"the body is over api.max_body_bytes ({api.config.api.max_body_bytes})"
        )
    except web.HTTPException as exc:
        response = error(
            exc.status,
            exc.reason.lower().replace(" ", "_"),
            f"{exc.reason}: {request.method} {request.path[:200]}",
        )
    except Exception:
        ident = uuid.uuid4().hex[:12]
        log.exception("API request failed (error id %s)", ident)
        response = error(500, "internal", f"a bug in Vigil (error id {ident}); the log has the details")
    api.requests.labels(request.method, str(response.status)).inc()
    return response


async def _healthy(request: web.Request) -> web.Response:
    return web.Response(text="Vigil API is healthy.\n")


async def _ready(request: web.Request) -> web.Response:
    api = request.app[API]
    if not api.jobs.ready.is_set():
        return error(
            503, "not_ready", "the verification jobs are not read from Kafka yet", {"Retry-After": "1"}
        )
    if not api.views.ready.is_set():
        return error(
            503,
            "not_ready",
            "the status and verdict topics are not read from Kafka yet",
            {"Retry-After": "1"},
        )
    if not api.deployments.ready.is_set():
        return error(503, "not_ready", "the deployments topic is not read yet", {"Retry-After": "1"})
    return web.Response(text="Vigil API is ready.\n")


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[API].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _openapi(request: web.Request) -> web.Response:
    return ok(openapi())


def _unready(api: Api) -> web.Response | None:
    if api.jobs.ready.is_set():
        return None
    return error(503, "not_ready", "the verification jobs are not read from Kafka yet", {"Retry-After": "1"})


async def _create(request: web.Request) -> web.Response:
    api = request.app[API]
    if (busy := _unready(api)) is not None:
        return busy
    if request.content_type != "application/json":
        return error(415, "unsupported_media_type", "send the request as Content-Type: application/json")
    wait = _wait_s(api, request)
    if isinstance(wait, web.Response):
        return wait
    body = await request.read()
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return error(400, "bad_json", f"the body is not JSON: {str(exc)[:200]}")
    try:
        job, created = await api.jobs.create(parse_request(doc))
    except ConfigError as exc:
        return error(400, "invalid", str(exc)[:1000])
    location = {"Location": f"{PREFIX}/{job['id']}"}
    return ok(public(await _settled(api, job["id"], wait)), 201 if created else 200, location)


def public(doc: dict[str, Any]) -> dict[str, Any]:
    """The document as answered; ``state`` is the verdict once there is one, else the status (one field for
    tools that read a single value, like Argo Rollouts' web provider)."""
    out = {k: v for k, v in doc.items() if k not in ("owner", "updated_at_ms", "final", "due_at_ms")}
    out["state"] = state_of(doc, now_ms())
    return out


def _wait_s(api: Api, request: web.Request) -> float | web.Response:
    raw = request.query.get("wait_s")
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= api.config.api.max_wait_s:
        return error(400, "invalid", f"wait_s: a number of seconds from 0 to {api.config.api.max_wait_s:g}")
    return wait


async def _settled(api: Api, ident: str, wait: float) -> dict[str, Any]:
    """The job's document once its status or verdict changes, or after ``wait`` seconds."""
    doc = api.jobs.docs[ident]
    if wait <= 0 or doc["status"] != "running":
        return doc
    loop = asyncio.get_running_loop()
    before, deadline = (doc["status"], doc["verdict"]), loop.time() + wait
    while (api.jobs.docs[ident]["status"], api.jobs.docs[ident]["verdict"]) == before:
        left = deadline - loop.time()
        if left <= 0:
            break
        await api.jobs.changed(ident, left)
    return api.jobs.docs[ident]


async def _get(request: web.Request) -> web.Response:
    api = request.app[API]
    ident = request.match_info["id"]
    wait = _wait_s(api, request)
    if isinstance(wait, web.Response):
        return wait
    if ident not in api.jobs.docs:
        return error(404, "not_found", f"no verification {ident[:64]!r}")
    return ok(public(await _settled(api, ident, wait)))


async def _flagger(request: web.Request) -> web.Response:
    api = request.app[API]
    kind = request.match_info["kind"]
    if kind == "event":
        return await _flagger_event(request)
    if kind not in flagger.KINDS:
        return error(
            404,
            "not_found",
            f"no Flagger hook kind {kind[:64]!r}; the kinds are {', '.join(flagger.KINDS)}, event",
        )
    if (busy := _unready(api)) is not None:
        return busy
    try:
        doc = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        return error(400, "bad_json", f"the body is not JSON: {str(exc)[:200]}")
    try:
        job, _ = await api.jobs.create(parse_request(flagger.request_of(doc)))
    except ConfigError as exc:
        return error(400, "invalid", str(exc)[:1000])
    status, reason = flagger.answer(kind, job)
    body = {"id": job["id"], "state": state_of(job, now_ms()), "reason": reason}
    if status >= 300:
        body["error"] = "check_failed" if kind != "rollback" else "no_rollback"
    return ok(body, status, {"Location": f"{PREFIX}/{job['id']}"})


async def _flagger_event(request: web.Request) -> web.Response:
    """Flagger's event hook: a new revision records a deployment; every other event is answered 200 and
    ignored (Flagger only logs what an event hook answers)."""
    api = request.app[API]
    try:
        doc = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        return error(400, "bad_json", f"the body is not JSON: {str(exc)[:200]}")
    try:
        found = flagger_event(doc)
    except ConfigError as exc:
        return error(400, "invalid", str(exc)[:1000])
    if isinstance(found, str):
        return ok({"recorded": False, "reason": found})
    d, created = await api.deployments.record(found)
    return ok({"recorded": created, "deployment": d.doc()}, 201 if created else 200)


async def _record_deployment(request: web.Request) -> web.Response:
    api = request.app[API]
    if request.content_type != "application/json":
        return error(415, "unsupported_media_type", "send the deployment as Content-Type: application/json")
    try:
        doc = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        return error(400, "bad_json", f"the body is not JSON: {str(exc)[:200]}")
    try:
        d, created = await api.deployments.record(parse_deployment(doc))
    except ConfigError as exc:
        return error(400, "invalid", str(exc)[:1000])
    return ok(d.doc(), 201 if created else 200)


async def _deployments(request: web.Request) -> web.Response:
    known = request.app[API].deployments.known
    service = request.query.get("service")
    services = [service] if service is not None else known.services()
    return ok({"deployments": [d.doc() for s in services for d in known.of(s)]})


async def _list(request: web.Request) -> web.Response:
    api = request.app[API]
    service = request.query.get("service")
    docs = [public(d) for d in api.jobs.docs.values() if service is None or d["service"] == service]
    docs.sort(key=lambda d: d["created_at"])
    return ok({"verifications": docs})


async def _delete(request: web.Request) -> web.Response:
    api = request.app[API]
    ident = request.match_info["id"]
    doc = api.jobs.docs.get(ident)
    if doc is None:
        return error(404, "not_found", f"no verification {ident[:64]!r}")
    if doc["status"] != "running":
        return error(409, "not_running", f"verification {ident} is {doc['status']}, not running")
    return ok(public(await api.jobs.cancel(ident)))


def make_app(config: VigilConfig) -> web.Application:
    """The API application; its clean-up context owns the jobs (their Kafka producer and consumer)."""
    api = Api(config)
    app = web.Application(client_max_size=config.api.max_body_bytes, middlewares=[errors])
    app[API] = api
    app[health_routes.VIEWS] = api.views

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await app[API].jobs.start()
        await app[API].deployments.start()
        await app[API].views.start()
        yield
        await app[API].views.stop()
        await app[API].deployments.stop()
        await app[API].jobs.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/-/healthy", _healthy)
    app.router.add_get("/-/ready", _ready)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/api/v1/openapi.json", _openapi)
    app.router.add_post(PREFIX, _create)
    app.router.add_get(PREFIX, _list)
    app.router.add_get(PREFIX + "/{id}", _get)
    app.router.add_delete(PREFIX + "/{id}", _delete)
    app.router.add_post("/api/v1/flagger/{kind}", _flagger)
    app.router.add_post("/api/v1/deployments", _record_deployment)
    app.router.add_get("/api/v1/deployments", _deployments)
    health_routes.add_routes(app)
    return app
