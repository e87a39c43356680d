"""``vigil poll --once``: what one poll of the configured watches gives, printed, without Kafka."""

from __future__ import annotations

import datetime
import sys
import time
from typing import TextIO

import orjson

from connectors.prometheus import PrometheusClient, QueryError, Window, aligned
from connectors.prometheus.watch import Poll, poll_watch, services_of, window_of
from engine.config import VigilConfig, WatchConfig
from engine.errors import VigilError
from engine.samples import Series


def parse_time(text: str, option: str) -> int:
    """An RFC 3339 time with a zone, as Unix ms.

    >>> parse_time("2026-12-02T10:00:00Z", "--start"), parse_time("2026-12-02T11:00:00.5+01:00", "--end")
    (1796205600000, 1796205600500)
    """
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise VigilError(f"{option}: not an RFC 3339 time: {text!r:.60}") from None
    if when.tzinfo is None:
        raise VigilError(f"{option}: {text!r:.60} has no time zone (add Z or +hh:mm)")
    return round(when.timestamp() * 1000)


def select(config: VigilConfig, name: str | None) -> list[WatchConfig]:
    watches = list(config.poller.watches)
    if not watches:
        raise VigilError("poller.watches is empty: nothing to poll")
    if name is None:
        return watches
    chosen = [w for w in watches if w.name == name]
    if not chosen:
        raise VigilError(f"--watch: no watch named {name!r:.60}, have {[w.name for w in watches]}")
    return chosen


def window_for(watch: WatchConfig, start_ms: int | None, end_ms: int | None) -> Window | None:
    if start_ms is None or end_ms is None:
        return window_of(watch, int(time.time() * 1000))
    return aligned(start_ms, end_ms, watch.step_s * 1000)


async def poll_once(
    config: VigilConfig,
    watch_name: str | None,
    start_ms: int | None,
    end_ms: int | None,
    *,
    as_json: bool,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Poll each chosen watch once; exit status 0 when every query answered, 1 when any failed."""
    out, err = out or sys.stdout, err or sys.stderr
    if (start_ms is None) != (end_ms is None):
        raise VigilError("give both --start and --end, or neither")
    if start_ms is not None and end_ms is not None and end_ms < start_ms:
        raise VigilError("--end is before --start")
    failed = 0
    for watch in select(config, watch_name):
        window = window_for(watch, start_ms, end_ms)
        if window is None:
            err.write(f"watch {watch.name}: no step of {watch.step_s}s falls in the range\n")
            continue
        async with PrometheusClient(config.poller.source_of(watch)) as client:
            try:
                services = await services_of(client, watch, config.labels, window)
            except QueryError as exc:
                err.write(f"watch {watch.name}: selector {watch.selector}: {exc.kind}: {exc}\n")
                failed += 1
                continue
            if not services:
                err.write(f"watch {watch.name}: no series match {watch.selector}\n")
            for one in services:
                poll = await poll_watch(client, one, config.labels, window)
                for series in poll.series:
                    out.write(json_line(series) if as_json else text_line(one, series))
                report(one, window, poll, err)
                failed += len(poll.failed)
    out.flush()
    return 1 if failed else 0


def json_line(series: Series) -> str:
    doc = {
        "service": series.service,
        "metric": series.metric,
        "instance": series.instance,
        "points": series.points,
    }
    return orjson.dumps(doc).decode() + "\n"


def _iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat().replace("+00:00", "Z")


def text_line(watch: WatchConfig, series: Series) -> str:
    first, last = series.points[0], series.points[-1]
    return (
        f"{series.service}/{series.metric} instance={series.instance or '-'}: {len(series.points)} points "
        f"{_iso(first[0])} .. {_iso(last[0])}, last {last[1]!r}\n"
    )


def report(watch: WatchConfig, window: Window, poll: Poll, err: TextIO) -> None:
    """Diagnostics on stderr: the window, and each failed, empty or clipped query."""
    err.write(
        f"watch {watch.label}: {_iso(window.start_ms)} .. {_iso(window.last_ms)} every {watch.step_s}s, "
        f"{len(poll.series)} series, {sum(len(s.points) for s in poll.series)} points, "
        f"{poll.nonfinite} NaN/Inf left out\n"
    )
    for name, exc in poll.failed.items():
        what = "rejected, fix the query" if not exc.retriable else "failed after retries"
        err.write(f"watch {watch.label}: query {name}: {what} ({exc.kind}): {exc}\n")
    for name in poll.empty:
        err.write(f"watch {watch.label}: query {name}: no data in the window\n")
