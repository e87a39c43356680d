"""The HTTP application: ``POST /api/v1/write``, ``/metrics``, ``/-/healthy`` and ``/-/ready``.

The write handler checks, cheapest first: credentials (401), headers (415), the announced length (413),
the in-flight byte budget and the Kafka connection (503); then it reads the body and hands it to the
:class:`~connectors.receiver.pipeline.Pipeline`. Every answer comes from the status table
(:mod:`connectors.receiver.status`). Exemplars are accepted and counted as written but not stored: Vigil
scores values. 2.0 senders get the ``X-Prometheus-Remote-Write-*-Written`` headers on every answer, as from
Prometheus' handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import ClientPayloadError, web
from aiokafka.errors import KafkaError

from connectors.receiver.auth import Auth
from connectors.receiver.delivery import Kafka
from connectors.receiver.pipeline import Pipeline, Refused, Written
from connectors.receiver.stats import CONTENT_TYPE, Stats
from connectors.receiver.status import HEADER_EXEMPLARS, HEADER_HISTOGRAMS, HEADER_SAMPLES, Answer, respond
from connectors.remote_write import DecodeError, protocol_version
from engine.config import VigilConfig
from engine.errors import VigilError

log = logging.getLogger(__name__)

WRITE_PATH = "/api/v1/write"
CONNECT_RETRY_S = 1.0
#: How the HTTP server runs: bodies are snappy or refused, so aiohttp must not inflate gzip/deflate/br
#: bodies on its own (unbounded work before any check).
SERVER_OPTIONS: dict[str, Any] = {"auto_decompress": False, "access_log": None}


def max_compressed_length(raw_length: int) -> int:
    """Snappy's worst case for ``raw_length`` bytes: no valid body of a request within the limit is longer.

    >>> max_compressed_length(32 * 1024 * 1024)
    39146869
    """
    return 32 + raw_length + raw_length // 6


class Ingest:
    """What the HTTP handlers share: auth, the byte budget, counters, and the pipeline once Kafka answers."""

    def __init__(self, config: VigilConfig) -> None:
        self.config = config
        self.auth = Auth(config.receiver.auth)
        self.stats = Stats(in_flight_limit=config.receiver.max_in_flight_bytes)
        self.max_request_bytes = max_compressed_length(config.receiver.max_body_bytes)
        self.pipeline: Pipeline | None = None
        self._kafka: Kafka | None = None
        self._connecting: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def start(self) -> None:
        if self._connecting is None:
            self._connecting = asyncio.create_task(self._connect(), name="vigil-receiver-connect")

    async def stop(self) -> None:
        task, self._connecting = self._connecting, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        kafka, self._kafka = self._kafka, None
        self.pipeline = None
        self.connected.clear()
        self.stats.ready = False
        if kafka is not None:
            await kafka.stop()

    async def _connect(self) -> None:
        """Connect to Kafka, retrying until it answers (the HTTP server answers 503 meanwhile)."""
        config = self.config.kafka
        complained = False
        while True:
            try:
                kafka = await Kafka.connect(config, self.stats)
            except (VigilError, KafkaError, OSError) as exc:
                if not complained:
                    log.warning("waiting for Kafka at %s: %s", config.bootstrap_servers, exc)
                    complained = True
                await asyncio.sleep(CONNECT_RETRY_S)
                continue
            self._kafka = kafka
            self.pipeline = Pipeline(self.config, kafka, self.stats)
            self.stats.ready = True
            self.connected.set()
            log.info("receiver connected to Kafka at %s", config.bootstrap_servers)
            return

    async def check_ready(self) -> bool:
        """Connected to the leader of every partition of the samples topic."""
        kafka = self._kafka
        ready = kafka is not None and await kafka.leaders_reachable()
        self.stats.ready = ready
        return ready


INGEST = web.AppKey("ingest", Ingest)


async def _write(request: web.Request) -> web.StreamResponse:
    ingest = request.app[INGEST]
    started = time.perf_counter()
    try:
        response = await _handle_write(ingest, request)
    except Exception:  # a bug: say so, with an id to find it in the log; never a silent 503
        error_id = uuid.uuid4().hex[:12]
        log.exception("unexpected error handling a write request (error id %s)", error_id)
        ingest.stats.internal_errors += 1
        response = respond(Answer.INTERNAL, f"internal error {error_id}: a bug in Vigil, see its log")
    ingest.stats.requests[response.status] += 1
    ingest.stats.request_seconds_sum += time.perf_counter() - started
    ingest.stats.request_seconds_count += 1
    return response


async def _handle_write(ingest: Ingest, request: web.Request) -> web.StreamResponse:
    if not ingest.auth.admits(request.headers.get("Authorization")):
        response = respond(Answer.UNAUTHORIZED, "missing or wrong credentials")
        for challenge in ingest.auth.challenges:
            response.headers.add("WWW-Authenticate", challenge)
        return response
    content_type = _header(request, "Content-Type")
    content_encoding = _header(request, "Content-Encoding")
    try:
        version = protocol_version(content_type, content_encoding)
    except DecodeError as exc:
        return respond(Answer.of(exc.status), str(exc))
    length = request.content_length
    if length is not None and length > ingest.max_request_bytes:
        return respond(
            Answer.TOO_LARGE,
            f"body of {length} bytes is larger than the limit of {ingest.max_request_bytes} bytes",
        )
    stats = ingest.stats
    reserve = length if length is not None else ingest.max_request_bytes
    if stats.in_flight_bytes and stats.in_flight_bytes + reserve > stats.in_flight_limit:
        return respond(
            Answer.UNAVAILABLE, f"too much in flight ({stats.in_flight_bytes} bytes); resend later"
        )
    pipeline = ingest.pipeline
    if pipeline is None:
        return respond(Answer.UNAVAILABLE, "not connected to Kafka yet; resend later")
    stats.in_flight_bytes += reserve
    try:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return respond(
                Answer.TOO_LARGE, f"body is larger than the limit of {ingest.max_request_bytes} bytes"
            )
        except web.HTTPClientError as exc:
            return respond(Answer.MALFORMED, f"unreadable body: {exc.reason}")
        except (ConnectionError, asyncio.IncompleteReadError, ClientPayloadError) as exc:
            return respond(Answer.MALFORMED, f"body not received whole: {exc}")  # the sender is gone
        try:
            written = await pipeline.write(body, content_type, content_encoding)
        except DecodeError as exc:
            return respond(Answer.of(exc.status), str(exc), _written_headers(version, None))
        except Refused as exc:
            return respond(Answer.UNAVAILABLE, str(exc), _written_headers(version, None))
    finally:
        stats.in_flight_bytes -= reserve
    return respond(Answer.WRITTEN, headers=_written_headers(version, written))


def _header(request: web.Request, name: str) -> str | None:
    """A header's value; repeated headers are joined as HTTP says, so "snappy" + "gzip" is not snappy."""
    values = request.headers.getall(name, None)
    return None if values is None else ", ".join(values)


