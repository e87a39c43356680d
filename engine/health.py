"""Service and instance health, rolled up from open anomalies: plain functions, no state.

**The rule.** Each open anomaly is worth points: the weight of its metric's type (errors and latency 2,
throughput and saturation 1, custom 0.5) times its breadth — 2 when the anomaly of that metric is open on
at least half of the instances that report the metric (the whole service, or a service with one instance),
else 1 (one pod out of many). Per metric, only its widest breadth counts once: the same metric anomalous on
3 of 4 pods is one service-wide anomaly, not three.

* ``unhealthy``: 3 points or more — errors or latency across the service; errors or latency on one pod plus
  another metric's anomaly (anything but a custom metric on one pod); three service-wide custom anomalies.
* ``observe``: more than 0 and less than 3 points — something unusual but minor: errors on one pod of
  many, throughput across the service, custom metrics.
* ``healthy``: no open anomaly, and at least one series past learning.
* ``learning``: no open anomaly and every series still learning (or none seen yet).

An instance's health is the same rule over the anomalies open on that instance, each at breadth 2 (on
its own instance an anomaly is everywhere): errors or latency make a pod ``unhealthy``, one custom metric
``observe``.

``since`` (metric time): for ``observe``/``unhealthy`` the opening of the anomaly that brought the points
to the state's threshold, taking the open anomalies in the order they opened; for ``healthy`` the latest
resolution of the service's anomalies, if any (``None`` if none resolved); for ``learning`` the earliest
time one of its live learning series began learning (each series' status says when it entered its state),
``None`` when none is live or one of them does not say. It depends only on what is open, resolved and
live, not on the order records were read in, so a restarted API answers the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from engine.config import MetricType, MinHealth
from engine.guard import SeriesState


class Health(StrEnum):
    LEARNING = "learning"
    HEALTHY = "healthy"
    OBSERVE = "observe"
    UNHEALTHY = "unhealthy"


_RANK: Final = {Health.LEARNING: 0, Health.HEALTHY: 1, Health.OBSERVE: 2, Health.UNHEALTHY: 3}


def at_least(health: Health, minimum: MinHealth) -> bool:
    """Whether ``health`` is ``minimum`` or worse (a notifier's ``min_health``).

    >>> at_least(Health.UNHEALTHY, MinHealth.OBSERVE), at_least(Health.HEALTHY, MinHealth.OBSERVE)
    (True, False)
    """
    return _RANK[health] >= _RANK[Health(minimum.value)]


#: points per open anomaly, by the type of the rule that judged its series
WEIGHTS: Final = {
    MetricType.ERRORS: 2.0,
    MetricType.LATENCY: 2.0,
    MetricType.THROUGHPUT: 1.0,
    MetricType.SATURATION: 1.0,
    MetricType.CUSTOM: 0.5,
}
#: an anomaly open on at least this share of the instances reporting its metric is service-wide
WIDE_SHARE: Final = 0.5
WIDE: Final = 2.0
NARROW: Final = 1.0
UNHEALTHY_POINTS: Final = 3.0


@dataclass(frozen=True, slots=True)
class OpenAnomaly:
    """What the roll-up needs of an open anomaly (``opened_ms``: metric time of its opening)."""

    metric: str
    instance: str
    metric_type: MetricType
    opened_ms: int


@dataclass(frozen=True, slots=True)
class Rolled:
    health: Health
    points: float
    since_ms: int | None


def level(points: float) -> Health:
    """The health of a number of points (none open is handled by the callers).

    >>> level(0.5), level(2.0), level(3.0)
    (<Health.OBSERVE: 'observe'>, <Health.OBSERVE: 'observe'>, <Health.UNHEALTHY: 'unhealthy'>)
    """
    if points >= UNHEALTHY_POINTS:
        return Health.UNHEALTHY
    return Health.OBSERVE if points > 0 else Health.HEALTHY


def points(anomalies: Iterable[OpenAnomaly], reporting: dict[str, int] | None) -> float:
    """Points of open anomalies. ``reporting`` is how many instances report each metric (at least the
    anomalous ones are counted); ``None`` scores every anomaly at full breadth (one instance's health).

    >>> a = [OpenAnomaly("e", "p1", MetricType.ERRORS, 0), OpenAnomaly("e", "p2", MetricType.ERRORS, 0)]
    >>> points(a, {"e": 4}), points(a[:1], {"e": 4}), points(a, None)
    (4.0, 2.0, 4.0)
    """
    by_metric: dict[str, tuple[MetricType, set[str]]] = {}
    for a in anomalies:
        by_metric.setdefault(a.metric, (a.metric_type, set()))[1].add(a.instance)
    total = 0.0
    for metric, (metric_type, instances) in by_metric.items():
        if reporting is None:
            breadth = WIDE
        else:
            of = max(reporting.get(metric, 0), len(instances), 1)
            breadth = WIDE if len(instances) / of >= WIDE_SHARE else NARROW
        total += WEIGHTS[metric_type] * breadth
    return total


def _since(anomalies: list[OpenAnomaly], reporting: dict[str, int] | None, target: Health) -> int | None:
    """The opening time of the anomaly with which the open ones, in opening order, reached ``target``."""
    ordered = sorted(anomalies, key=lambda a: (a.opened_ms, a.metric, a.instance))
    for i, a in enumerate(ordered):
        if level(points(ordered[: i + 1], reporting)) is target:
            return a.opened_ms
    return None


def roll_up(
    states: Iterable[SeriesState],
    anomalies: Iterable[OpenAnomaly],
    reporting: dict[str, int] | None,
    last_resolved_ms: int | None = None,
    learning_since: Iterable[int | None] = (),
) -> Rolled:
    """The health of a service (``reporting``: instances per metric) or of one instance (``None``).

    ``states`` are the states of its live series, ``anomalies`` its open anomalies, ``learning_since``
    when each of its live learning series began learning (``None``: not known).

    >>> roll_up([SeriesState.LEARNING], [], {}).health
    <Health.LEARNING: 'learning'>
    >>> roll_up([SeriesState.NORMAL, SeriesState.LEARNING], [], {}, 5)
    Rolled(health=<Health.HEALTHY: 'healthy'>, points=0.0, since_ms=5)
    >>> roll_up([SeriesState.LEARNING] * 2, [], {}, learning_since=[7, 3]).since_ms
    3
    """
    open_now = list(anomalies)
    if open_now:
        total = points(open_now, reporting)
        health = level(total)
        return Rolled(health, total, _since(open_now, reporting, health))
    if any(s is not SeriesState.LEARNING for s in states):
        return Rolled(Health.HEALTHY, 0.0, last_resolved_ms)
    began = list(learning_since)
    known = [t for t in began if t is not None]
    return Rolled(Health.LEARNING, 0.0, min(known) if known and len(known) == len(began) else None)
