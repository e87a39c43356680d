"""Anomaly events read back from the verdicts topic: shapes, hostile input, words for people."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.notify.anomaly import BadEvent, Severity, Skip, parse
from connectors.notify.senders import (
    AlertmanagerSender,
    Outcome,
    group_text,
    outcome,
    retry_after,
    signature,
    verify_signature,
)
from engine.config import NotifierConfig, NotifyEvent, load_config
from engine.guard import TransitionKind
from tests.integration.notify_helpers import anomaly

CONFIG = load_config(None)


def raw(event: dict[str, object]) -> bytes:
    return orjson.dumps(event)


def test_an_opening_and_its_resolution_share_the_anomaly_id_and_the_severity() -> None:
    opened = parse(raw(anomaly(CONFIG, "checkout", "http_errors_total:rate")), 1 << 16)
    resolved = parse(
        raw(anomaly(CONFIG, "checkout", "http_errors_total:rate", kind=TransitionKind.RESOLVED, score=0.1)),
        1 << 16,
    )
    assert opened.event_id != resolved.event_id
    assert opened.anomaly_id == resolved.anomaly_id
    assert opened.severity is resolved.severity is Severity.CRITICAL
    assert (opened.kind, resolved.kind) == (NotifyEvent.OPENED, NotifyEvent.RESOLVED)
    later = parse(raw(anomaly(CONFIG, "checkout", "http_errors_total:rate", start_ms=2)), 1 << 16)
    assert later.anomaly_id != opened.anomaly_id  # another episode


@pytest.mark.parametrize(
    ("metric", "severity"),
    [
        ("http_errors_total:rate", Severity.CRITICAL),
        ("http_request_duration_seconds:p99", Severity.CRITICAL),
        ("http_requests_total:rate", Severity.WARNING),
        ("queue_depth", Severity.WARNING),
    ],
)
def test_severity_comes_from_the_rule_type(metric: str, severity: Severity) -> None:
    assert parse(raw(anomaly(CONFIG, "s", metric)), 1 << 16).severity is severity


def test_the_summary_says_what_how_far_and_since_when() -> None:
    a = parse(raw(anomaly(CONFIG, "checkout", "latency_seconds:p99", "pod-7", score=3.25)), 1 << 16)
    assert a.summary() == (
        "checkout/latency_seconds:p99 [pod-7] = 900, expected [200, 300], 3.25x the alerting threshold, "
        "since 2023-11-14T22:13:20.000Z"
    )
    gone = parse(raw(anomaly(CONFIG, "checkout", "q", kind=TransitionKind.RESOLVED, value=None)), 1 << 16)
    assert gone.summary().startswith(
        "checkout/q [pod-a] is back to normal (anomaly since 2023-11-14T22:13:20"
    )


@pytest.mark.parametrize(("after_s", "words"), [(42, "42 s"), (185, "3 min"), (9000, "2 h")])
def test_an_anomaly_after_a_deployment_says_so_in_the_summary_and_the_annotations(
    after_s: float, words: str
) -> None:
    event = anomaly(CONFIG, "checkout", "latency_seconds:p99", "pod-7")
    event["data"]["deployment"] = {"version": "v42", "after_s": after_s, "service": "checkout"}
    a = parse(raw(event), 1 << 16)
    assert a.summary().endswith(f", started {words} after checkout v42 was deployed")
    sender = AlertmanagerSender(NotifierConfig(name="am", type="alertmanager", url="http://am:9093"), None)
    assert sender.alert(a, 0.0)["annotations"]["deployment"] == "v42"


@pytest.mark.parametrize("deployment", [{"version": 42, "after_s": 1}, {"version": "v1"}, {"after_s": 1}])
def test_a_malformed_deployment_makes_the_event_wrong_shaped(deployment: object) -> None:
    event = anomaly(CONFIG, "checkout", "latency_seconds:p99")
    event["data"]["deployment"] = deployment
    with pytest.raises(BadEvent) as caught:
        parse(raw(event), 1 << 16)
    assert caught.value.reason is Skip.WRONG_SHAPE


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", Skip.NOT_JSON),
        (b"\xff\xfe", Skip.NOT_JSON),
        (b"null", Skip.WRONG_SHAPE),
        (b'"vigil.anomaly.opened"', Skip.WRONG_SHAPE),
        (b'{"type": "something.else"}', Skip.WRONG_SHAPE),
        (b'{"type": "vigil.anomaly.opened"}', Skip.WRONG_SHAPE),
        (b'{"type": "vigil.source.error", "data": {}}', Skip.OTHER_TYPE),
        (b"[" * 100_000, Skip.OVERSIZED),
    ],
)
def test_bad_records_are_named(body: bytes, reason: Skip) -> None:
    with pytest.raises(BadEvent) as info:
        parse(body, 65536)
    assert info.value.reason is reason


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("score", "2"),
        ("score", True),
        ("value", "high"),
        ("service", None),
        ("service", "x" * 5000),
        ("metric", 1),
        ("window", {"start": "a"}),
        ("rule", {"type": "bogus"}),
    ],
)
def test_wrong_fields_are_a_wrong_shape(field: str, value: object) -> None:
    event = anomaly(CONFIG, "checkout", "latency_seconds:p99")
    event["data"] = {**event["data"], field: value}
    with pytest.raises(BadEvent) as info:
        parse(raw(event), 65536)
    assert info.value.reason is Skip.WRONG_SHAPE


def reason_of(body: bytes, max_bytes: int) -> Skip | None:
    try:
        parse(body, max_bytes)
    except BadEvent as exc:
        return exc.reason
    return None


@given(st.binary(max_size=2000))
def test_any_bytes_are_an_anomaly_or_a_named_skip(body: bytes) -> None:
    assert reason_of(body, 1000) in (None, *Skip)


JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda c: st.lists(c) | st.dictionaries(st.text(max_size=10), c),
    max_leaves=30,
)


@given(JSON)
def test_any_json_inside_an_anomaly_event_is_an_anomaly_or_a_named_skip(data: object) -> None:
    body = orjson.dumps({"type": "vigil.anomaly.opened", "id": "x", "time": "t", "data": data})
    assert reason_of(body, 1 << 16) in (None, Skip.WRONG_SHAPE)


def test_status_codes_map_to_one_outcome_each() -> None:
    assert {s: outcome(s) for s in (200, 202, 204)} == dict.fromkeys((200, 202, 204), Outcome.DELIVERED)
    assert {s: outcome(s) for s in (400, 401, 403, 404, 410, 413)} == dict.fromkeys(
        (400, 401, 403, 404, 410, 413), Outcome.REFUSED
    )
    assert {s: outcome(s) for s in (408, 429, 500, 502, 503)} == dict.fromkeys(
        (408, 429, 500, 502, 503), Outcome.RETRY
    )
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now
    assert retry_after("-5") == 0.0


def test_signatures_are_hmac_sha256_and_verified_in_constant_time() -> None:
    body = b'{"id":"1"}'
    assert verify_signature(body, signature(body, "k"), "k")
    assert not verify_signature(body + b" ", signature(body, "k"), "k")
    assert not verify_signature(body, None, "k")
    assert not verify_signature(body, "sha256=" + "0" * 64, "k")


def test_an_alert_keeps_its_labels_from_opening_to_resolution_and_its_expiry_is_wall_clock() -> None:
    am = NotifierConfig(name="am", type="alertmanager", url="http://127.0.0.1:9093")
    sender = AlertmanagerSender(am, "https://vigil.example.com/")
    now = 1_800_000_000.0
    opened = sender.alert(parse(raw(anomaly(CONFIG, "checkout", "http_errors_total:rate")), 1 << 16), now)
    resolved = sender.alert(
        parse(
            raw(anomaly(CONFIG, "checkout", "http_errors_total:rate", kind=TransitionKind.RESOLVED)), 1 << 16
        ),
        now,
    )
    assert (
        opened["labels"]
        == resolved["labels"]
        == {
            "alertname": "VigilAnomaly",
            "service": "checkout",
            "metric": "http_errors_total:rate",
            "instance": "pod-a",
            "severity": "critical",
        }
    )
    assert opened["startsAt"] == "2023-11-14T22:13:20.000Z"  # metric time
    assert opened["endsAt"] == "2027-01-15T08:05:00.000Z"  # now + 300 s
    assert resolved["endsAt"] == "2027-01-15T08:00:00.000Z"  # now
    assert opened["annotations"]["expected_band"] == "[200, 300]"
    assert opened["annotations"]["started_at"] == "2023-11-14T22:13:20.000Z"
    assert opened["generatorURL"] == "https://vigil.example.com/api/v1/services/checkout"
    future = sender.alert(
        parse(raw(anomaly(CONFIG, "checkout", "q", start_ms=int(now * 1000) + 60_000)), 1 << 16), now
    )
    assert future["startsAt"] == "2027-01-15T08:00:00.000Z"  # never after the wall clock


def test_a_grouped_message_counts_and_cuts() -> None:
    events = [parse(raw(anomaly(CONFIG, "checkout", "q", f"p{i}")), 1 << 16) for i in range(25)]
    events.append(parse(raw(anomaly(CONFIG, "checkout", "q", "p0", kind=TransitionKind.RESOLVED)), 1 << 16))
    text = group_text("checkout", events, "https://v/x")
    lines = text.split("\n")
    assert lines[0] == "Vigil: checkout: 25 anomalies opened, 1 resolved"
    assert len(lines) == 1 + 20 + 1 + 1
    assert lines[-2] == "… and 6 more"
    assert lines[-1] == "https://v/x"
