"""The remote-write receiver: Prometheus (or any remote-write sender) pushes, Vigil puts it on Kafka.

``POST /api/v1/write`` takes remote-write 1.0 and 2.0 requests, decodes and validates them
(:mod:`connectors.remote_write`) and produces the **raw** series — not prepared: the worker prepares — to
``vigil.samples``, one message per partition, keyed by (service, metric family); 1.0 metadata goes to the
compacted metadata topic. Ingest keeps no series state, so any number of ingest processes can stand behind
a load balancer, and a request answered 503 is simply resent.

By concern:

* :mod:`~connectors.receiver.routes` — the HTTP routes, with :mod:`~connectors.receiver.status`, the status
  table (what each answer means to the sender);
* :mod:`~connectors.receiver.auth` — credentials and TLS;
* :mod:`~connectors.receiver.records` and :mod:`~connectors.receiver.pipeline` — validation and the raw
  records; :mod:`~connectors.receiver.delivery` — producing them with ``acks=all``, in order;
* :mod:`~connectors.receiver.service` — the server as a service, and ``vigil ingest``;
* :mod:`~connectors.receiver.stats` — the counters on ``/metrics``.
"""

from connectors.receiver.auth import Auth, ssl_context
from connectors.receiver.delivery import PRODUCER_OPTIONS, Kafka
from connectors.receiver.pipeline import Pipeline, Refused, Written
from connectors.receiver.records import MAX_MESSAGE_BYTES, RecordBuilder, encode_chunks
from connectors.receiver.routes import (
    INGEST,
    SERVER_OPTIONS,
    WRITE_PATH,
    Ingest,
    make_app,
    max_compressed_length,
)
from connectors.receiver.service import Receiver, run_ingest, serve
from connectors.receiver.stats import Stats
from connectors.receiver.status import (
    HEADER_EXEMPLARS,
    HEADER_HISTOGRAMS,
    HEADER_SAMPLES,
    RETRY_AFTER_S,
    Answer,
)

__all__ = [
    "HEADER_EXEMPLARS",
    "HEADER_HISTOGRAMS",
    "HEADER_SAMPLES",
    "INGEST",
    "MAX_MESSAGE_BYTES",
    "PRODUCER_OPTIONS",
    "RETRY_AFTER_S",
    "SERVER_OPTIONS",
    "WRITE_PATH",
    "Answer",
    "Auth",
    "Ingest",
    "Kafka",
    "Pipeline",
    "Receiver",
    "RecordBuilder",
    "Refused",
    "Stats",
    "Written",
    "encode_chunks",
    "make_app",
    "max_compressed_length",
    "run_ingest",
    "serve",
    "ssl_context",
]
