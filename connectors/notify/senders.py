"""The four notifiers' requests: what each receiver gets, and what its answer means.

Every answer maps to exactly one of three outcomes in one table (:func:`outcome`): delivered (2xx), resend
later (408, 425, 429, 5xx, a connection error or time-out; ``Retry-After`` honoured) or never resend (any
other 4xx: the request itself is wrong, sending it again cannot help). Errors never carry a secret: the
Slack webhook URL and the PagerDuty routing key are not logged, and connection errors are named by type.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from connectors.notify.anomaly import Anomaly, Severity
from engine.config import NotifierConfig, NotifierType, NotifyEvent
from engine.errors import ConfigError

#: the longest Retry-After honoured; a larger one is cut to this
MAX_RETRY_AFTER_S = 300.0
#: anomalies listed in one grouped message; the rest are counted ("and 7 more")
GROUP_LINES = 20
SIGNATURE_HEADER = "X-Vigil-Signature"


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REFUSED = "refused"


def outcome(status: int) -> Outcome:
    """What an HTTP status means for the request that got it.

    >>> [outcome(s).value for s in (200, 202, 400, 404, 408, 429, 500, 503)]
    ['delivered', 'delivered', 'refused', 'refused', 'retry', 'retry', 'retry', 'retry']
    """
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in (408, 425, 429) or status >= 500:
        return Outcome.RETRY
    return Outcome.REFUSED


class SendFailed(Exception):
    """A request that was not delivered; ``retriable`` says whether to send it again."""

    def __init__(self, message: str, *, retriable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.retry_after = retry_after


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delay-seconds or an HTTP date), capped.

    >>> retry_after("30"), retry_after(None), retry_after("soon"), retry_after("99999")
    (30.0, None, None, 300.0)
    """
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = datetime.strptime(value, "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=UTC)
        except ValueError:
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def read_secret(path: os.PathLike[str] | None, env: str | None, what: str) -> str:
    """A secret from its file (read at every send: rotation) or environment variable; errors never
    include the content."""
    if env is not None:
        value = os.environ.get(env, "").strip()
        if not value:
            raise ConfigError(f"{what}: environment variable {env} is not set or empty")
        return value
    assert path is not None
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read(64 * 1024).strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what}: cannot read {os.fspath(path)}: {type(exc).__name__}") from None
    if not value:
        raise ConfigError(f"{what}: {os.fspath(path)} is empty")
    return value


