"""The API's services view without Kafka: statuses and anomaly events in, documents out; the routes'
answers to good and bad queries."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from connectors.api import health_routes
from connectors.api.views import ServicesView, ViewFollower
from connectors.notify.anomaly import Anomaly, parse
from engine.config import MetricRule, MetricType, load_config
from engine.events import anomaly_event, encode
from engine.guard import SeriesState, Transition, TransitionKind
from engine.status import SeriesStatus

T0 = 1_700_000_000_000
CONFIG = load_config(None)


class Clock:
    def __init__(self) -> None:
        self.t = T0 / 1000

    def __call__(self) -> float:
        return self.t


def status(metric: str, instance: str, state: SeriesState = SeriesState.NORMAL, **kw: Any) -> SeriesStatus:
    base: dict[str, Any] = {
        "service": "checkout",
        "metric": metric,
        "instance": instance,
        "metric_type": MetricType.ERRORS if "error" in metric else MetricType.CUSTOM,
        "state": state,
        "score": 0.3,
        "value": 1.0,
        "expected_low": None,
        "expected_high": 2.0,
        "ts_ms": T0,
        "wall_ms": T0,
    }
    return SeriesStatus(**(base | kw))


def event(kind: TransitionKind, metric: str, instance: str, start: int, at: int) -> Anomaly:
    rule = MetricRule(match=".*", type=MetricType.ERRORS if "error" in metric else MetricType.CUSTOM)
    t = Transition(kind, at, 50.0, 3.0, 4.0, float("-inf"), 2.0, start, at)
    return parse(encode(anomaly_event("checkout", metric, instance, rule, t)), 1 << 16)


OPENED, RESOLVED = TransitionKind.OPENED, TransitionKind.RESOLVED


def fed(records: list[SeriesStatus | Anomaly], clock: Clock | None = None) -> ServicesView:
    view = ServicesView(CONFIG, clock=clock or Clock())
    for r in records:
        if isinstance(r, SeriesStatus):
            view.put_status(r)
        else:
            view.put_event(r)
    return view


PODS = ["p1", "p2", "p3", "p4"]


def test_a_service_with_normal_series_is_healthy_with_its_instances() -> None:
    view = fed([status("http_errors:rate", p) for p in PODS])
    [doc] = view.services()
    assert doc["service"] == "checkout"
    assert doc["health"] == "healthy"
    assert doc["open_anomalies"] == []
    assert [i["instance"] for i in doc["instances"]] == PODS
    assert {i["health"] for i in doc["instances"]} == {"healthy"}


def test_an_incident_opens_resolves_and_the_view_follows() -> None:
    one_pod = event(OPENED, "http_errors:rate", "p1", T0, T0 + 15_000)
    records: list[SeriesStatus | Anomaly] = [status("http_errors:rate", p) for p in PODS]
    view = fed([*records, one_pod])
    [doc] = view.services()
    assert doc["health"] == "observe"  # errors on one pod of four
    assert doc["since"] == "2023-11-14T22:13:35.000Z"
    [open_one] = doc["open_anomalies"]
    assert open_one["instance"] == "p1"
    assert open_one["state"] == "open"
    assert open_one["type"] == "errors"
    assert open_one["expected"] == {"low": None, "high": 2.0}
    assert open_one["value"] == 50.0
    p1 = next(i for i in doc["instances"] if i["instance"] == "p1")
    assert (p1["health"], p1["open_anomalies"]) == ("unhealthy", 1)
    view.put_event(event(OPENED, "http_errors:rate", "p2", T0, T0 + 30_000))
    assert view.services()[0]["health"] == "unhealthy"  # half the pods
    assert view.services()[0]["since"] == "2023-11-14T22:13:50.000Z"
    view.put_event(event(RESOLVED, "http_errors:rate", "p1", T0, T0 + 60_000))
    view.put_event(event(RESOLVED, "http_errors:rate", "p2", T0, T0 + 75_000))
    [after] = view.services()
    assert (after["health"], after["since"]) == ("healthy", "2023-11-14T22:14:35.000Z")
    resolved = view.anomalies("checkout", "resolved")
    assert [a["instance"] for a in resolved] == ["p1", "p2"]
    assert resolved[0]["resolved_at"] == "2023-11-14T22:14:20.000Z"
    assert resolved[0]["opened_at"] == "2023-11-14T22:13:35.000Z"
    assert view.anomalies(None, "open") == []
    # Read again (at-least-once): a repeated opening of a resolved anomaly does not reopen it.
    view.put_event(one_pod)
    view.put_event(event(RESOLVED, "http_errors:rate", "p1", T0, T0 + 60_000))
    assert view.services()[0]["health"] == "healthy"
    assert len(view.anomalies("checkout", "resolved")) == 2


def test_the_service_document_has_each_series_state_and_evidence() -> None:
    view = fed(
        [
            status("http_errors:rate", "p1", SeriesState.ANOMALOUS, score=3.2, value=50.0),
            status("queue", "p1", SeriesState.LEARNING, score=0.0, expected_high=None),
            event(OPENED, "http_errors:rate", "p1", T0, T0 + 15_000),
        ]
    )
    doc = view.service("checkout")
    assert doc is not None
    errors, queue = doc["metrics"]
    assert errors["state"] == "anomalous"
    assert errors["score"] == 3.2
    assert errors["value"] == 50.0
    assert errors["expected"] == {"low": None, "high": 2.0}
    assert errors["window"]["start_ms"] == T0
    assert errors["anomaly"] == doc["open_anomalies"][0]["id"]
    assert queue["state"] == "learning"
    assert queue["expected"] is None
    assert queue["window"] is None
    assert doc["health"] == "unhealthy"  # one instance: the anomaly is service-wide
    assert view.service("nope") is None


def test_only_learning_series_is_learning_and_idle_series_leave_with_their_anomalies() -> None:
    clock = Clock()
    view = fed([status("m", "p1", SeriesState.LEARNING)], clock)
    assert view.services()[0]["health"] == "learning"
    view.put_status(status("http_errors:rate", "p2", wall_ms=T0))
    view.put_event(event(OPENED, "http_errors:rate", "p2", T0, T0 + 15_000))
    assert view.services()[0]["health"] == "unhealthy"
    clock.t += 899
    view.put_status(status("m", "p1", wall_ms=int(clock.t * 1000)))
    clock.t += 2  # p2's series is idle for 901 s of wall clock: it leaves, its anomaly no longer counts
    [doc] = view.services()
    assert (doc["health"], doc["open_anomalies"]) == ("healthy", [])
    assert [i["instance"] for i in doc["instances"]] == ["p1"]
    clock.t += 900
    assert view.services() == []


def test_a_learning_service_and_instance_say_since_their_earliest_learning_series() -> None:
    view = fed(
        [
            status("m", "p1", SeriesState.LEARNING, since_ms=T0 - 60_000),
            status("n", "p1", SeriesState.LEARNING, since_ms=T0 - 30_000),
            status("m", "p2", SeriesState.LEARNING, since_ms=T0 - 15_000),
        ]
    )
    [doc] = view.services()
    assert (doc["health"], doc["since"]) == ("learning", "2023-11-14T22:12:20.000Z")  # T0 - 60 s
    assert [(i["instance"], i["health"], i["since"]) for i in doc["instances"]] == [
        ("p1", "learning", "2023-11-14T22:12:20.000Z"),
        ("p2", "learning", "2023-11-14T22:13:05.000Z"),  # T0 - 15 s
    ]
    detail = view.service("checkout")
    assert detail is not None
    assert (detail["since"], detail["instances"]) == (doc["since"], doc["instances"])
    # a series past learning makes the service (and its instance) healthy: since its latest resolution
    view.put_status(status("m", "p2", SeriesState.NORMAL, since_ms=T0))
    [doc] = view.services()
    assert (doc["health"], doc["since"]) == ("healthy", None)
    assert [(i["health"], i["since"]) for i in doc["instances"]] == [
        ("learning", "2023-11-14T22:12:20.000Z"),
        ("healthy", None),
    ]


def test_a_learning_series_whose_status_does_not_say_since_when_leaves_since_unknown() -> None:
    # a status from a worker before the field, or of a model restored from an older checkpoint
    view = fed(
        [
            status("m", "p1", SeriesState.LEARNING, since_ms=T0 - 60_000),
            status("n", "p2", SeriesState.LEARNING),
        ]
    )
    [doc] = view.services()
    assert (doc["health"], doc["since"]) == ("learning", None)
    assert [i["since"] for i in doc["instances"]] == ["2023-11-14T22:12:20.000Z", None]


def test_the_view_is_the_same_whatever_order_the_two_topics_are_read_in() -> None:
    statuses = [status("http_errors:rate", p) for p in PODS] + [status("queue", "")]
    events = [
        event(OPENED, "http_errors:rate", "p1", T0, T0 + 15_000),
        event(OPENED, "queue", "", T0 + 15_000, T0 + 30_000),
        event(RESOLVED, "queue", "", T0 + 15_000, T0 + 60_000),
        event(OPENED, "http_errors:rate", "p3", T0, T0 + 45_000),
    ]
    reference = fed([*statuses, *events])
    want = (reference.services(), reference.service("checkout"), reference.anomalies(None, None))
    for cut in itertools.combinations(range(len(statuses) + len(events)), len(events)):
        s, e = iter(statuses), iter(events)
        merged = [next(e) if i in cut else next(s) for i in range(len(statuses) + len(events))]
        view = fed(merged)
        assert (view.services(), view.service("checkout"), view.anomalies(None, None)) == want


def test_resolved_anomalies_kept_per_service_are_bounded() -> None:
    config = CONFIG.model_copy(update={"status": CONFIG.status.model_copy(update={"resolved_kept": 3})})
    view = ServicesView(config, clock=Clock())
    view.put_status(status("m", "p1"))
    for i in range(10):
        view.put_event(event(OPENED, "m", "p1", T0 + i * 1000, T0 + i * 1000))
        view.put_event(event(RESOLVED, "m", "p1", T0 + i * 1000, T0 + i * 1000 + 500))
    kept = view.anomalies("checkout", "resolved")
    assert [a["window"]["start_ms"] for a in kept] == [T0 + 7000, T0 + 8000, T0 + 9000]


async def _answers(ready: bool) -> list[tuple[int, Any]]:
    follower = ViewFollower(CONFIG, fed([status("http_errors:rate", "p1")]))
    if ready:
        follower.ready.set()
    app = web.Application()
    app[health_routes.VIEWS] = follower
    health_routes.add_routes(app)
    out = []
    async with TestClient(TestServer(app)) as client:
        for path in (
            "/api/v1/services",
            "/api/v1/services/checkout",
            "/api/v1/services/nope",
            "/api/v1/anomalies?service=checkout&state=open",
            "/api/v1/anomalies?state=closed",
            "/api/v1/anomalies?service=",
            "/api/v1/anomalies?bogus=1",
            "/api/v1/anomalies?state=open&state=resolved",
            "/api/v1/services?x=" + "y" * 5000,
        ):
            response = await client.get(path)
            out.append((response.status, orjson.loads(await response.read())))
    return out


def test_the_routes_answer_json_and_bad_queries_are_400_with_a_reason() -> None:
    answers = asyncio.run(_answers(ready=True))
    codes = [code for code, _ in answers]
    assert codes == [200, 200, 404, 200, 400, 400, 400, 400, 400]
    assert answers[0][1][0]["service"] == "checkout"
    assert answers[1][1]["metrics"][0]["metric"] == "http_errors:rate"
    assert answers[3][1] == {"anomalies": []}
    for code, body in answers:
        if code >= 400:
            assert set(body) == {"error", "reason"}
            assert body["reason"]
    assert "open or resolved" in answers[4][1]["reason"]
    assert "bogus" in answers[6][1]["reason"]


def test_the_routes_answer_503_until_the_topics_are_read() -> None:
    answers = asyncio.run(_answers(ready=False))
    assert [code for code, _ in answers][:2] == [503, 503]
    assert answers[0][1]["error"] == "not_ready"
