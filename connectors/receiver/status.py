"""The status table: what the receiver answers, and whether the sender should resend.

The retry semantics are Prometheus' own (its remote-write client and handler): a 2xx is done, a 4xx is
dropped by the sender and never resent, a 5xx (and a 429) is resent with backoff, for ever. So only a
condition that a retry can fix may answer 5xx — Kafka away or slow, not connected yet, the in-flight budget
spent — and a body is never answered 5xx for what it contains: one poison request would block a
Prometheus shard for good. A bug in Vigil (an unexpected exception) answers 500 with an error id that is
also in the log, and is counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from aiohttp import web

#: Seconds a sender should wait before resending (the ``Retry-After`` header of every resendable answer).
RETRY_AFTER_S = 1
HEADER_SAMPLES = "X-Prometheus-Remote-Write-Samples-Written"
HEADER_HISTOGRAMS = "X-Prometheus-Remote-Write-Histograms-Written"
HEADER_EXEMPLARS = "X-Prometheus-Remote-Write-Exemplars-Written"


@dataclass(frozen=True, slots=True)
class Status:
    code: int
    when: str
    sender: str

    @property
    def resend(self) -> bool:
        """Whether Prometheus resends a request answered with this status (5xx and 429)."""
        return self.code >= 500 or self.code == 429


class Answer(Enum):
    """Every answer the write endpoint gives. ``Answer.X.value`` is its :class:`Status`."""

    WRITTEN = Status(204, "every record of the request is on Kafka, acknowledged with acks=all", "is done")
    MALFORMED = Status(400, "malformed body or invalid content (one-line reason in the body)", "drops it")
    UNAUTHORIZED = Status(401, "missing or wrong credentials (WWW-Authenticate says which)", "drops it")
    TOO_LARGE = Status(413, "Content-Length, or the snappy length header, over the limit", "drops it")
    UNSUPPORTED = Status(415, "wrong Content-Type or Content-Encoding", "drops it")
    INTERNAL = Status(500, "a bug in Vigil: an unexpected exception (error id in body and log)", "resends")
    UNAVAILABLE = Status(
        503,
        "Kafka unreachable, not confirming within kafka.ack_timeout_s, not connected yet, or the in-flight "
        "byte budget spent",
        "resends after Retry-After",
    )

    @property
    def code(self) -> int:
        return self.value.code

    @classmethod
    def of(cls, code: int) -> Answer:
        """The answer for a status code a decoder chose (400, 413, 415)."""
        for answer in cls:
            if answer.code == code:
                return answer
        raise ValueError(f"no answer with status {code}")


def respond(answer: Answer, reason: str = "", headers: dict[str, str] | None = None) -> web.Response:
    """The response for ``answer``: a one-line reason in the body, ``Retry-After`` exactly when the sender
    resends after a wait (503)."""
    out = dict(headers or {})
    if answer is Answer.UNAVAILABLE:
        out["Retry-After"] = str(RETRY_AFTER_S)
    if answer is Answer.WRITTEN:
        return web.Response(status=answer.code, headers=out)
    body = (" ".join(reason.splitlines()) + "\n").encode("utf-8", "backslashreplace")  # reasons quote input
    return web.Response(
        status=answer.code, body=body, content_type="text/plain", charset="utf-8", headers=out
    )
