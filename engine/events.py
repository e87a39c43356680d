"""Verdict events on ``vigil.verdicts``: CloudEvents 1.0, JSON structured mode.

Event ids are derived from what the event is about (series, kind, window start), so a record processed
twice after a restart (delivery is at-least-once) produces the same id and consumers can de-duplicate.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from typing import Any

import orjson

from engine.config import MetricRule
from engine.guard import Transition

SOURCE = "/vigil/guard"
TYPE_PREFIX = "vigil."


def iso(ts_ms: int) -> str:
    """RFC 3339 time of a Unix-ms timestamp.

    >>> iso(0)
    '1970-01-01T00:00:00.000Z'
    """
    return (
        datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def anomaly_event(
    service: str, metric: str, instance: str, rule: MetricRule, t: Transition
) -> dict[str, Any]:
    kind = f"anomaly.{t.kind}"
    ident = hashlib.sha256(
        "\x1f".join((service, metric, instance, kind, str(t.window_start_ms))).encode()
    ).hexdigest()[:32]
    return {
        "specversion": "1.0",
        "id": ident,
        "source": SOURCE,
        "type": TYPE_PREFIX + kind,
        "subject": f"{service}/{metric}/{instance}",
        "time": iso(t.ts_ms),
        "datacontenttype": "application/json",
        "data": {
            "service": service,
            "metric": metric,
            "instance": instance,
            "score": round(t.score, 6),
            "peak_score": round(t.peak_score, 6),
            "value": t.value,
            # null: a detector without a band (hst); a side that is no risk is null within the band
            "expected": None
            if math.isinf(t.expected_low) and math.isinf(t.expected_high)
            else {"low": t.expected_low, "high": t.expected_high},
            "window": {
                "start": iso(t.window_start_ms),
                "end": iso(t.window_end_ms),
                "start_ms": t.window_start_ms,
                "end_ms": t.window_end_ms,
            },
            "rule": {"type": rule.type, "direction": rule.direction, "sensitivity": rule.sensitivity},
        },
    }


def encode(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


SOURCE_ERROR = "source.error"


def source_error_event(
    source: str, watch: str, query: str, kind: str, message: str, at_ms: int
) -> dict[str, Any]:
    """``vigil.source.error``: a query a source refused, so the poller stopped asking it.

    The id depends on what was refused and why, not on when: a poller that restarts and is refused again
    publishes the same id.

    >>> e = source_error_event("main", "checkout", "errors", "rejected", "HTTP 400: bad_data: x", 0)
    >>> e["type"], e["subject"], e["data"]["kind"]
    ('vigil.source.error', 'main/checkout/errors', 'rejected')
    """
    ident = hashlib.sha256("\x1f".join((source, watch, query, kind, message)).encode()).hexdigest()[:32]
    return {
        "specversion": "1.0",
        "id": ident,
        "source": "/vigil/poller",
        "type": TYPE_PREFIX + SOURCE_ERROR,
        "subject": f"{source}/{watch}/{query}",
        "time": iso(at_ms),
        "datacontenttype": "application/json",
        "data": {"source": source, "watch": watch, "query": query, "kind": kind, "message": message},
    }
