"""The receive path without HTTP: decode → validate → raw records → produce with ``acks=all``.

:meth:`Pipeline.write` returns only once every record of the request is confirmed by Kafka; otherwise it
raises :class:`Refused` (the sender resends: 503) or :class:`~connectors.remote_write.DecodeError` (never
resend: 4xx). Anything else it raises is a bug (500). Nothing is kept between requests but caches of derived
facts (validated label sets, their keys, metadata already published), so a resent request gives the same
records and ingest processes behind a load balancer are interchangeable.

Decoding and encoding run inline on the event loop: they are CPU-bound pure Python (a thread pool would
only add hand-off cost under the GIL); ``bench/receiver.py`` measures what a request holds the loop for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiokafka.errors import KafkaError

from connectors.receiver.delivery import Kafka
from connectors.receiver.records import RecordBuilder
from connectors.receiver.stats import Stats
from connectors.remote_write import Decoder, Limits
from engine.config import VigilConfig
from engine.errors import BrokerUnavailable, VigilError


class Refused(VigilError):
    """The receiver cannot take the request now; the sender should resend it (503 + Retry-After)."""

    retriable = True


@dataclass(frozen=True, slots=True)
class Written:
    """What one request contributed; the 2.0 response headers."""

    version: str
    samples: int
    histograms: int
    exemplars: int


class Pipeline:
    """One per receiver event loop (not thread-safe: the decoder's label cache is not)."""

    def __init__(self, config: VigilConfig, kafka: Kafka, stats: Stats | None = None) -> None:
        self.stats = stats or kafka.stats
        self.kafka = kafka
        max_future_ms = int(config.detection.max_future_s * 1000)
        self._decoder = Decoder(Limits.from_config(config.receiver, max_future_ms))
        topics = config.kafka.topics
        self._builder = RecordBuilder(config.labels, topics.samples, topics.metadata)

    async def write(self, body: bytes, content_type: str | None, content_encoding: str | None) -> Written:
        stats = self.stats
        try:
            partitions = await self.kafka.partitions()
        except (KafkaError, BrokerUnavailable) as exc:
            raise Refused(f"cannot read the partitions of the samples topic: {exc}") from None
        started = time.perf_counter()
        decoded = self._decoder.decode(body, content_type, content_encoding, time.time_ns() // 1_000_000)
        request = decoded.request
        samples = histograms = 0
        for raw in request.series:
            samples += len(raw.samples)
            histograms += len(raw.histograms)
        stats.samples_received += samples + decoded.future_rejected
        stats.histograms_received += histograms
        stats.exemplars_received += request.exemplars
        if decoded.future_rejected:
            # the decoder counts both; samples are by far the usual case and 1.0 cannot tell them apart
            stats.samples_rejected["too_far_in_future"] += decoded.future_rejected
        records = self._builder.build(request, partitions, self.kafka.published)
        stats.samples_rejected.update(records.samples_dropped)
        stats.histograms_rejected.update(records.histograms_dropped)
        stats.series_dropped.update(records.series_dropped)
        stats.work_seconds += time.perf_counter() - started
        if records.messages and not await self.kafka.deliver(records.messages, records.metadata):
            raise Refused("Kafka did not confirm every record in time; resend later")
        stats.samples_written += records.samples
        stats.histograms_written += records.histograms
        stats.exemplars_written += (
            request.exemplars
        )  # accepted and deliberately not stored: Vigil scores values
        return Written(decoded.version, records.samples, records.histograms, request.exemplars)
