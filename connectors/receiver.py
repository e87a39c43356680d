"""The remote-write receiver: Prometheus (or any remote-write sender) pushes, Vigil puts it on Kafka.

``POST /api/v1/write`` takes remote-write 1.0 and 2.0 requests, decodes them
(:mod:`connectors.remote_write`), prepares the series (:mod:`engine.prepare`) and produces one message per
partition of ``vigil.samples``. Status codes carry the retry semantics of Prometheus' own handler:

======  =================================================================  ==========================
status  when                                                               the sender
======  =================================================================  ==========================
204     every sample of the request is on Kafka, acknowledged by all       is done
        in-sync replicas (``acks=all``)
400     malformed body or invalid content (one-line reason in the body)    drops the batch
401     missing or wrong credentials (``WWW-Authenticate`` says which)     drops the batch
413     Content-Length, or the snappy length header, over the limit        drops the batch
415     wrong Content-Type or Content-Encoding                             drops the batch
503     Kafka unreachable or slower than ``kafka.ack_timeout_s``, not      resends after
        connected yet, or the in-flight byte budget spent                  ``Retry-After``
======  =================================================================  ==========================

**Nothing acknowledged is lost, nothing retried is lost.** The preparer is stateful (a rate needs the
previous sample) and drops samples it has already seen, so a request answered 503 after preparation would
come back as "duplicates" and its points would never be produced. Instead, the prepared messages Kafka did
not confirm are kept (``unsent``) and delivered before any later request is prepared: while they cannot be
delivered every request is answered 503 *before* it reaches the preparer, so the stream the preparer sees
never skips a sample and the sender's retry finds its points already on Kafka. A message whose send timed
out keeps its future: if Kafka confirms it late it is not sent twice.

Samples more than ``detection.max_future_s`` ahead are dropped and counted, the rest of the request is
taken (2.0 senders see it in the ``X-Prometheus-Remote-Write-*-Written`` headers, which every 2.0 response
carries, as Prometheus' handler does). Exemplars are accepted and counted as written but not stored: Vigil
scores values. Only the write endpoint needs credentials; ``/metrics`` and the health endpoints stay open
for probes and scrapes, as in Prometheus.

Decoding and preparation run inline on the event loop: they are CPU-bound pure Python (a thread pool would
only add hand-off cost under the GIL), and ``bench/receiver.py`` measures what a request blocks the loop for
(about 3 ms for Prometheus' 500-sample request, 30 ms for 10,000 samples).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
import signal
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from connectors.kafka import ensure_topics, start_producer, topic_names
from connectors.remote_write import DecodeError, Decoder, Limits, protocol_version
from engine.config import AuthConfig, TLSConfig, VigilConfig
from engine.errors import ConfigError, VigilError
from engine.prepare import Preparer
from engine.samples import Series, analysis_key, encode_batch, partition_for

log = logging.getLogger(__name__)

WRITE_PATH = "/api/v1/write"
RETRY_AFTER_S = 1
#: Largest ``vigil.samples`` message: below Kafka's default ``message.max.bytes`` (1 MB).
MAX_MESSAGE_BYTES = 900 * 1024
STOP_TIMEOUT_S = 3.0
#: How the HTTP server runs: bodies are snappy or refused, so aiohttp must not inflate gzip/deflate/br
#: bodies on its own (unbounded work before any check).
SERVER_OPTIONS: dict[str, Any] = {"auto_decompress": False, "access_log": None}
#: Producer settings on top of :func:`connectors.kafka.start_producer`'s. A request's messages are all
#: produced at once and then awaited, so lingering only delays the answer (measured: 0.47 → 0.85 of bare
#: decode for one Prometheus shard); concurrent requests still share produce requests.
PRODUCER_OPTIONS: dict[str, Any] = {"linger_ms": 0}
CONNECT_RETRY_S = 1.0
_PARTITION_CACHE_SIZE = 1 << 20
HEADER_SAMPLES = "X-Prometheus-Remote-Write-Samples-Written"
HEADER_HISTOGRAMS = "X-Prometheus-Remote-Write-Histograms-Written"
HEADER_EXEMPLARS = "X-Prometheus-Remote-Write-Exemplars-Written"


def max_compressed_length(raw_length: int) -> int:
    """Snappy's worst case for ``raw_length`` bytes: no valid body of a request within the limit is longer.

    >>> max_compressed_length(32 * 1024 * 1024)
    39146869
    """
    return 32 + raw_length + raw_length // 6


class Refused(VigilError):
    """The receiver cannot take the request now; the sender should resend it (503 + Retry-After)."""

    retriable = True


# --- counters and their exposition --------------------------------------------------------------------


@dataclass
class Stats:
    """The receiver's own counters, exposed on ``/metrics``."""

    requests: Counter[int] = field(default_factory=Counter)  # by status code
    samples_received: int = 0
    histograms_received: int = 0
    exemplars_received: int = 0
    samples_written: int = 0
    histograms_written: int = 0
    exemplars_written: int = 0
    samples_rejected: Counter[str] = field(default_factory=Counter)  # by reason
    prepare_events: Counter[str] = field(default_factory=Counter)  # engine.prepare.Count
    points_produced: int = 0
    messages_produced: int = 0
    bytes_produced: int = 0
    produce_failures: int = 0
    in_flight_bytes: int = 0
    in_flight_limit: int = 0
    unsent_messages: int = 0
    ready: bool = False
    request_seconds_sum: float = 0.0
    request_seconds_count: int = 0
    work_seconds: float = 0.0  # decode + prepare + encode: the part that holds the event loop

    def exposition(self) -> str:
        """Prometheus text format 0.0.4."""
        one = _one
        families: list[tuple[str, str, str, list[tuple[str, float]]]] = [
            ("requests_total", "counter", "Write requests by status code.", _by("code", self.requests)),
            ("samples_received_total", "counter", "Samples decoded.", one(self.samples_received)),
            (
                "histograms_received_total",
                "counter",
                "Native histograms decoded.",
                one(self.histograms_received),
            ),
            ("exemplars_received_total", "counter", "Exemplars decoded.", one(self.exemplars_received)),
            (
                "samples_written_total",
                "counter",
                "Samples of requests answered 2xx.",
                one(self.samples_written),
            ),
            (
                "histograms_written_total",
                "counter",
                "Native histograms of requests answered 2xx.",
                one(self.histograms_written),
            ),
            (
                "exemplars_written_total",
                "counter",
                "Exemplars of requests answered 2xx (accepted, not stored).",
                one(self.exemplars_written),
            ),
            (
                "samples_rejected_total",
                "counter",
                "Samples refused, by reason.",
                _by("reason", self.samples_rejected),
            ),
            (
                "prepare_events_total",
                "counter",
                "What series preparation dropped or noticed (samples or events), by kind.",
                _by("event", self.prepare_events),
            ),
            (
                "points_produced_total",
                "counter",
                "Prepared points confirmed by Kafka.",
                one(self.points_produced),
            ),
            (
                "messages_produced_total",
                "counter",
                "Messages confirmed by Kafka.",
                one(self.messages_produced),
            ),
            (
                "bytes_produced_total",
                "counter",
                "Message bytes confirmed by Kafka.",
                one(self.bytes_produced),
            ),
            (
                "produce_failures_total",
                "counter",
                "Deliveries Kafka did not confirm in time (answered 503).",
                one(self.produce_failures),
            ),
            (
                "unsent_messages",
                "gauge",
                "Prepared messages waiting to be resent.",
                one(self.unsent_messages),
            ),
            ("in_flight_bytes", "gauge", "Request bytes being handled.", one(self.in_flight_bytes)),
            (
                "in_flight_limit_bytes",
                "gauge",
                "Budget of request bytes in flight.",
                one(self.in_flight_limit),
            ),
            (
                "ready",
                "gauge",
                "1 when connected to Kafka and nothing waits to be resent.",
                one(int(self.ready)),
            ),
            (
                "work_seconds_total",
                "counter",
                "Time spent decoding, preparing and encoding (it holds the event loop).",
                one(self.work_seconds),
            ),
            (
                "request_duration_seconds",
                "summary",
                "Time spent handling write requests.",
                [("_sum", self.request_seconds_sum), ("_count", self.request_seconds_count)],
            ),
        ]
        out = []
        for name, kind, help_text, samples in families:
            out.append(f"# HELP vigil_receiver_{name} {help_text}")
            out.append(f"# TYPE vigil_receiver_{name} {kind}")
            out.extend(f"vigil_receiver_{name}{suffix} {_number(value)}" for suffix, value in samples)
        return "\n".join(out) + "\n"


