"""The services routes: health per service and instance, per-metric evidence, anomalies.

Answered from the :class:`~connectors.api.views.ServicesView` every replica builds from the status and
verdict topics; 503 until those have been read to where they ended at start.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from connectors.api.answers import error, ok
from connectors.api.views import ServicesView, ViewFollower
from engine.status import MAX_NAME

SERVICES = "/api/v1/services"
ANOMALIES = "/api/v1/anomalies"
STATES = ("open", "resolved")

VIEWS = web.AppKey("views", ViewFollower)


def _view(request: web.Request) -> ServicesView | web.Response:
    follower = request.app[VIEWS]
    if not follower.ready.is_set():
        return error(
            503,
            "not_ready",
            "the status and verdict topics are not read from Kafka yet",
            {"Retry-After": "1"},
        )
    return follower.view


def _unknown(request: web.Request, allowed: Iterable[str]) -> web.Response | None:
    extra = sorted(set(request.query) - set(allowed))
    if extra:
        known = ", ".join(allowed) or "none"
        return error(400, "invalid", f"unknown query parameter {extra[0][:64]!r} (known: {known})")
    for name in request.query:
        if len(request.query.getall(name)) > 1:
            return error(400, "invalid", f"query parameter {name!r} given more than once")
    return None


async def _services(request: web.Request) -> web.Response:
    if (bad := _unknown(request, ())) is not None:
        return bad
    view = _view(request)
    if isinstance(view, web.Response):
        return view
    return ok(view.services())


async def _service(request: web.Request) -> web.Response:
    if (bad := _unknown(request, ())) is not None:
        return bad
    view = _view(request)
    if isinstance(view, web.Response):
        return view
    name = request.match_info["service"]
    doc = view.service(name)
    if doc is None:
        return error(404, "not_found", f"no live series of service {name[:64]!r}")
    return ok(doc)


async def _anomalies(request: web.Request) -> web.Response:
    if (bad := _unknown(request, ("service", "state"))) is not None:
        return bad
    service = request.query.get("service")
    if service is not None and not 0 < len(service) <= MAX_NAME:
        return error(400, "invalid", f"service: a name of 1 to {MAX_NAME} characters")
    state = request.query.get("state")
    if state is not None and state not in STATES:
        return error(400, "invalid", f"state: open or resolved, got {state[:32]!r}")
    view = _view(request)
    if isinstance(view, web.Response):
        return view
    return ok({"anomalies": view.anomalies(service, state)})


class RefusedCollector(Collector):
    """``vigil_api_records_refused_total{topic,reason}``: records of the status and verdict topics that
    were not used (bad status records are also dead-lettered)."""

    def __init__(self, follower: ViewFollower) -> None:
        self._follower = follower

    def collect(self) -> Iterable[Metric]:
        refused = CounterMetricFamily(
            "vigil_api_records_refused",
            "Records of the status and verdict topics that were refused, by topic and reason.",
            labels=["topic", "reason"],
        )
        for (topic, reason), n in sorted(self._follower.refused.items()):
            refused.add_metric([topic, reason], n)
        yield refused


def add_routes(app: web.Application) -> None:
    app.router.add_get(SERVICES, _services)
    app.router.add_get(SERVICES + "/{service}", _service)
    app.router.add_get(ANOMALIES, _anomalies)
