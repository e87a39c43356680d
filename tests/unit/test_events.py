from __future__ import annotations

from engine.config import load_config
from engine.events import anomaly_event, iso
from engine.guard import Transition, TransitionKind
from vigil.tail import describe


def transition(kind: TransitionKind = TransitionKind.OPENED) -> Transition:
    return Transition(
        kind=kind,
        ts_ms=1_700_000_060_000,
        value=12.5,
        score=0.9995,
        peak_score=0.9999,
        expected_low=float("-inf"),
        expected_high=3.2,
        window_start_ms=1_700_000_030_000,
        window_end_ms=1_700_000_060_000,
    )


def test_anomaly_event_is_a_cloudevent_with_evidence() -> None:
    rule = load_config(None).rule_for("http_errors_total:rate")
    event = anomaly_event("checkout", "http_errors_total:rate", "pod-a", rule, transition())
    assert {
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "subject",
        "datacontenttype",
        "data",
    } <= event.keys()
    assert event["type"] == "vigil.anomaly.opened"
    assert event["time"] == iso(1_700_000_060_000)
    data = event["data"]
    assert data["window"]["start"] == "2023-11-14T22:13:50.000Z"
    assert data["rule"] == {"type": "errors", "direction": "higher", "sensitivity": "medium"}
    line = describe(event)
    assert "anomaly.opened" in line
    assert "checkout/http_errors_total:rate [pod-a]" in line


def test_describe_survives_odd_events() -> None:
    assert "?" in describe({})
    assert "None" in describe({"type": "vigil.x", "data": {"service": None}})


def test_a_source_error_event_reads_well() -> None:
    from engine.events import source_error_event

    event = source_error_event(
        "main", "checkout", "errors", "rejected", "HTTP 400: bad_data: parse error", 60_000
    )
    again = source_error_event(
        "main", "checkout", "errors", "rejected", "HTTP 400: bad_data: parse error", 99
    )
    assert event["id"] == again["id"]  # the same refusal after a restart is the same event
    assert describe(event) == (
        "1970-01-01T00:01:00.000Z  source.error      main: watch checkout query errors disabled (rejected): "
        "HTTP 400: bad_data: parse error"
    )


def test_describe_a_verification_event() -> None:
    event = {
        "type": "vigil.verification.failed",
        "time": "2026-12-02T10:03:00Z",
        "data": {
            "id": "abc",
            "service": "checkout",
            "status": "done",
            "verdict": "fail",
            "reason": "canary regressed: http_error_ratio high",
            "progress": {"steps": 5, "total": 121},
        },
    }
    line = describe(event)
    assert "verification.failed" in line
    assert "checkout abc: fail (step 5/121): canary regressed: http_error_ratio high" in line
    assert describe({"type": "vigil.verification.progress", "data": {}})
