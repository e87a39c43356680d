"""Verification jobs, kept on Kafka: a compacted topic (``kafka.topics.verifications``) holds the latest
document of every job, keyed by its id, so any API replica answers for any job and a restarted one resumes.

Every replica follows the topic and keeps the documents in memory. The replica that creates a job runs
it and rewrites its document as it goes (at least every ``lease_s / 3``); a running job whose document
has not changed for ``lease_s`` is taken over by the replica that notices first (a replay is judged again
from its start: the same data gives the same verdict). Events go to ``kafka.topics.verdicts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import time
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from connectors.kafka import ensure_topics, fetch_wait_ms, start_producer
from connectors.prometheus import QueryError
from connectors.verifier import verify
from engine.config import VigilConfig
from engine.errors import ConfigError, VigilError
from engine.events import iso
from engine.verification import Outcome, Verdict
from engine.verification.document import verdict_document
from engine.verification.request import Request, duration_s, plan

log = logging.getLogger("vigil.api")

EVENT = {Outcome.PASS: "passed", Outcome.FAIL: "failed", Outcome.INCONCLUSIVE: "inconclusive"}
SOURCE = "/vigil/verification"
#: a progress document (and event) at most this often per job, in seconds
PROGRESS_EVERY_S = 2.0


def now_ms() -> int:
    return int(time.time() * 1000)


#: a live verification still running this long after its planned end is "late" (its verdict is overdue)
LATE_S = 150.0


def due_at_ms(request: Request, created_ms: int) -> int | None:
    """When a live verification's last step is judged (None for a replay, which needs no waiting)."""
    if request.end is not None or request.duration is None:
        return None
    begin = request.start.timestamp() * 1000 if request.start else created_ms
    return int(begin + duration_s(request.duration) * 1000)


def state_of(doc: dict[str, Any], at_ms: int) -> str:
    """One word for tools: the verdict once there is one, else the status, or ``late`` when a running
    verification is overdue (so Argo's template reads it as Inconclusive, never as Successful).

    >>> state_of({"verdict": None, "status": "running", "due_at_ms": 0}, 10**6)
    'late'
    >>> state_of({"verdict": "fail", "status": "done"}, 0)
    'fail'
    >>> state_of({"verdict": None, "status": "running", "due_at_ms": None}, 10**6)
    'running'
    """
    if doc.get("verdict"):
        return str(doc["verdict"])
    due = doc.get("due_at_ms")
    if doc["status"] == "running" and due is not None and at_ms > due + LATE_S * 1000:
        return "late"
    return str(doc["status"])


def job_id(key: str | None) -> str:
    """A new id; with a key, the same id for the same key (so two replicas agree on a retried call)."""
    if key is None:
        return uuid.uuid4().hex[:24]
    return hashlib.sha256(key.encode()).hexdigest()[:24]


