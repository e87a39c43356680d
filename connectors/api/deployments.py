"""Deployments through the API: ``POST /api/v1/deployments`` (also what Argo Rollouts notifications send),
``GET /api/v1/deployments?service=…``, and Flagger's ``event`` webhook.

A deployment is written to ``kafka.topics.deployments`` (key: its id, so a retried call or another event of
one rollout is the same record) and read back by every API replica and every worker. The first report of a
version keeps its time: a repeat answers 200 with the deployment as recorded, a new one 201.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from connectors.api.flagger import Payload
from connectors.kafka import ensure_topics, start_producer
from engine.config import VigilConfig
from engine.deployments import Deployment, DeploymentFollower, Deployments, parse_deployment
from engine.errors import ConfigError, first_error

#: Flagger's message when a canary's target changed (pkg/controller/scheduler.go): the rollout starts
FLAGGER_NEW_REVISION = "New revision detected"


class DeploymentLog:
    """Records deployments on the topic and follows it (every replica knows all of them)."""

    def __init__(self, config: VigilConfig) -> None:
        self.config = config
        self.known = Deployments()
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._follower = DeploymentFollower(config.kafka, self.known)
        #: set once the deployments the topic held at the start are known
        self.ready = self._follower.caught_up

    async def start(self) -> None:
        k = self.config.kafka
        topic = k.topics.deployments
        await ensure_topics(
            k.bootstrap_servers, [topic], k.partitions, k.replication_factor, compacted=[topic]
        )
        extra = {"max_batch_size": 1} if k.embedded_quirks else {}
        self._producer = await start_producer(k, **extra)
        self._task = asyncio.create_task(self._follower.run(), name="vigil-api-deployments")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    def find(self, d: Deployment) -> Deployment | None:
        return next((k for k in self.known.of(d.service) if k.id == d.id), None)

    async def record(self, d: Deployment) -> tuple[Deployment, bool]:
        """(the deployment as recorded, whether this call recorded it)."""
        earlier = self.find(d)
        if earlier is not None:
            return earlier, False
        assert self._producer is not None, "start() first"
        await self._producer.send_and_wait(
            self.config.kafka.topics.deployments, d.record(), key=d.id.encode()
        )
        self.known.add(d)
        return d, True


def flagger_event(doc: object) -> Deployment | str:
    """The deployment a Flagger event reports, or why it reports none (Flagger sends an event for every
    step of a canary; the one saying a new revision was detected starts a rollout).

    ``metadata.service`` defaults to the canary's name, ``metadata.version`` to the payload's checksum
    (Flagger's hash of the target's spec); the time is the event's ``timestamp`` (Unix ms)."""
    try:
        event = Payload.model_validate(doc)
    except ValidationError as exc:
        raise first_error(exc, "payload") from None
    meta = event.metadata
    if not meta.get("eventMessage", "").startswith(FLAGGER_NEW_REVISION):
        return "not a new revision"
    version = meta.get("version") or event.checksum
    if not version:
        return "no version: set metadata.version in the event hook, or use a Flagger that sends checksum"
    stamp = meta.get("timestamp", "")
    body: dict[str, object] = {
        "service": meta.get("service") or event.name,
        "version": version,
        "source": "flagger",
        "namespace": event.namespace,
    }
    if stamp:
        if not stamp.isdigit() or len(stamp) > 16:
            raise ConfigError("metadata.timestamp: Unix milliseconds expected")
        return parse_deployment(body, now_ms=int(stamp))
    return parse_deployment(body)
