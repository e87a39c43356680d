"""Sends that never kill the agent: retried with capped exponential backoff, dead letters cut to fit.

A verdict or dead letter that cannot be sent right now (broker cut, leader moving, a request timing out)
is sent again after 0.1 s, 0.2 s, 0.4 s ... at most :attr:`Backoff.cap_s` apart, until the broker
acknowledges it. Only cancellation (shutdown) ends the wait. The agent handles one record at a time, so
while it waits nothing newer is processed and no offset beyond it is committed: a send that fails is
delayed, never lost. A retried send may reach Kafka twice; verdict ids are derived from their content
(engine.events), so consumers de-duplicate.

A dead letter larger than the broker's message limit would be refused for ever; :func:`fit` cuts its
payload so the document fits, keeps it valid JSON and says that it was cut (``"truncated"``). Plain
Python: engine.app wires it to Faust's producer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

log = logging.getLogger(__name__)

#: Bytes left for the record batch's own overhead (headers, key, framing) under a message limit.
MARGIN = 512
#: The smallest limit :func:`fit` aims for: below it only the reason and the source are kept.
FLOOR = 256
_REASON_CHARS = 1000


@dataclass(frozen=True, slots=True)
class Backoff:
    initial_s: float = 0.1
    factor: float = 2.0
    cap_s: float = 5.0

    def delays(self) -> Iterator[float]:
        """0.1, 0.2, 0.4, ... capped.

        >>> it = Backoff(initial_s=1.0, cap_s=3.0).delays()
        >>> [next(it) for _ in range(4)]
        [1.0, 2.0, 3.0, 3.0]
        """
        delay = self.initial_s
        while True:
            yield min(delay, self.cap_s)
            delay = min(delay * self.factor, self.cap_s)


class TooLarge(Exception):
    """A message the broker (or the producer) refused as too large: sending it again cannot help."""


@dataclass
class Sender:
    """Retries sends; ``retries`` counts every failed attempt (a metric)."""

    attempt_timeout_s: float
    backoff: Backoff = Backoff()
    retries: int = 0
    #: dead letters that could not be cut small enough for the broker and were dropped (logged)
    dropped: int = 0

    async def deliver(self, what: str, send: Callable[[], Awaitable[Any]]) -> None:
        """Await ``send()`` until it succeeds, each attempt bounded by ``attempt_timeout_s``.

        Raises only :class:`TooLarge` (a message that can never be sent as it is) and cancellation.
        """
        delays = self.backoff.delays()
        while True:
            try:
                await asyncio.wait_for(send(), self.attempt_timeout_s)
            except (asyncio.CancelledError, TooLarge):
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is retried: nothing may be lost
                self.retries += 1
                delay = next(delays)
                log.warning("sending %s failed (%s); retrying in %.1fs", what, _describe(exc), delay)
                await asyncio.sleep(delay)
            else:
                return

    async def deliver_deadletter(
        self,
        doc: bytes,
        limit: int,
        send: Callable[[bytes], Awaitable[Any]],
        *,
        too_large: Callable[[BaseException], bool],
    ) -> None:
        """Send a dead letter cut to ``limit``; when the broker still finds it too large, cut it further.

        ``too_large(exc)`` tells a size refusal from other failures (which are retried as they are).
        """
        while True:
            value = fit(doc, limit)
            try:
                await self.deliver("a dead letter", lambda v=value: _sized(send, v, too_large))  # type: ignore[misc]
            except TooLarge:
                self.retries += 1
                if limit <= FLOOR:
                    self.dropped += 1
                    log.error("dropped a dead letter refused even at %d bytes: %.300r", limit, value)
                    return
                limit = max(FLOOR, min(limit, len(value)) * 3 // 4)
                log.warning("a %d-byte dead letter was refused as too large; cut to %d", len(value), limit)
            else:
                return


async def _sized(
    send: Callable[[bytes], Awaitable[Any]], value: bytes, too_large: Callable[[BaseException], bool]
) -> None:
    try:
        await send(value)
    except Exception as exc:
        if too_large(exc):
            raise TooLarge(str(exc)) from exc
        raise


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no acknowledgement in time"
    return f"{type(exc).__name__}: {exc}"


def fit(doc: bytes, limit: int) -> bytes:
    """``doc`` (a dead-letter JSON object) as it is if it fits in ``limit`` bytes, else with its payload cut.

    The cut document keeps ``reason``, ``source`` and ``time_ms``, holds the beginning of the payload as
    ``payload_base64`` (raw records) or ``payload_excerpt`` (the payload's JSON text, cut), and says
    ``"truncated": {"original_bytes": N}``.

    >>> big = orjson.dumps({"reason": "r", "source": {}, "payload": list(range(1000))})
    >>> cut = orjson.loads(fit(big, 300))
    >>> len(fit(big, 300)) <= 300, cut["truncated"], cut["payload_excerpt"][:6]
    (True, {'original_bytes': 3928}, '[0,1,2')
    """
    if len(doc) <= limit:
        return doc
    try:
        parsed = orjson.loads(doc)
    except orjson.JSONDecodeError:
        parsed = {"payload_base64": None, "payload_excerpt": doc.decode("utf-8", "replace")}
    if not isinstance(parsed, dict):
        parsed = {"payload": parsed}
    head: dict[str, Any] = {
        "reason": str(parsed.get("reason", ""))[:_REASON_CHARS],
        "source": parsed.get("source"),
        "time_ms": parsed.get("time_ms"),
        "truncated": {"original_bytes": len(doc)},
    }
    if isinstance(parsed.get("payload_base64"), str):
        field, text = "payload_base64", parsed["payload_base64"]
    elif "payload" in parsed:
        field, text = "payload_excerpt", orjson.dumps(parsed["payload"], default=str).decode()
    else:
        field, text = "payload_excerpt", str(parsed.get("payload_excerpt", ""))
    if field == "payload_base64":
        text = text[: len(text) - len(text) % 4]  # whole base64 quanta decode cleanly
    room = limit - len(orjson.dumps({**head, field: ""}))
    cut = max(0, min(len(text), room))
    while True:
        piece = text[:cut]
        if field == "payload_base64":
            piece = piece[: len(piece) - len(piece) % 4]
        out = orjson.dumps({**head, field: piece})
        if len(out) <= limit or cut == 0:
            break
        cut = max(0, cut - max(1, (len(out) - limit)))
    if len(out) > limit:  # even the head alone is too large (a tiny limit): keep what must be kept
        out = _head_only(head["reason"][:100], head, limit)
    return out


def _head_only(reason: str, head: dict[str, Any], limit: int) -> bytes:
    """The reason (cut until the document fits ``limit``), the source and the truncation note.

    A character of the reason costs 1 to 6 bytes of JSON (``\u001f``), so it is cut by what is over.
    """
    while True:
        out = orjson.dumps({"reason": reason, "source": head["source"], "truncated": head["truncated"]})
        if len(out) <= limit or not reason:
            return out
        reason = reason[: len(reason) - max(1, (len(out) - limit) // 6)]
