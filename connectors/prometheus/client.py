"""An HTTP client for one Prometheus-compatible source: ``/api/v1/query_range``, exact and patient.

* A window longer than 11,000 steps is asked in pieces (:func:`~connectors.prometheus.windows.split`) and
  the pieces joined per series: every step once, none lost at a boundary.
* At most ``max_concurrency`` requests are in flight to the source; a request that takes longer than
  ``timeout_s`` is abandoned (and Prometheus is told the same ``timeout``).
* Retriable failures (:data:`~connectors.prometheus.errors.RETRIABLE`) are asked again after an
  exponential backoff with jitter, at least as long as a 429's or 503's ``Retry-After``; the others raise
  at once. Prometheus' ``warnings`` are logged.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar
from urllib.parse import quote

import aiohttp

from connectors.prometheus.auth import Credentials, ssl_context
from connectors.prometheus.errors import ErrorKind, QueryError, kind_of_status
from connectors.prometheus.response import RangeResult, RangeSeries, error_message, parse_range, parse_values
from connectors.prometheus.windows import MAX_POINTS, Window, seconds, split
from engine.config import SourceConfig

log = logging.getLogger(__name__)

T = TypeVar("T")
#: A ``Retry-After`` longer than this is cut to it: one query must not stall the poller for hours.
MAX_RETRY_AFTER_S: Final = 300.0


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    points: int = 0
    nonfinite: int = 0
    warnings: int = 0
    errors: Counter[ErrorKind] = field(default_factory=Counter)


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date), capped; ``None`` if absent.

    >>> retry_after("3"), retry_after("soon"), retry_after(None)
    (3.0, None, None)
    >>> retry_after("Thu, 01 Jan 1970 00:00:10 GMT", now=4.0)
    6.0
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when - (time.time() if now is None else now)), MAX_RETRY_AFTER_S)


class PrometheusClient:
    """Range queries against one source. Use as ``async with PrometheusClient(source) as client``."""

    def __init__(
        self, source: SourceConfig, *, max_points: int = MAX_POINTS, seed: int | None = None
    ) -> None:
        self.source = source
        self.max_points = max_points
        self.stats = ClientStats()
        self._credentials = Credentials(source)
        self._ssl = ssl_context(source)
        self._limit = asyncio.Semaphore(source.max_concurrency)
        self._random = random.Random(seed)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.source.max_concurrency, ssl=self._ssl or True)
            self._session = aiohttp.ClientSession(connector=connector, raise_for_status=False)

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> PrometheusClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def query_range(self, query: str, window: Window, *, name: str = "") -> RangeResult:
        """Every series ``query`` gives at the steps of ``window``, in time order, NaN/±Inf left out."""
        # One piece after the other: a failure stops the rest, and memory holds one answer at a time.
        pieces = [await self._range(query, piece, name) for piece in split(window, self.max_points)]
        joined: dict[tuple[tuple[str, str], ...], RangeSeries] = {}
        out = RangeResult()
        for piece in pieces:
            out.nonfinite += piece.nonfinite
            out.warnings.extend(piece.warnings)
            for series in piece.series:
                key = tuple(sorted(series.labels.items()))
                if key in joined:
                    joined[key].points.extend(series.points)
                else:
                    joined[key] = RangeSeries(series.labels, list(series.points))
        out.series = list(joined.values())
        return out

    async def label_values(self, label: str, match: str, window: Window, *, name: str = "") -> list[str]:
        """The values of ``label`` on series matching the selector ``match`` within ``window``."""
        form = {"match[]": match, "start": seconds(window.start_ms), "end": seconds(window.end_ms)}
        path = f"/api/v1/label/{quote(label, safe='')}/values"
        return await self._retrying(name, lambda: self._values_once(path, form))

    async def _range(self, query: str, window: Window, name: str) -> RangeResult:
        form = {
            "query": query,
            "start": seconds(window.start_ms),
            "end": seconds(window.end_ms),
            "step": seconds(window.step_ms),
            "timeout": f"{self.source.timeout_s:g}s",
        }
        result = await self._retrying(name, lambda: self._range_once(form))
        self.stats.points += result.points
        self.stats.nonfinite += result.nonfinite
        self.stats.warnings += len(result.warnings)
        for warning in result.warnings:
            log.warning("source %s: query %s: Prometheus warns: %s", self.source.name, name or "-", warning)
        return result

    async def _retrying(self, name: str, once: Callable[[], Awaitable[T]]) -> T:
        """``once()`` under the concurrency limit, again after a backoff while it fails retriably."""
        attempt = 0
        while True:
            try:
                async with self._limit:
                    return await once()
            except QueryError as exc:
                self.stats.errors[exc.kind] += 1
                if not exc.retriable or attempt >= self.source.retries:
                    raise
                delay = self._backoff(attempt, exc.retry_after_s)
                log.info(
                    "source %s: query %s: %s; try %d of %d in %.2fs",
                    self.source.name,
                    name or "-",
                    exc,
                    attempt + 2,
                    self.source.retries + 1,
                    delay,
                )
                attempt += 1
                self.stats.retries += 1
                await asyncio.sleep(delay)

    def _backoff(self, attempt: int, at_least: float | None) -> float:
        ceiling = min(self.source.max_backoff_s, self.source.backoff_s * 2.0**attempt)
        delay = ceiling * self._random.uniform(0.5, 1.0)
        return max(delay, at_least or 0.0)

    async def _range_once(self, form: dict[str, str]) -> RangeResult:
        body = await self._request("/api/v1/query_range", form)
        try:
            result = parse_range(body)
        except QueryError as exc:
            raise QueryError(exc.kind, self._credentials.scrub(str(exc))) from None
        result.warnings = [self._credentials.scrub(w) for w in result.warnings]
        return result

    async def _values_once(self, path: str, form: dict[str, str]) -> list[str]:
        body = await self._request(path, form, post=False)
        try:
            return parse_values(body)
        except QueryError as exc:
            raise QueryError(exc.kind, self._credentials.scrub(str(exc))) from None

    async def _request(self, path: str, form: dict[str, str], *, post: bool = True) -> bytes:
        """The body of a 200 answer to a POST of ``form`` (or a GET with it as parameters: Prometheus takes
        label values by GET only); :class:`QueryError` for anything else."""
        if self._session is None:
            raise RuntimeError("PrometheusClient.start() first")
        self.stats.requests += 1
        try:
            async with self._session.request(
                "POST" if post else "GET",
                f"{self.source.base_url}{path}",
                data=form if post else None,
                params=None if post else form,
                headers=self._credentials.headers(),
                timeout=aiohttp.ClientTimeout(total=self.source.timeout_s),
            ) as response:
                body = await self._read(response)
                status, wait = response.status, retry_after(response.headers.get("Retry-After"))
        except TimeoutError:
            raise QueryError(ErrorKind.TIMEOUT, f"no answer within {self.source.timeout_s:g}s") from None
        except aiohttp.ClientPayloadError:
            raise QueryError(ErrorKind.BAD_RESPONSE, "the answer was cut short") from None
        except aiohttp.ClientError as exc:
            raise QueryError(
                ErrorKind.CONNECTION, f"cannot reach the source ({type(exc).__name__})"
            ) from None
        if status != 200:
            kind = kind_of_status(status)
            message = self._credentials.scrub(error_message(body))
            raise QueryError(kind, f"HTTP {status}: {message}", retry_after_s=wait)
        return body

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self.source.max_response_bytes
        if (response.content_length or 0) > limit:
            raise QueryError(ErrorKind.TOO_LARGE, f"answer of {response.content_length} bytes, limit {limit}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                raise QueryError(ErrorKind.TOO_LARGE, f"answer larger than the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