def _written_headers(version: str, written: Written | None) -> dict[str, str]:
    if version != "2.0":
        return {}
    w = written or Written(version, 0, 0, 0)
    return {
        HEADER_SAMPLES: str(w.samples),
        HEADER_HISTOGRAMS: str(w.histograms),
        HEADER_EXEMPLARS: str(w.exemplars),
    }


async def _healthy(request: web.Request) -> web.Response:
    return web.Response(text="Vigil receiver is healthy.\n")


async def _ready(request: web.Request) -> web.Response:
    if await request.app[INGEST].check_ready():
        return web.Response(text="Vigil receiver is ready.\n")
    return respond(
        Answer.UNAVAILABLE, "Vigil receiver is not ready: Kafka is not connected or not confirming"
    )


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[INGEST].stats.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def make_app(config: VigilConfig) -> web.Application:
    """The ingest HTTP application; its clean-up context owns the Kafka producer."""
    ingest = Ingest(config)
    app = web.Application(client_max_size=ingest.max_request_bytes)
    app[INGEST] = ingest

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await app[INGEST].start()
        yield
        await app[INGEST].stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post(WRITE_PATH, _write)
    app.router.add_get("/-/healthy", _healthy)
    app.router.add_get("/-/ready", _ready)
    app.router.add_get("/metrics", _metrics)
    return app