def signature(body: bytes, secret: str) -> str:
    """The ``X-Vigil-Signature`` value of ``body``.

    >>> signature(b"{}", "k")
    'sha256=add853b103fbcc936a194f9eb15e29c4ff08af6e47d5d1bca4f20218e31e4fff'
    """
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, secret: str) -> bool:
    """What a receiver does with ``X-Vigil-Signature``: compared in constant time."""
    return header is not None and hmac.compare_digest(header.encode(), signature(body, secret).encode())


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Sender:
    """Base: one ``aiohttp`` session, :meth:`post` turns answers into :class:`SendFailed`."""

    #: grouped senders get one call per service per interval; the others one per event, at once
    grouped = False

    def __init__(self, config: NotifierConfig, external_url: str | None) -> None:
        self.config = config
        self.external_url = external_url.rstrip("/") if external_url else None
        self._session: aiohttp.ClientSession | None = None
        self.last_status: int | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
                headers={"User-Agent": "vigil-notify/0.1"},
            )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def link(self, service: str) -> str | None:
        return f"{self.external_url}/api/v1/services/{quote(service, safe='')}" if self.external_url else None

    async def send(self, anomalies: Sequence[Anomaly]) -> None:
        raise NotImplementedError

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], *, secret_url: bool = False
    ) -> bytes:
        await self.start()
        assert self._session is not None
        where = "its URL" if secret_url else url
        try:
            async with self._session.post(url, data=body, headers=headers) as response:
                self.last_status = response.status
                text = await response.content.read(4096)
                verdict = outcome(response.status)
                if verdict is Outcome.DELIVERED:
                    return text
                said = "" if secret_url else f": {text[:200].decode('utf-8', 'replace')}"
                raise SendFailed(
                    f"{where} answered HTTP {response.status}{said}",
                    retriable=verdict is Outcome.RETRY,
                    retry_after=retry_after(response.headers.get("Retry-After")),
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.last_status = None
            detail = type(exc).__name__ if secret_url else f"{type(exc).__name__} {exc}"
            raise SendFailed(f"cannot reach {where}: {detail}", retriable=True) from None


class AlertmanagerSender(Sender):
    """``POST /api/v2/alerts``. An open anomaly is an alert with ``endsAt`` ``expiry_s`` ahead of the wall
    clock (sent again every ``resend_interval_s`` while open); its resolution sends ``endsAt`` = now."""

    def alert(self, a: Anomaly, now: float) -> dict[str, Any]:
        labels = {"alertname": "VigilAnomaly", "service": a.service, "metric": a.metric}
        if a.instance:
            labels["instance"] = a.instance
        labels["severity"] = a.severity.value
        annotations = {
            "summary": a.summary(),
            "value": "" if a.value is None else f"{a.value:.6g}",
            "expected_band": a.band(),
            "score": f"{a.score:.3f}",
            "peak_score": f"{a.peak_score:.3f}",
            "started_at": a.start,
            "window_end": a.end,
            "anomaly_id": a.anomaly_id,
        }
        if a.deployed_version is not None:
            annotations["deployment"] = a.deployed_version
        alert: dict[str, Any] = {"labels": labels, "annotations": annotations}
        if link := self.link(a.service):
            annotations["link"] = link
            alert["generatorURL"] = link
        # startsAt is metric time, but never after the wall clock's endsAt (Alertmanager refuses that).
        alert["startsAt"] = rfc3339(min(a.start_ms / 1000, now))
        ends = now if a.kind is NotifyEvent.RESOLVED else now + self.config.expiry_s
        alert["endsAt"] = rfc3339(ends)
        return alert

    async def send(self, anomalies: Sequence[Anomaly]) -> None:
        now = time.time()
        body = orjson.dumps([self.alert(a, now) for a in anomalies])
        assert self.config.url is not None
        url = self.config.url.rstrip("/") + "/api/v2/alerts"
        await self.post(url, body, {"Content-Type": "application/json"})


class WebhookSender(Sender):
    """The CloudEvent in structured mode as the body; signed when a secret is set."""

    async def send(self, anomalies: Sequence[Anomaly]) -> None:
        assert self.config.url is not None
        for a in anomalies:
            headers = {"Content-Type": "application/cloudevents+json; charset=utf-8"}
            if self.config.secret_file is not None or self.config.secret_env is not None:
                key = read_secret(
                    self.config.secret_file, self.config.secret_env, f"{self.config.name} secret"
                )
                headers[SIGNATURE_HEADER] = signature(a.raw, key)
            await self.post(self.config.url, a.raw, headers)


def group_text(service: str, anomalies: Sequence[Anomaly], link: str | None) -> str:
    """One message for a service's events of an interval."""
    opened = [a for a in anomalies if a.kind is NotifyEvent.OPENED]
    resolved = [a for a in anomalies if a.kind is NotifyEvent.RESOLVED]
    counts = []
    if opened:
        counts.append(f"{len(opened)} {'anomaly' if len(opened) == 1 else 'anomalies'} opened")
    if resolved:
        counts.append(f"{len(resolved)} resolved")
    lines = [f"Vigil: {service}: {', '.join(counts)}"]
    lines += [
        ("🔴 " if a.kind is NotifyEvent.OPENED else "✅ ") + a.summary() for a in anomalies[:GROUP_LINES]
    ]
    if len(anomalies) > GROUP_LINES:
        lines.append(f"… and {len(anomalies) - GROUP_LINES} more")
    if link:
        lines.append(link)
    return "\n".join(lines)


class SlackSender(Sender):
    """Incoming webhook: one message per service per interval (Slack allows about one a second)."""

    grouped = True

    async def send(self, anomalies: Sequence[Anomaly]) -> None:
        url = read_secret(
            self.config.webhook_url_file, self.config.webhook_url_env, f"{self.config.name} url"
        )
        service = anomalies[0].service
        body = orjson.dumps({"text": group_text(service, anomalies, self.link(service))})
        await self.post(url, body, {"Content-Type": "application/json"}, secret_url=True)


#: PagerDuty's Events API v2 takes these severities
PD_SEVERITY = {Severity.CRITICAL: "critical", Severity.WARNING: "warning"}


class PagerDutySender(Sender):
    """Events API v2. A service's anomalies of an interval become one ``trigger`` whose ``dedup_key`` is
    the anomaly id of the first of them; more anomalies of that service while it is open trigger the same
    key again (PagerDuty de-duplicates: one incident per service's episode). The key is resolved when all
    its anomalies are. Which anomalies share a key is kept in memory: after a restart, an anomaly's
    resolution resolves its own id (a key, or a no-op at PagerDuty)."""

    grouped = True

    def __init__(self, config: NotifierConfig, external_url: str | None) -> None:
        super().__init__(config, external_url)
        self._key_of_service: dict[str, str] = {}
        self._members: dict[str, set[str]] = {}  # key -> open anomaly ids

    async def send(self, anomalies: Sequence[Anomaly]) -> None:
        service = anomalies[0].service
        opened = [a for a in anomalies if a.kind is NotifyEvent.OPENED]
        if opened:
            key = self._key_of_service.get(service, opened[0].anomaly_id)
            worst = max((a.severity for a in opened), key=lambda s: s is Severity.CRITICAL)
            details = [
                {"summary": a.summary(), "anomaly_id": a.anomaly_id, "score": a.score} for a in opened[:50]
            ]
            event: dict[str, Any] = {
                "event_action": "trigger",
                "dedup_key": key,
                "payload": {
                    "summary": group_text(service, opened, None).split("\n", 1)[0][:200]
                    + " — "
                    + opened[0].summary()[:800],
                    "source": f"vigil/{service}",
                    "severity": PD_SEVERITY[worst],
                    "timestamp": opened[0].time,
                    "component": service,
                    "group": service,
                    "class": "anomaly",
                    "custom_details": {"anomalies": details, "count": len(opened)},
                },
            }
            if link := self.link(service):
                event["links"] = [{"href": link, "text": f"Vigil: {service}"}]
            await self._enqueue(event)
            self._key_of_service[service] = key
            self._members.setdefault(key, set()).update(a.anomaly_id for a in opened)
        for a in anomalies:
            if a.kind is NotifyEvent.RESOLVED:
                await self._resolve(service, a.anomaly_id)

    async def _resolve(self, service: str, anomaly_id: str) -> None:
        key = next((k for k, m in self._members.items() if anomaly_id in m), anomaly_id)
        members = self._members.get(key, set())
        if members - {anomaly_id}:
            members.discard(anomaly_id)  # others of the group are still open
            return
        await self._enqueue({"event_action": "resolve", "dedup_key": key})
        self._members.pop(key, None)
        if self._key_of_service.get(service) == key:
            del self._key_of_service[service]

    async def _enqueue(self, event: dict[str, Any]) -> None:
        key = read_secret(
            self.config.routing_key_file, self.config.routing_key_env, f"{self.config.name} key"
        )
        body = orjson.dumps({"routing_key": key, **event})
        endpoint = self.config.endpoint
        assert endpoint is not None
        await self.post(endpoint, body, {"Content-Type": "application/json"})


SENDERS: dict[NotifierType, type[Sender]] = {
    NotifierType.ALERTMANAGER: AlertmanagerSender,
    NotifierType.WEBHOOK: WebhookSender,
    NotifierType.SLACK: SlackSender,
    NotifierType.PAGERDUTY: PagerDutySender,
}


def make_sender(config: NotifierConfig, external_url: str | None) -> Sender:
    return SENDERS[config.type](config, external_url)
