"""What can go wrong with a query, and whether asking again can help — decided here, in one place.

As in Prometheus' own remote-write client: a 4xx answer (other than 429) means the query itself is wrong
and will be refused again (``bad_data`` in Prometheus' words), so it is **rejected**: the poller stops
asking it. Timeouts, lost connections, 5xx and 429 are **retriable**: the client backs off and asks again.
A body that is not the JSON Prometheus documents (not JSON, cut short, a ``resultType`` other than
``matrix``) is retried too: proxies and overloaded servers produce those, and the same query usually
succeeds on the next try.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from engine.errors import VigilError


class ErrorKind(StrEnum):
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    SERVER = "server_error"  # 5xx
    THROTTLED = "throttled"  # 429
    REJECTED = "rejected"  # 4xx, Prometheus' bad_data
    BAD_RESPONSE = "bad_response"  # not JSON, truncated, wrong shape
    TOO_LARGE = "too_large"  # the answer is bigger than the client accepts


#: The one table of retry decisions.
RETRIABLE: Final = {
    ErrorKind.TIMEOUT: True,
    ErrorKind.CONNECTION: True,
    ErrorKind.SERVER: True,
    ErrorKind.THROTTLED: True,
    ErrorKind.REJECTED: False,
    ErrorKind.BAD_RESPONSE: True,
    ErrorKind.TOO_LARGE: False,
}


def kind_of_status(status: int) -> ErrorKind:
    """The error an HTTP status other than 200 means.

    >>> kind_of_status(400), kind_of_status(422), kind_of_status(429), kind_of_status(503)
    (<ErrorKind.REJECTED: 'rejected'>, <ErrorKind.REJECTED: 'rejected'>, <ErrorKind.THROTTLED: 'throttled'>, \
<ErrorKind.SERVER: 'server_error'>)
    """
    if status == 429:
        return ErrorKind.THROTTLED
    if status == 408:
        return ErrorKind.TIMEOUT
    if 400 <= status < 500:
        return ErrorKind.REJECTED
    if status >= 500:
        return ErrorKind.SERVER
    return ErrorKind.BAD_RESPONSE  # 1xx/2xx/3xx other than 200: not what the API answers


class QueryError(VigilError):
    """A query that failed: its kind, whether asking again may help, and a message without secrets."""

    def __init__(self, kind: ErrorKind, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message, retriable=RETRIABLE[kind])
        self.kind = kind
        self.retry_after_s = retry_after_s