def _one(value: float) -> list[tuple[str, float]]:
    return [("", value)]


def _by(label: str, counts: Counter[Any]) -> list[tuple[str, float]]:
    return [(f'{{{label}="{_escape(str(k))}"}}', v) for k, v in sorted(counts.items(), key=str)]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """
    >>> _number(3), _number(0.25), _number(float("inf"))
    ('3', '0.25', '+Inf')
    """
    if isinstance(value, int):
        return str(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


# --- authentication -----------------------------------------------------------------------------------


def _secret(value: Any, path: Path | None, what: str) -> bytes | None:
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"receiver.auth.{what}_file: cannot read {path}: {exc}") from None
        if not text:
            raise ConfigError(f"receiver.auth.{what}_file: {path} is empty")
        return text.encode()
    if value is not None:
        secret: str = value.get_secret_value()
        if not secret:
            raise ConfigError(f"receiver.auth.{what}: must not be empty")
        return secret.encode()
    return None


class Auth:
    """Bearer token and/or basic auth, as Prometheus' ``remote_write`` sends them; either one admits.

    Secrets are read once at start-up (from the config, i.e. also from ``VIGIL_RECEIVER__AUTH__*``, or from
    files), compared in constant time, and never logged.
    """

    def __init__(self, config: AuthConfig) -> None:
        if config.bearer_token is not None and config.bearer_token_file is not None:
            raise ConfigError("receiver.auth: set bearer_token or bearer_token_file, not both")
        if config.basic_password is not None and config.basic_password_file is not None:
            raise ConfigError("receiver.auth: set basic_password or basic_password_file, not both")
        self._bearer = _secret(config.bearer_token, config.bearer_token_file, "bearer_token")
        password = _secret(config.basic_password, config.basic_password_file, "basic_password")
        if (config.basic_username is None) != (password is None):
            raise ConfigError("receiver.auth: basic auth needs both basic_username and a password")
        self._basic = None if password is None else (config.basic_username or "").encode() + b":" + password

    @property
    def enabled(self) -> bool:
        return self._bearer is not None or self._basic is not None

    @property
    def challenges(self) -> list[str]:
        out = []
        if self._bearer is not None:
            out.append('Bearer realm="vigil"')
        if self._basic is not None:
            out.append('Basic realm="vigil", charset="UTF-8"')
        return out

    def admits(self, authorization: str | None) -> bool:
        if not self.enabled:
            return True
        if not authorization:
            return False
        scheme, _, credentials = authorization.strip().partition(" ")
        scheme = scheme.lower()
        given = credentials.strip().encode("utf-8", "surrogateescape")
        if scheme == "bearer" and self._bearer is not None:
            return hmac.compare_digest(given, self._bearer)
        if scheme == "basic" and self._basic is not None:
            try:
                decoded = base64.b64decode(given, validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(decoded, self._basic)
        return False


def ssl_context(tls: TLSConfig) -> ssl.SSLContext | None:
    """The server's TLS context, or ``None`` for plain HTTP."""
    if tls.cert_file is None or tls.key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"receiver.tls: cannot load {tls.cert_file} / {tls.key_file}: {exc}") from None
    return context


