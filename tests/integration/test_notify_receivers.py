"""Notifiers against local fakes of Slack, PagerDuty and a webhook receiver, on the embedded broker."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import pytest_asyncio

from connectors.broker import EmbeddedBroker
from connectors.kafka import start_producer
from connectors.notify.anomaly import parse
from connectors.notify.senders import SIGNATURE_HEADER, verify_signature
from connectors.notify.service import serve
from connectors.notify.stats import NotifyStats
from engine.config import MetricType, VigilConfig
from engine.guard import SeriesState, TransitionKind
from engine.status import SeriesStatus, encode_status, status_key
from tests.conftest import isolated_config
from tests.fixtures.receivers import FakeReceiver
from tests.integration.notify_helpers import (
    T0,
    anomaly,
    count,
    joined,
    produce,
    running,
    until,
    with_notifiers,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(240)]


@pytest.fixture
def config(broker: EmbeddedBroker) -> VigilConfig:
    return isolated_config(broker)


@pytest_asyncio.fixture
async def slack() -> AsyncIterator[FakeReceiver]:
    r = await FakeReceiver("slack").start()
    yield r
    await r.stop()


@pytest_asyncio.fixture
async def pagerduty() -> AsyncIterator[FakeReceiver]:
    r = await FakeReceiver("pagerduty").start()
    yield r
    await r.stop()


@pytest_asyncio.fixture
async def hook() -> AsyncIterator[FakeReceiver]:
    r = await FakeReceiver("webhook").start()
    yield r
    await r.stop()


def secret(tmp_path: Path, name: str, value: str) -> str:
    path = tmp_path / name
    path.write_text(value + "\n")
    return str(path)


async def test_webhook_gets_every_event_signed_and_bad_records_are_skipped_and_counted(
    config: VigilConfig, hook: FakeReceiver, tmp_path: Path
) -> None:
    key = "s3cret-key"
    cfg = with_notifiers(
        config,
        {"name": "hook", "type": "webhook", "url": hook.url, "secret_file": secret(tmp_path, "k", key)},
    )
    stats = NotifyStats()
    good = [anomaly(config, "checkout", f"latency_seconds:p99_{i}") for i in range(3)]
    hostile: list[bytes | dict[str, object]] = [
        b"\x00\xff garbage",
        b'{"type": "vigil.anomaly.opened", "data": {"service": 7}}',
        b"[1, 2, 3]",
        orjson.dumps({**good[0], "data": {**good[0]["data"], "score": "NaN"}}),
        b'{"type":"vigil.anomaly.opened","pad":"' + b"x" * 70_000 + b'"}',
        orjson.dumps({"type": "vigil.source.error", "id": "e", "data": {}}),
    ]
    async with running(cfg, stats) as (notifier,):
        await joined(notifier)
        await produce(cfg, [good[0], *hostile, good[1], good[2]])
        await until(lambda: len(hook.delivered) == 3, 60)
    bodies = [r.body for r in hook.delivered]
    assert sorted(orjson.loads(b)["id"] for b in bodies) == sorted(g["id"] for g in good)
    for r in hook.delivered:
        assert r.headers["Content-Type"].startswith("application/cloudevents+json")
        assert verify_signature(r.body, r.headers[SIGNATURE_HEADER], key)
        assert not verify_signature(r.body, r.headers[SIGNATURE_HEADER], "another-key")
    skipped = {
        reason: count(stats, "vigil_notify_records_skipped_total", notifier="hook", reason=reason)
        for reason in ("not_json", "wrong_shape", "oversized", "other_type")
    }
    assert skipped == {"not_json": 1, "wrong_shape": 3, "oversized": 1, "other_type": 1}


async def test_a_storm_is_one_slack_message_per_service_and_429_retry_after_is_honoured(
    config: VigilConfig, slack: FakeReceiver, tmp_path: Path
) -> None:
    url_file = secret(tmp_path, "slack-url", slack.url)
    cfg = with_notifiers(
        config, {"name": "chat", "type": "slack", "webhook_url_file": url_file, "group_interval_s": 2}
    )
    slack.script = [(429, {"Retry-After": "2"})]
    storm = [anomaly(config, "checkout", "http_errors_total:rate", f"pod-{i}") for i in range(30)]
    other = [anomaly(config, "search", "latency_seconds:p99", "pod-x")]
    async with running(cfg) as (notifier,):
        await joined(notifier)
        await produce(cfg, storm + other)
        await until(lambda: len(slack.delivered) == 2, 60)
    first, *_ = slack.requests
    retried = next(r for r in slack.requests[1:] if r.body == first.body)
    assert retried.at - first.at >= 2.0, "Retry-After not honoured"
    texts = sorted(r.json()["text"] for r in slack.delivered)
    assert texts[0].startswith("Vigil: checkout: 30 anomalies opened")
    line = r"\n🔴 checkout/http_errors_total:rate \[pod-\d+\] = 900, expected \[200, 300\]"
    assert re.search(line, texts[0])
    assert texts[0].count("\n🔴 ") == 20
    assert "and 10 more" in texts[0]
    assert texts[1].startswith("Vigil: search: 1 anomaly opened")
    assert "2.50x the alerting threshold" in texts[1]
    assert len(slack.requests) == 3  # the 429, its resend, the other service


async def test_pagerduty_triggers_once_per_service_storm_resolves_and_never_retries_400(
    config: VigilConfig, pagerduty: FakeReceiver, tmp_path: Path
) -> None:
    key_file = secret(tmp_path, "pd-key", "R0UT1NGKEY")
    cfg = with_notifiers(
        config,
        {
            "name": "pager",
            "type": "pagerduty",
            "url": pagerduty.url,
            "routing_key_file": key_file,
            "group_interval_s": 1,
            "backoff_s": 0.2,
        },
    )
    stats = NotifyStats()
    pagerduty.script = [(500, {}), (429, {}), (202, {})]  # the first trigger gets through on the third try
    opens = [anomaly(config, "checkout", "http_errors_total:rate", f"pod-{i}") for i in range(5)]
    resolves = [
        anomaly(config, "checkout", "http_errors_total:rate", f"pod-{i}", kind=TransitionKind.RESOLVED)
        for i in range(5)
    ]
    async with running(cfg, stats) as (notifier,):
        await joined(notifier)
        await produce(cfg, opens)
        await until(lambda: len(pagerduty.requests) == 3, 60)
        await produce(cfg, resolves)
        await until(lambda: len(pagerduty.delivered) == 1, 60)
        # then a 400: never retried, counted as refused
        pagerduty.script = [(400, {})]
        await produce(cfg, [anomaly(config, "billing", "http_errors_total:rate")])
        refused = {"notifier": "pager", "outcome": "refused"}
        await until(lambda: count(stats, "vigil_notify_events_total", **refused), 30)
        await asyncio.sleep(0)  # nothing else is pending: the 400 is not sent again
    bodies = [r.json() for r in pagerduty.requests]
    trigger, resolve = bodies[2], bodies[3]
    ids = {parse(orjson.dumps(o), 1 << 20).anomaly_id for o in opens}
    assert bodies[0] == bodies[1] == trigger  # the same event resent after 500 and 429
    assert trigger["event_action"] == "trigger"
    assert trigger["routing_key"] == "R0UT1NGKEY"
    assert trigger["dedup_key"] in ids
    first_id = trigger["dedup_key"]
    assert trigger["payload"]["severity"] == "critical"
    assert trigger["payload"]["custom_details"]["count"] == 5
    assert trigger["payload"]["summary"].startswith("Vigil: checkout: 5 anomalies opened")
    assert resolve == {"routing_key": "R0UT1NGKEY", "event_action": "resolve", "dedup_key": first_id}
    assert len(bodies) == 5  # trigger x3, one resolve for the whole group, the refused billing trigger
    assert bodies[4]["payload"]["component"] == "billing"
    assert count(stats, "vigil_notify_retries_total", notifier="pager") == 2


async def test_a_notifier_that_is_down_holds_up_no_other_and_delivers_after_a_restart(
    config: VigilConfig, hook: FakeReceiver, slack: FakeReceiver, tmp_path: Path
) -> None:
    cfg = with_notifiers(
        config,
        {"name": "down", "type": "webhook", "url": "http://127.0.0.1:9/nothing", "backoff_s": 0.1},
        {"name": "up", "type": "webhook", "url": hook.url},
    )
    events = [anomaly(config, "checkout", f"latency_seconds:p{i}") for i in range(4)]
    stats = NotifyStats()
    async with running(cfg, stats) as notifiers:
        for n in notifiers:
            await joined(n)
        await produce(cfg, events)
        await until(lambda: len(hook.delivered) == 4, 60)
        await until(lambda: count(stats, "vigil_notify_retries_total", notifier="down") >= 3, 30)
    assert count(stats, "vigil_notify_events_total", notifier="down", outcome="delivered") == 0
    # The same notifier, now pointed at a receiver that answers: what it never delivered comes now.
    fixed = with_notifiers(config, {"name": "down", "type": "webhook", "url": slack.url})
    async with running(fixed):
        await until(lambda: len(slack.delivered) == 4, 90)
    assert sorted(orjson.loads(r.body)["id"] for r in slack.delivered) == sorted(e["id"] for e in events)


async def test_a_new_notifier_skips_older_events_and_misses_none_produced_while_it_joins(
    config: VigilConfig, hook: FakeReceiver
) -> None:
    old = anomaly(config, "checkout", "latency_seconds:p99", "old")
    await produce(config, [old])
    cfg = with_notifiers(config, {"name": "late", "type": "webhook", "url": hook.url})
    during = [anomaly(config, "checkout", "latency_seconds:p99", f"during-{i}") for i in range(3)]
    async with running(cfg) as (notifier,):
        await produce(cfg, during)  # while its group is still forming (that takes seconds)
        assert not notifier._consumer or not notifier._consumer.assignment(), "joined before the events"
        await until(lambda: len(hook.delivered) == 3, 60)
        # every record read (the old one included) and committed: nothing else is coming
        offsets = notifier._offsets
        await until(lambda: sum(offsets.committable(tp) or 0 for tp in offsets.partitions()) == 4, 30)
    assert sorted(orjson.loads(r.body)["data"]["instance"] for r in hook.delivered) == [
        "during-0",
        "during-1",
        "during-2",
    ]


async def test_filters_by_service_metric_type_and_event(config: VigilConfig, hook: FakeReceiver) -> None:
    cfg = with_notifiers(
        config,
        {
            "name": "f",
            "type": "webhook",
            "url": hook.url,
            "services": ["checkout"],
            "metric_types": ["errors"],
            "events": ["opened"],
        },
    )
    stats = NotifyStats()
    wanted = anomaly(config, "checkout", "http_errors_total:rate")
    others = [
        anomaly(config, "search", "http_errors_total:rate"),
        anomaly(config, "checkout", "latency_seconds:p99"),
        anomaly(config, "checkout", "http_errors_total:rate", kind=TransitionKind.RESOLVED),
    ]
    async with running(cfg, stats) as (notifier,):
        await joined(notifier)
        await produce(cfg, [*others, wanted])
        await until(lambda: hook.delivered, 60)
        filtered = {"notifier": "f", "outcome": "filtered"}
        await until(lambda: count(stats, "vigil_notify_events_total", **filtered) == 3, 10)
    assert [orjson.loads(r.body)["id"] for r in hook.delivered] == [wanted["id"]]


async def test_the_slack_url_and_the_routing_key_never_reach_the_logs(
    config: VigilConfig, pagerduty: FakeReceiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = with_notifiers(
        config,
        {
            "name": "chat",
            "type": "slack",
            "webhook_url_file": secret(tmp_path, "u", "http://127.0.0.1:9/services/T0/B0/SLACKTOKEN"),
            "group_interval_s": 0.1,
            "backoff_s": 0.1,
        },
        {
            "name": "pager",
            "type": "pagerduty",
            "url": pagerduty.url,
            "routing_key_file": secret(tmp_path, "k", "PDROUTINGKEY"),
            "group_interval_s": 0.1,
        },
    )
    pagerduty.script = [(400, {}), (500, {})]
    stats = NotifyStats()
    caplog.set_level("DEBUG")
    async with running(cfg, stats) as notifiers:
        for n in notifiers:
            await joined(n)
        await produce(cfg, [anomaly(config, "checkout", "q"), anomaly(config, "search", "q")])
        await until(lambda: count(stats, "vigil_notify_retries_total", notifier="chat") >= 2, 30)
        await until(lambda: len(pagerduty.requests) >= 3, 30)
    assert "cannot reach its URL: ClientConnectorError" in caplog.text
    assert "SLACKTOKEN" not in caplog.text
    assert "PDROUTINGKEY" not in caplog.text
    assert "answered HTTP 400" in caplog.text


def live(service: str, metric: str, instance: str, metric_type: MetricType) -> SeriesStatus:
    return SeriesStatus(
        service, metric, instance, metric_type, SeriesState.NORMAL, 0.1, 1.0, None, None, T0,
        int(time.time() * 1000),
    )  # fmt: skip


async def test_min_health_holds_openings_until_the_service_gets_there(
    config: VigilConfig, hook: FakeReceiver
) -> None:
    """Through ``serve`` (the notify process), with the health view it follows: a custom metric's anomaly
    makes checkout ``observe`` — the plain notifier sends it, the one with min_health: unhealthy holds it;
    errors on every pod make checkout ``unhealthy`` — both openings go out. An anomaly of another service
    that resolves while it stays ``observe`` is never sent; checkout's resolution is."""
    paged = await FakeReceiver("webhook").start()
    cfg = with_notifiers(
        config,
        {"name": "all", "type": "webhook", "url": hook.url},
        {"name": "pager", "type": "webhook", "url": paged.url, "min_health": "unhealthy"},
    )
    errors, custom = "http_errors_total:rate", "queue_depth"
    statuses = [live("checkout", errors, f"p{i}", MetricType.ERRORS) for i in range(4)]
    statuses += [
        live("checkout", custom, "p0", MetricType.CUSTOM),
        live("search", custom, "s0", MetricType.CUSTOM),
    ]
    producer = await start_producer(cfg.kafka)
    try:
        for s in statuses:
            await producer.send_and_wait(cfg.kafka.topics.status, encode_status(s), key=status_key(*s.series))
    finally:
        await producer.stop()
    stats = NotifyStats()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(cfg, stop, stats))

    def ids(receiver: FakeReceiver) -> list[str]:
        return [r.json()["id"] for r in receiver.delivered]

    try:
        # the notifiers exist (events produced before they started would be skipped as old)
        await until(lambda: stats.registry.get_sample_value("vigil_notify_held_events", {"notifier": "pager"})
                    is not None, 60)  # fmt: skip
        queue = anomaly(cfg, "checkout", custom, "p0")
        search = anomaly(cfg, "search", custom, "s0")
        search_resolved = anomaly(cfg, "search", custom, "s0", kind=TransitionKind.RESOLVED)
        await produce(cfg, [queue, search, search_resolved])
        below = {"notifier": "pager", "outcome": "below_min_health"}
        await until(lambda: count(stats, "vigil_notify_events_total", **below) == 2, 90)
        await until(lambda: len(hook.delivered) == 3, 30)
        await until(lambda: count(stats, "vigil_notify_held_events", notifier="pager") == 1, 30)
        assert paged.delivered == []

        storm = [anomaly(cfg, "checkout", errors, f"p{i}") for i in range(4)]
        await produce(cfg, storm)
        await until(lambda: len(paged.delivered) == 5, 60)
        assert sorted(ids(paged)) == sorted(a["id"] for a in [queue, *storm])
        assert count(stats, "vigil_notify_held_events", notifier="pager") == 0

        queue_resolved = anomaly(cfg, "checkout", custom, "p0", kind=TransitionKind.RESOLVED)
        await produce(cfg, [queue_resolved])
        await until(lambda: len(paged.delivered) == 6, 60)
        assert ids(paged)[-1] == queue_resolved["id"]
        assert search["id"] not in ids(paged)
        assert search["id"] in ids(hook)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await paged.stop()
