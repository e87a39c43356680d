"""Anomaly events read back from ``vigil.verdicts``, checked, and put in words for people.

Everything on the topic is untrusted: a record that is not an anomaly CloudEvent of the expected shape, or
larger than ``notifier.max_event_bytes``, is skipped with a :class:`Skip` reason (counted, never fatal).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from engine.config import MetricType, NotifyEvent

#: longest service, metric or instance accepted (the receiver refuses longer label values already)
MAX_NAME = 4096


class Skip(StrEnum):
    """Why a record was not notified: the closed set of ``reason`` label values."""

    OVERSIZED = "oversized"
    NOT_JSON = "not_json"
    WRONG_SHAPE = "wrong_shape"
    OTHER_TYPE = "other_type"  # a valid event that is not about an anomaly (vigil.source.error)


class BadEvent(Exception):
    def __init__(self, reason: Skip, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason


class Severity(StrEnum):
    WARNING = "warning"
    CRITICAL = "critical"


#: Errors and latency are what users feel: critical. The rest (throughput, saturation, custom) warn.
#: Severity is a label, and labels are an alert's identity in Alertmanager: it must not change between the
#: opening and the resolution of one anomaly, so it comes from the rule's type, not from a score that moves.
CRITICAL_TYPES = frozenset({MetricType.ERRORS, MetricType.LATENCY})


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One ``vigil.anomaly.opened`` / ``vigil.anomaly.resolved`` event, checked."""

    event_id: str
    kind: NotifyEvent
    service: str
    metric: str
    instance: str
    metric_type: MetricType
    score: float
    peak_score: float
    value: float | None
    expected_low: float | None
    expected_high: float | None
    start_ms: int
    end_ms: int
    start: str
    end: str
    time: str
    raw: bytes  # the CloudEvent as it was on the topic (the webhook's body)
    #: ``data.deployment``: the deployment of the service shortly before the anomaly started, if any
    deployed_version: str | None = None
    deployed_after_s: float | None = None

    @property
    def anomaly_id(self) -> str:
        """Shared by the opening and the resolution of one episode (same series, same first sample): the
        PagerDuty ``dedup_key``, and the key of an open alert."""
        key = "\x1f".join((self.service, self.metric, self.instance, str(self.start_ms)))
        return hashlib.sha256(key.encode()).hexdigest()[:32]

    @property
    def severity(self) -> Severity:
        return Severity.CRITICAL if self.metric_type in CRITICAL_TYPES else Severity.WARNING

    @property
    def series(self) -> str:
        return f"{self.service}/{self.metric}" + (f" [{self.instance}]" if self.instance else "")

    def band(self) -> str:
        """``[low, high]`` with ``-∞``/``∞`` for a side that is not a risk.

        >>> a = parse(b'{"type":"vigil.anomaly.opened","id":"x","time":"t","data":{"service":"s",'
        ...   b'"metric":"m","instance":"","score":2,"peak_score":2,"value":9,'
        ...   b'"expected":{"low":1,"high":null},'
        ...   b'"window":{"start":"a","end":"b","start_ms":1,"end_ms":2},"rule":{"type":"errors"}}}', 1 << 16)
        >>> a.band(), a.severity.value
        ('[1, ∞]', 'critical')
        """
        return f"[{_num(self.expected_low, '-∞')}, {_num(self.expected_high, '∞')}]"

    def summary(self) -> str:
        """One line: what, how far from the expected, how unusual (and after which deployment)."""
        if self.kind is NotifyEvent.RESOLVED:
            return f"{self.series} is back to normal (anomaly since {self.start}, last unusual {self.end})"
        return (
            f"{self.series} = {_num(self.value, 'no value')}, expected {self.band()}, "
            f"{self.score:.2f}x the alerting threshold, since {self.start}{self.after_deployment()}"
        )

    def after_deployment(self) -> str:
        """``", started 3 min after checkout v42 was deployed"``, or nothing.

        >>> a = parse(b'{"type":"vigil.anomaly.opened","id":"x","time":"t","data":{"service":"checkout",'
        ...   b'"metric":"m","instance":"","score":2,"value":9,"deployment":{"version":"v42","after_s":185},'
        ...   b'"window":{"start":"a","end":"b","start_ms":1,"end_ms":2}}}', 1 << 16)
        >>> a.after_deployment()
        ', started 3 min after checkout v42 was deployed'
        """
        if self.deployed_version is None or self.deployed_after_s is None:
            return ""
        s = self.deployed_after_s
        after = f"{s:.0f} s" if s < 60 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.0f} h"
        return f", started {after} after {self.service} {self.deployed_version} was deployed"


def _num(value: float | None, missing: str) -> str:
    return missing if value is None else f"{value:.6g}"


def parse(raw: bytes, max_bytes: int) -> Anomaly:
    """The anomaly in ``raw``; :class:`BadEvent` with the reason otherwise."""
    if len(raw) > max_bytes:
        raise BadEvent(Skip.OVERSIZED, f"{len(raw)} bytes")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadEvent(Skip.NOT_JSON) from None
    if not isinstance(doc, dict):
        raise BadEvent(Skip.WRONG_SHAPE, "not an object")
    kind = str(doc.get("type", ""))
    if kind not in ("vigil.anomaly.opened", "vigil.anomaly.resolved"):
        if kind.startswith("vigil.") and len(kind) < 100:
            raise BadEvent(Skip.OTHER_TYPE, kind)
        raise BadEvent(Skip.WRONG_SHAPE, "not a vigil event")
    try:
        return _anomaly(doc, NotifyEvent(kind.removeprefix("vigil.anomaly.")), raw)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadEvent(Skip.WRONG_SHAPE, type(exc).__name__) from None


def _anomaly(doc: dict[str, Any], kind: NotifyEvent, raw: bytes) -> Anomaly:
    data = doc["data"]
    window = data["window"]
    expected = data.get("expected") or {}
    rule = data.get("rule") or {}
    deployment = data.get("deployment") or {}
    return Anomaly(
        event_id=_text(doc["id"], 128),
        kind=kind,
        service=_text(data["service"]),
        metric=_text(data["metric"]),
        instance=_text(data["instance"]),
        metric_type=MetricType(rule.get("type", MetricType.CUSTOM)),
        score=_finite(data["score"]),
        peak_score=_finite(data.get("peak_score", data["score"])),
        value=_optional(data.get("value")),
        expected_low=_optional(expected.get("low")),
        expected_high=_optional(expected.get("high")),
        start_ms=_int(window["start_ms"]),
        end_ms=_int(window["end_ms"]),
        start=_text(window["start"], 64),
        end=_text(window["end"], 64),
        time=_text(doc["time"], 64),
        raw=raw,
        deployed_version=_text(deployment["version"], 256) if deployment else None,
        deployed_after_s=_finite(deployment["after_s"]) if deployment else None,
    )


def _text(value: Any, limit: int = MAX_NAME) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError("text")
    return value


def _finite(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("number")
    return float(value)


def _optional(value: Any) -> float | None:
    return None if value is None else _finite(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 1 << 62:
        raise ValueError("integer")
    return value