# --- the receive path, without HTTP -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Written:
    """What one request contributed; the 2.0 response headers."""

    version: str
    samples: int
    histograms: int
    exemplars: int


@dataclass(slots=True)
class _Message:
    partition: int
    value: bytes
    points: int
    future: asyncio.Future[Any] | None = None

    @property
    def confirmed(self) -> bool:
        f = self.future
        return f is not None and f.done() and not f.cancelled() and f.exception() is None

    @property
    def failed(self) -> bool:
        """Done without success (which also marks the exception retrieved: no "never retrieved" noise)."""
        f = self.future
        return f is not None and f.done() and (f.cancelled() or f.exception() is not None)


def encode_chunks(
    series: Sequence[Series], limit: int = MAX_MESSAGE_BYTES, points: int | None = None
) -> list[tuple[bytes, int]]:
    """``series`` as message values of at most ``limit`` bytes (a single point may exceed it), in order,
    with the number of points in each (``points``: their total, when the caller knows it)."""
    value = encode_batch(series)
    if len(value) <= limit:
        return [(value, sum(len(s.points) for s in series) if points is None else points)]
    if len(series) > 1:
        mid = len(series) // 2
        halves: list[Sequence[Series]] = [series[:mid], series[mid:]]
    elif len(series[0].points) > 1:
        s = series[0]
        mid = len(s.points) // 2
        halves = [[replace(s, points=s.points[:mid])], [replace(s, points=s.points[mid:])]]
    else:
        return [(value, 1)]
    return [chunk for half in halves for chunk in encode_chunks(half, limit)]