class Jobs:
    """The documents of every job, what this replica runs, and the topic they live on."""

    def __init__(self, config: VigilConfig) -> None:
        self.config = config
        self.docs: dict[str, dict[str, Any]] = {}
        self.replica = uuid.uuid4().hex[:12]
        self.ready = asyncio.Event()
        self.running: dict[str, asyncio.Task[None]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._slots = asyncio.Semaphore(config.api.max_running)
        self._producer: AIOKafkaProducer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.finished = {"pass": 0, "fail": 0, "inconclusive": 0, "error": 0, "cancelled": 0}

    # --- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._producer is not None:
            return
        k = self.config.kafka
        await ensure_topics(
            k.bootstrap_servers,
            [k.topics.verifications, k.topics.verdicts],
            k.partitions,
            k.replication_factor,
            compacted=[k.topics.verifications],
        )
        extra = {"max_batch_size": 1} if k.embedded_quirks else {}
        self._producer = await start_producer(k, **extra)
        self._tasks = [
            asyncio.create_task(self._follow(), name="vigil-api-follow"),
            asyncio.create_task(self._take_over(), name="vigil-api-take-over"),
        ]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self.running.values()]
        self._tasks, self.running = [], {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
        self.ready.clear()

    # --- the topic ---------------------------------------------------------------------------------
    async def _write(self, doc: dict[str, Any]) -> None:
        assert self._producer is not None, "start() first"
        doc["updated_at_ms"] = now_ms()
        self._apply(doc)
        topic = self.config.kafka.topics.verifications
        await self._producer.send_and_wait(topic, orjson.dumps(doc), key=doc["id"].encode())

    def _apply(self, doc: dict[str, Any]) -> None:
        old = self.docs.get(doc["id"])
        if old is not None and old.get("updated_at_ms", 0) > doc.get("updated_at_ms", 0):
            return  # a stale copy (our own write coming back after a newer one)
        self.docs[doc["id"]] = doc
        event = self._changed.pop(doc["id"], None)
        if event is not None:
            event.set()
        if doc["status"] == "cancelled" and doc["id"] in self.running:
            self.running.pop(doc["id"]).cancel()

    async def _follow(self) -> None:
        """Follow the topic; a failure (Kafka away) is logged and the reading starts again, so the task
        never dies quietly and /-/ready tells the truth meanwhile."""
        while True:
            try:
                await self._read()
            except (KafkaError, OSError) as exc:
                self.ready.clear()
                log.warning(
                    "reading %s failed (%s); again in 1 s", self.config.kafka.topics.verifications, exc
                )
                await asyncio.sleep(1.0)

    async def _read(self) -> None:
        """Read the topic from the start; ready once a marker written now has come back (this works on
        any broker: it does not trust end offsets)."""
        k = self.config.kafka
        marker = f"marker/{self.replica}"
        consumer = AIOKafkaConsumer(
            k.topics.verifications,
            bootstrap_servers=k.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=fetch_wait_ms(k.embedded_quirks),
        )
        await consumer.start()
        try:
            assert self._producer is not None
            await self._producer.send_and_wait(k.topics.verifications, b"{}", key=marker.encode())
            async for record in consumer:
                if record.key == marker.encode():
                    if not self.ready.is_set():
                        self.ready.set()
                        await self._producer.send_and_wait(k.topics.verifications, None, key=record.key)
                    continue
                if record.value is None or (record.key or b"").startswith(b"marker/"):
                    continue
                try:
                    doc = orjson.loads(record.value)
                except orjson.JSONDecodeError:
                    log.warning("skipping a verification record that is not JSON (offset %d)", record.offset)
                    continue
                if isinstance(doc, dict) and isinstance(doc.get("id"), str) and "status" in doc:
                    self._apply(doc)
        finally:
            await consumer.stop()

    async def _take_over(self) -> None:
        """Run the running jobs nobody has updated for ``lease_s`` (their replica is gone)."""
        lease_ms = self.config.api.lease_s * 1000
        await self.ready.wait()
        while True:
            for doc in list(self.docs.values()):
                stale = now_ms() - doc.get("updated_at_ms", 0) > lease_ms
                if doc["status"] == "running" and doc["id"] not in self.running and stale:
                    log.warning(
                        "taking over verification %s (last update by %s)", doc["id"], doc.get("owner")
                    )
                    self._launch(doc)
            await asyncio.sleep(min(5.0, self.config.api.lease_s / 3))

    # --- jobs --------------------------------------------------------------------------------------
    async def create(self, request: Request) -> tuple[dict[str, Any], bool]:
        """The job for ``request``: (document, created). An existing ``key`` returns its job."""
        ident = job_id(request.key)
        if ident in self.docs:
            return self.docs[ident], False
        earlier_run = request.baseline_run
        if earlier_run is not None:
            request = self.against_run(request, earlier_run)
        # a live job's start (and deployed_at) fixed now, in its document: a replica that takes it over
        # judges the same window
        request = request.pinned(datetime.datetime.now(datetime.UTC))
        plan(request, self.config)  # unknown source or pack: refused before anything is written
        doc: dict[str, Any] = {
            "id": ident,
            "key": request.key,
            "service": request.service,
            "type": request.type,
            "status": "running",
            "verdict": None,
            "score": None,
            "reason": "starting",
            "decided_at": None,
            "metrics": [],
            "instances": [],
            "missing": [],
            "progress": {"steps": 0, "total": None},
            "created_at": iso(now_ms()),
            "due_at_ms": due_at_ms(request, now_ms()),
            "owner": self.replica,
            "request": request.model_dump(mode="json", exclude_none=True),
            "baseline_run": earlier_run,
        }
        await self._write(doc)
        await self._event(doc, "started")
        self._launch(doc)
        return doc, True

    def against_run(self, request: Request, run: str) -> Request:
        """A load test against an earlier verification (by id or key): its window's start as
        ``baseline_start``; ConfigError when no such verification is known."""
        earlier = self.docs.get(run) or self.docs.get(job_id(run))
        if earlier is None:
            raise ConfigError(f"baseline_run: no verification with id or key {run!r:.60}")
        began = earlier["request"].get("start") or earlier["created_at"]
        doc = request.model_dump(mode="json", exclude_none=True) | {"baseline_start": began}
        del doc["baseline_run"]
        try:
            return Request.model_validate(doc)
        except ValidationError as exc:
            raise ConfigError(f"baseline_run: {exc.errors()[0]['msg']}") from None

    async def cancel(self, ident: str) -> dict[str, Any]:
        doc = dict(self.docs[ident])
        doc["status"], doc["reason"] = "cancelled", "cancelled by a DELETE"
        await self._write(doc)
        await self._event(doc, "cancelled")
        return doc

    async def changed(self, ident: str, timeout: float) -> None:
        """Wait up to ``timeout`` for the job's document to change."""
        event = self._changed.setdefault(ident, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()

    def _launch(self, doc: dict[str, Any]) -> None:
        self.running[doc["id"]] = asyncio.create_task(self._run(doc["id"]), name=f"vigil-verify-{doc['id']}")

    async def _run(self, ident: str) -> None:
        try:
            async with self._slots:
                await self._judge(ident)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: the job says so instead of hanging as "running"
            log.exception("verification %s failed", ident)
            await self._finish(ident, "error", f"internal error: {type(exc).__name__}")
        finally:
            self.running.pop(ident, None)

    async def _judge(self, ident: str) -> None:
        doc = self.docs[ident]
        request = Request.model_validate(doc["request"])
        chosen = plan(request, self.config)
        last = 0.0

        async def progress(done: int, total: int, decided: Verdict | None) -> None:
            nonlocal last
            if time.monotonic() - last < PROGRESS_EVERY_S and decided is None:
                return
            last = time.monotonic()
            current = dict(self.docs[ident], owner=self.replica, progress={"steps": done, "total": total})
            if decided is not None:
                current |= verdict_document(decided)
            await self._write(current)
            await self._event(current, "progress")

        try:
            verdict = await verify(self.config, chosen, progress=progress)
        except (QueryError, VigilError) as exc:
            await self._finish(ident, "error", str(exc))
            return
        final = dict(self.docs[ident], owner=self.replica, status="done") | verdict_document(verdict)
        final["progress"] = dict(final["progress"], steps=verdict.steps)
        await self._write(final)
        assert verdict.outcome is not None
        self.finished[str(verdict.outcome)] += 1
        await self._event(final, EVENT[verdict.outcome])

    async def _finish(self, ident: str, status: str, reason: str) -> None:
        self.finished[status] = self.finished.get(status, 0) + 1
        doc = dict(self.docs[ident], status=status, reason=reason)
        await self._write(doc)
        await self._event(doc, status)

    async def _event(self, doc: dict[str, Any], kind: str) -> None:
        assert self._producer is not None
        steps = doc["progress"]["steps"]
        ident = hashlib.sha256(f"{doc['id']}\x1f{kind}\x1f{steps}".encode()).hexdigest()[:32]
        data = {k: doc[k] for k in ("id", "service", "status", "verdict", "score", "reason", "decided_at")}
        data["progress"] = doc["progress"]
        if kind != "progress":
            data |= {k: doc[k] for k in ("metrics", "instances", "missing")}
        event = {
            "specversion": "1.0",
            "id": ident,
            "source": SOURCE,
            "type": f"vigil.verification.{kind}",
            "subject": f"{doc['service']}/{doc['id']}",
            "time": iso(now_ms()),
            "datacontenttype": "application/json",
            "data": data,
        }
        topic = self.config.kafka.topics.verdicts
        await self._producer.send_and_wait(topic, orjson.dumps(event), key=doc["service"].encode())
