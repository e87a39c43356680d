"""One poll of one watch: its queries over a step-aligned window, as prepared series.

A result series becomes ``Series(service=watch.service, metric=query.name, instance=labels[instance
label] or "")``. Two result series with the same instance (a query that does not aggregate by instance)
cannot both be that one series: the first is kept, the others are counted and logged. A rejected query
(:attr:`~connectors.prometheus.errors.QueryError.retriable` false) is reported in :attr:`Poll.failed`
and the other queries go on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from connectors.prometheus.client import PrometheusClient
from connectors.prometheus.errors import QueryError
from connectors.prometheus.windows import Window, aligned
from engine.config import LabelsConfig, QueryConfig, WatchConfig
from engine.samples import Series

log = logging.getLogger(__name__)


@dataclass
class Poll:
    """What one poll of a watch gave: series per query, the queries that failed, what was left out."""

    series: list[Series] = field(default_factory=list)
    failed: dict[str, QueryError] = field(default_factory=dict)
    empty: list[str] = field(default_factory=list)
    nonfinite: int = 0
    clashes: int = 0


def window_of(watch: WatchConfig, now_ms: int) -> Window | None:
    """A first poll's window: the last ``lookback_s`` of complete steps (``delay_s`` old), on the grid.

    >>> from engine.config import QueryConfig, WatchConfig
    >>> w = WatchConfig(name="w", service="s", queries=[QueryConfig(name="q", query="up")], lookback_s=60)
    >>> window_of(w, 1_000_000_000)
    Window(start_ms=999915000, end_ms=999960000, step_ms=15000)
    """
    end = now_ms - watch.delay_s * 1000
    return aligned(end - watch.lookback_s * 1000, end, watch.step_s * 1000)


async def poll_query(
    client: PrometheusClient, watch: WatchConfig, query: QueryConfig, labels: LabelsConfig, window: Window
) -> tuple[list[Series], int, int]:
    """The series of one query, NaN/±Inf left out (how many), and how many clashed on an instance."""
    result = await client.query_range(watch.render(query, labels), window, name=f"{watch.label}/{query.name}")
    service = watch.service or ""
    seen: set[str] = set()
    out: list[Series] = []
    clashes = 0
    for item in result.series:
        instance = item.labels.get(labels.instance, "")
        if instance in seen:
            clashes += 1
            continue
        seen.add(instance)
        if item.points:
            out.append(Series(service, query.name, instance, item.points))
    if clashes:
        log.warning(
            "watch %s: query %s: %d result series share an instance label value with another; only the "
            "first of each is used (aggregate by %s)",
            watch.label,
            query.name,
            clashes,
            labels.instance,
        )
    return out, result.nonfinite, clashes


async def poll_watch(
    client: PrometheusClient, watch: WatchConfig, labels: LabelsConfig, window: Window
) -> Poll:
    """Every query of ``watch`` over ``window``."""
    out = Poll()
    for query in watch.all_queries:
        try:
            series, nonfinite, clashes = await poll_query(client, watch, query, labels, window)
        except QueryError as exc:
            out.failed[query.name] = exc
            continue
        out.series.extend(series)
        out.nonfinite += nonfinite
        out.clashes += clashes
        if not series:
            out.empty.append(query.name)
    return out


async def services_of(
    client: PrometheusClient, watch: WatchConfig, labels: LabelsConfig, window: Window
) -> list[WatchConfig]:
    """The watch itself, or for a selector watch one watch per value of the service label among the
    series the selector matches in ``window`` (sorted)."""
    if watch.selector is None:
        return [watch]
    found = await client.label_values(labels.service, watch.selector, window, name=f"{watch.name} (selector)")
    return [watch.for_service(value) for value in sorted(found)]
