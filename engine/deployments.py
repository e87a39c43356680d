"""Deployments of services, so the guard can say an anomaly started soon after one.

A deployment is recorded by ``POST /api/v1/deployments``, by Flagger's ``event`` webhook and by Argo
Rollouts notifications (a webhook to the same route), on ``kafka.topics.deployments``: compacted, key = the
deployment's id (service and version), value the JSON of :meth:`Deployment.record`. Every worker reads the
whole topic (no group) into :class:`Deployments`; an anomaly of a service that opens within
``detection.deployment_window_s`` (metric time) after one of its deployments carries it as
``data.deployment``. A worker starts judging samples once it has read the deployments the topic held when
it started (or after :data:`CATCH_UP_S`), so a backlog it finds is judged knowing them.

Records are untrusted: anyone who can write the topic can write anything. One that does not parse is
logged and counted, never fatal, and never replaces a good one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine.config import KafkaConfig
from engine.errors import ConfigError, first_error
from engine.events import iso
from engine.follower import Records, follow_topic

log = logging.getLogger(__name__)

__all__ = [
    "Deployment",
    "DeploymentFollower",
    "DeploymentRequest",
    "Deployments",
    "parse_deployment",
    "parse_record",
]

#: deployments remembered per service (the newest); older ones no anomaly can be near any more
PER_SERVICE = 16
#: a worker waits at most this long at start for the deployments topic to be read
CATCH_UP_S = 10.0
#: largest record accepted from the topic
MAX_RECORD = 16_384
Source = Literal["api", "flagger", "argo"]


@dataclass(frozen=True, slots=True)
class Deployment:
    service: str
    version: str
    time_ms: int  # when it rolled out (metric time: anomalies are compared with it)
    source: Source = "api"
    namespace: str | None = None

    @property
    def id(self) -> str:
        """The same for every report of one version of one service (a retried webhook, Flagger's many
        events of one rollout): the record's key, so the topic keeps one per deployment."""
        return hashlib.sha256(f"{self.service}\x1f{self.version}".encode()).hexdigest()[:32]

    def doc(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "service": self.service,
            "version": self.version,
            "time": iso(self.time_ms),
            "time_ms": self.time_ms,
            "source": self.source,
            "namespace": self.namespace,
        }

    def record(self) -> bytes:
        return orjson.dumps(self.doc())

    def evidence(self, at_ms: int) -> dict[str, Any]:
        """What an anomaly opening at ``at_ms`` carries: the deployment and how long after it it started."""
        return {**self.doc(), "after_s": round((at_ms - self.time_ms) / 1000, 3)}


class DeploymentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    service: str = Field(min_length=1, max_length=4096)
    version: str = Field(min_length=1, max_length=256)
    #: when it rolled out; default: when the call arrives
    time: datetime.datetime | None = None
    source: Source = "api"
    namespace: str | None = Field(default=None, min_length=1, max_length=253)

    @field_validator("time")
    @classmethod
    def _zoned(cls, value: datetime.datetime | None) -> datetime.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("needs a time zone (Z or +hh:mm)")
        return value


def parse_deployment(doc: object, now_ms: int | None = None) -> Deployment:
    """A deployment from a request body (decoded JSON); :class:`ConfigError` naming the field otherwise.

    >>> parse_deployment({"service": "checkout", "version": "v42", "time": "2026-11-01T19:00:00Z"}).time_ms
    1793559600000
    """
    try:
        r = DeploymentRequest.model_validate(doc)
    except ValidationError as exc:
        raise first_error(exc, "deployment") from None
    if r.time is not None:
        at = int(r.time.timestamp() * 1000)
    else:
        at = int(time.time() * 1000) if now_ms is None else now_ms
    return Deployment(r.service, r.version, at, r.source, r.namespace)


def parse_record(key: bytes | None, value: bytes | None) -> Deployment | str | None:
    """One topic record as a deployment; a reason when it is invalid; ``None`` for a tombstone."""
    if value is None:
        return None
    if len(value) > MAX_RECORD:
        return f"{len(value)} bytes, more than {MAX_RECORD}"
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return "not JSON"
    if not isinstance(doc, dict):
        return "not a JSON object"
    at = doc.get("time_ms")
    if type(at) is not int or not 0 <= at < 1 << 53:
        return "'time_ms' must be a Unix time in milliseconds"
    fields = {k: doc.get(k) for k in ("service", "version", "source", "namespace") if doc.get(k) is not None}
    try:
        d = parse_deployment({**fields, "time": iso(at)})
    except ConfigError as exc:
        return str(exc)
    d = Deployment(d.service, d.version, at, d.source, d.namespace)  # exact, not through the RFC 3339 text
    if key is not None and key != d.id.encode():
        return "the key is not the deployment's id"
    return d


class Deployments:
    """The newest :data:`PER_SERVICE` deployments of every service, ordered by time."""

    def __init__(self) -> None:
        self._by_service: dict[str, list[Deployment]] = {}

    def add(self, d: Deployment) -> None:
        known = [k for k in self._by_service.get(d.service, ()) if k.id != d.id]  # a re-report replaces
        known.append(d)
        known.sort(key=lambda k: k.time_ms)
        self._by_service[d.service] = known[-PER_SERVICE:]

    def of(self, service: str) -> Sequence[Deployment]:
        return self._by_service.get(service, ())

    def services(self) -> list[str]:
        return sorted(self._by_service)

    def before(self, service: str, at_ms: int, window_ms: int) -> Deployment | None:
        """The newest deployment of ``service`` at or before ``at_ms`` and at most ``window_ms`` before it.

        >>> ds = Deployments(); ds.add(Deployment("s", "v1", 1000)); ds.add(Deployment("s", "v2", 5000))
        >>> ds.before("s", 5500, 1000).version, ds.before("s", 4000, 5000).version, ds.before("s", 900, 10)
        ('v2', 'v1', None)
        """
        for d in reversed(self._by_service.get(service, ())):
            if d.time_ms <= at_ms:
                return d if at_ms - d.time_ms <= window_ms else None
        return None


class DeploymentFollower:
    """Reads the deployments topic into ``deployments``; :meth:`run` until cancelled."""

    def __init__(self, kafka: KafkaConfig, deployments: Deployments) -> None:
        self.kafka = kafka
        self.deployments = deployments
        self.records = 0
        self.invalid = 0
        #: set once the deployments the topic held at the start are known
        self.caught_up = asyncio.Event()

    async def run(self) -> None:
        await follow_topic(self.kafka, self.kafka.topics.deployments, self.handle, self.caught_up)

    async def wait_caught_up(self, timeout: float) -> bool:
        """Wait until :attr:`caught_up` (at most ``timeout`` s); whether it is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.caught_up.wait(), timeout)
        return self.caught_up.is_set()

    def handle(self, records: Records) -> None:
        for record in records:
            self.records += 1
            got = parse_record(record.key, record.value)
            if isinstance(got, Deployment):
                self.deployments.add(got)
            elif got is not None:
                self.invalid += 1
                log.warning("deployment record %s/%d refused: %s", record.topic, record.offset, got[:200])
