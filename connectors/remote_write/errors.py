"""The one error the remote-write decoders raise, and how it quotes what the sender sent."""

from __future__ import annotations

from engine.errors import VigilError

BAD_REQUEST = 400
TOO_LARGE = 413
UNSUPPORTED = 415


class DecodeError(VigilError):
    """A request Vigil will not take. ``status`` is the HTTP answer: 400 (malformed), 413 (too large) or
    415 (unsupported Content-Type or Content-Encoding). Every one is final: resending the same bytes cannot
    help, so a sender must not retry (Prometheus drops a batch answered with 4xx).

    ``str(error)`` is a one-line reason fit for the response body and the log.
    """

    retriable = False

    def __init__(self, status: int, reason: str) -> None:
        reason = " ".join(reason.splitlines())
        super().__init__(reason, retriable=False)
        self.status = status
        self.reason = reason

    def __reduce__(self) -> tuple[type[DecodeError], tuple[int, str]]:
        return type(self), (self.status, self.reason)


def show(value: str | bytes, limit: int = 60) -> str:
    """Quote untrusted text for a reason: one line, escaped, cut to ``limit`` characters.

    >>> show("up")
    "'up'"
    >>> show(b"\\xff\\n")
    "b'\\\\xff\\\\n'"
    >>> show("x" * 100, limit=5)
    "'xxxxx'..."
    """
    if len(value) > limit:
        return f"{value[:limit]!r}..."
    return repr(value)