class Pipeline:
    """decode → validate → prepare → produce with ``acks=all``, one request after the other.

    :meth:`write` returns only once every prepared point of the request is confirmed by Kafka; otherwise it
    raises :class:`Refused` (resend later) or :class:`DecodeError` (never resend).
    """

    def __init__(
        self, config: VigilConfig, producer: AIOKafkaProducer, partitions: int, stats: Stats | None = None
    ) -> None:
        self.stats = stats or Stats()
        self._producer = producer
        self._topic = config.kafka.topics.samples
        self._partitions = partitions
        self._ack_timeout = config.kafka.ack_timeout_s
        max_future_ms = int(config.detection.max_future_s * 1000)
        self._decoder = Decoder(Limits.from_config(config.receiver, max_future_ms))
        self._preparer = Preparer(config.labels, config.receiver.quantiles)
        self._partition_of: dict[tuple[str, str], int] = {}
        self._unsent: list[_Message] = []
        self._resending = asyncio.Lock()

    @property
    def unsent(self) -> int:
        return len(self._unsent)

    async def leaders_reachable(self, timeout: float = 1.0) -> bool:
        client = self._producer.client
        leaders = {
            client.cluster.leader_for_partition(TopicPartition(self._topic, p))
            for p in range(self._partitions)
        }
        if None in leaders or -1 in leaders:
            return False
        try:
            async with asyncio.timeout(timeout):
                return all([await client.ready(leader) for leader in leaders])
        except (TimeoutError, KafkaError, OSError):
            return False

    async def write(self, body: bytes, content_type: str | None, content_encoding: str | None) -> Written:
        if self._unsent:
            await self._resend()
        stats = self.stats
        started = time.perf_counter()
        decoded = self._decoder.decode(body, content_type, content_encoding, time.time_ns() // 1_000_000)
        request = decoded.request
        samples = histograms = 0
        for raw in request.series:
            samples += len(raw.samples)
            histograms += len(raw.histograms)
        exemplars = request.exemplars
        stats.samples_received += samples + decoded.future_rejected
        stats.histograms_received += histograms
        stats.exemplars_received += exemplars
        if decoded.future_rejected:
            stats.samples_rejected["too_far_in_future"] += decoded.future_rejected
        prepared = self._preparer.prepare(request)
        stats.prepare_events.update(prepared.counts)
        messages = self._messages(prepared.series)
        stats.work_seconds += time.perf_counter() - started
        if messages and not await self._deliver(messages):
            self._unsent.extend(m for m in messages if not m.confirmed)
            stats.unsent_messages = len(self._unsent)
            raise Refused("Kafka did not confirm the samples in time; resend later")
        stats.samples_written += samples
        stats.histograms_written += histograms
        stats.exemplars_written += exemplars  # accepted and deliberately not stored: Vigil scores values
        return Written(decoded.version, samples, histograms, exemplars)

    def _messages(self, series: list[Series]) -> list[_Message]:
        """One message per partition (split when over the size limit)."""
        by_partition: dict[int, list[Series]] = {}
        points: dict[int, int] = {}
        cache = self._partition_of
        for s in series:
            name = (s.service, s.metric)
            partition = cache.get(name)
            if partition is None:
                if len(cache) >= _PARTITION_CACHE_SIZE:
                    cache.clear()
                partition = cache[name] = partition_for(analysis_key(*name), self._partitions)
            found = by_partition.get(partition)
            if found is None:
                by_partition[partition] = [s]
                points[partition] = len(s.points)
            else:
                found.append(s)
                points[partition] += len(s.points)
        return [
            _Message(partition, value, n)
            for partition, members in by_partition.items()
            for value, n in encode_chunks(members, points=points[partition])
        ]

    async def _deliver(self, messages: list[_Message]) -> bool:
        """Send what is not sent (or whose send failed) and wait for the acks until the deadline.
        True when Kafka confirmed every message."""
        try:
            async with asyncio.timeout(self._ack_timeout):
                for m in messages:
                    if m.future is None or m.failed:
                        m.future = await self._producer.send(self._topic, m.value, partition=m.partition)
                await asyncio.wait([m.future for m in messages if m.future is not None])
        except TimeoutError:
            pass
        except KafkaError as exc:
            log.warning("producing to %s failed: %s", self._topic, exc)
        confirmed = 0
        for m in messages:
            if m.confirmed:
                confirmed += 1
                self.stats.points_produced += m.points
                self.stats.bytes_produced += len(m.value)
        self.stats.messages_produced += confirmed
        if confirmed < len(messages):
            self.stats.produce_failures += 1
            return False
        return True

    async def _resend(self) -> None:
        """Deliver earlier unconfirmed messages first; :class:`Refused` while that is not possible."""
        if self._resending.locked():
            raise Refused("Kafka is unavailable; earlier samples are being resent")
        async with self._resending:
            pending, self._unsent = self._unsent, []
            try:
                ok = await self._deliver(pending)
            finally:
                self._unsent = [m for m in pending if not m.confirmed] + self._unsent
                self.stats.unsent_messages = len(self._unsent)
            if not ok:
                raise Refused("Kafka is unavailable; earlier samples are not delivered yet")
            log.info("delivered %d messages kept from failed requests", len(pending))


# --- the HTTP application -----------------------------------------------------------------------------


class Ingest:
    """What the HTTP handlers share: auth, the byte budget, counters, and the pipeline once Kafka answers."""

    def __init__(self, config: VigilConfig) -> None:
        self.config = config
        self.auth = Auth(config.receiver.auth)
        self.stats = Stats(in_flight_limit=config.receiver.max_in_flight_bytes)
        self.max_request_bytes = max_compressed_length(config.receiver.max_body_bytes)
        self.pipeline: Pipeline | None = None
        self._producer: AIOKafkaProducer | None = None
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
        pipeline, self.pipeline = self.pipeline, None
        producer, self._producer = self._producer, None
        self.connected.clear()
        self.stats.ready = False
        if pipeline is not None and pipeline.unsent:
            log.warning(
                "stopping with %d undelivered messages; their requests were answered 503 and will be resent",
                pipeline.unsent,
            )
        if producer is not None:
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await producer.stop()
            except TimeoutError:
                log.warning("Kafka producer did not stop within %.0fs", STOP_TIMEOUT_S)

    async def _connect(self) -> None:
        """Connect to Kafka, retrying until it answers (the HTTP server answers 503 meanwhile)."""
        kafka = self.config.kafka
        complained = False
        while True:
            producer: AIOKafkaProducer | None = None
            try:
                await ensure_topics(
                    kafka.bootstrap_servers, topic_names(kafka), kafka.partitions, kafka.replication_factor
                )
                producer = await start_producer(kafka, **PRODUCER_OPTIONS)
                partitions = len(await producer.partitions_for(kafka.topics.samples))
            except (VigilError, KafkaError, OSError) as exc:
                if producer is not None:
                    await producer.stop()
                if not complained:
                    log.warning("waiting for Kafka at %s: %s", kafka.bootstrap_servers, exc)
                    complained = True
                await asyncio.sleep(CONNECT_RETRY_S)
                continue
            if partitions != kafka.partitions:
                log.warning(
                    "%s has %d partitions, the configuration says %d: using %d",
                    kafka.topics.samples,
                    partitions,
                    kafka.partitions,
                    partitions,
                )
            self._producer = producer
            self.pipeline = Pipeline(self.config, producer, partitions, self.stats)
            self.stats.ready = True
            self.connected.set()
            log.info("receiver connected to Kafka at %s", kafka.bootstrap_servers)
            return

    async def check_ready(self) -> bool:
        """Connected to the leader of every partition of the samples topic, nothing waiting to be resent."""
        pipeline = self.pipeline
        ready = pipeline is not None and not pipeline.unsent and await pipeline.leaders_reachable()
        self.stats.ready = ready
        return ready


INGEST = web.AppKey("ingest", Ingest)


def _text(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    body = (reason + "\n").encode("utf-8", "backslashreplace")  # reasons quote what the sender sent
    return web.Response(status=status, body=body, content_type="text/plain", charset="utf-8", headers=headers)


def _retry(reason: str) -> web.Response:
    return _text(503, reason, {"Retry-After": str(RETRY_AFTER_S)})


async def _write(request: web.Request) -> web.StreamResponse:
    ingest = request.app[INGEST]
    started = time.perf_counter()
    try:
        response = await _handle_write(ingest, request)
    except Exception:
        log.exception("unexpected error handling a write request")
        response = _retry("internal error")
    ingest.stats.requests[response.status] += 1
    ingest.stats.request_seconds_sum += time.perf_counter() - started
    ingest.stats.request_seconds_count += 1
    return response


async def _handle_write(ingest: Ingest, request: web.Request) -> web.StreamResponse:
    if not ingest.auth.admits(request.headers.get("Authorization")):
        response = _text(401, "missing or wrong credentials")
        for challenge in ingest.auth.challenges:
            response.headers.add("WWW-Authenticate", challenge)
        return response
    content_type = _header(request, "Content-Type")
    content_encoding = _header(request, "Content-Encoding")
    try:
        version = protocol_version(content_type, content_encoding)
    except DecodeError as exc:
        return _text(exc.status, str(exc))
    length = request.content_length
    if length is not None and length > ingest.max_request_bytes:
        return _text(
            413, f"body of {length} bytes is larger than the limit of {ingest.max_request_bytes} bytes"
        )
    stats = ingest.stats
    reserve = length if length is not None else ingest.max_request_bytes
    if stats.in_flight_bytes and stats.in_flight_bytes + reserve > stats.in_flight_limit:
        return _retry(f"too much in flight ({stats.in_flight_bytes} bytes); resend later")
    pipeline = ingest.pipeline
    if pipeline is None:
        return _retry("not connected to Kafka yet; resend later")
    stats.in_flight_bytes += reserve
    try:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _text(413, f"body is larger than the limit of {ingest.max_request_bytes} bytes")
        try:
            written = await pipeline.write(body, content_type, content_encoding)
        except DecodeError as exc:
            return _text(exc.status, str(exc), _written_headers(version, None))
        except Refused as exc:
            return _text(503, str(exc), {"Retry-After": str(RETRY_AFTER_S)} | _written_headers(version, None))
    finally:
        stats.in_flight_bytes -= reserve
    return web.Response(status=204, headers=_written_headers(version, written))


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
    return _retry("Vigil receiver is not ready: Kafka is not connected or not confirming")


async def _metrics(request: web.Request) -> web.Response:
    ingest = request.app[INGEST]
    return web.Response(
        body=ingest.stats.exposition().encode(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


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


# --- the service --------------------------------------------------------------------------------------


class Receiver:
    """The ingest server as a service: ``await start()`` listens (``port`` 0 picks a free one), ``await
    stop()`` answers what is in flight for a moment, then closes. Both are idempotent."""

    def __init__(self, config: VigilConfig) -> None:
        self.config = config
        self._ssl = ssl_context(config.receiver.tls)
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self.port: int = config.receiver.port

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl else "http"
        return f"{scheme}://{self.config.receiver.host}:{self.port}"

    @property
    def ingest(self) -> Ingest:
        assert self.app is not None, "start() the receiver first"
        return self.app[INGEST]

    async def start(self) -> None:
        if self._runner is not None:
            return
        self.app = make_app(self.config)
        runner = web.AppRunner(self.app, shutdown_timeout=STOP_TIMEOUT_S, **SERVER_OPTIONS)
        await runner.setup()
        r = self.config.receiver
        site = web.TCPSite(runner, r.host, r.port, ssl_context=self._ssl, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise VigilError(f"receiver cannot listen on {r.host}:{r.port}: {exc.strerror or exc}") from None
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        for address in runner.addresses:
            self.port = int(address[1])
            break
        log.info("receiver listening on %s%s", self.url, WRITE_PATH)

    async def wait_connected(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self.ingest.connected.wait()

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


async def serve(config: VigilConfig, stop: asyncio.Event) -> None:
    """Run the receiver until ``stop`` is set."""
    receiver = Receiver(config)
    await receiver.start()
    try:
        await stop.wait()
    finally:
        await receiver.stop()


def run_ingest(config: VigilConfig) -> None:
    """``vigil ingest``: run the receiver until SIGINT or SIGTERM."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await serve(config, stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    asyncio.run(main())
