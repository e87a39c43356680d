"""The health roll-up, rule by rule (engine/health.py's docstring is the rule the README states)."""

from __future__ import annotations

import doctest
import itertools

import pytest

from engine import health as health_module
from engine import status as status_module
from engine.config import MetricType
from engine.guard import SeriesState
from engine.health import Health, OpenAnomaly, points, roll_up

E, L, T, S, C = (
    MetricType.ERRORS,
    MetricType.LATENCY,
    MetricType.THROUGHPUT,
    MetricType.SATURATION,
    MetricType.CUSTOM,
)
N = SeriesState.NORMAL
LEARNING = SeriesState.LEARNING
PODS4 = {"e": 4, "l": 4, "t": 4, "s": 4, "c": 4, "c2": 4, "c3": 4}


def a(metric: str, instance: str, kind: MetricType, at: int = 0) -> OpenAnomaly:
    return OpenAnomaly(metric, instance, kind, at)


def health(anomalies: list[OpenAnomaly], reporting: dict[str, int] | None = PODS4) -> Health:
    return roll_up([N], anomalies, reporting).health


def test_no_series_or_only_learning_ones_is_learning_and_one_past_learning_is_healthy() -> None:
    assert roll_up([], [], {}).health is Health.LEARNING
    assert roll_up([SeriesState.LEARNING] * 3, [], {}).health is Health.LEARNING
    assert roll_up([SeriesState.LEARNING, N], [], {}).health is Health.HEALTHY
    assert roll_up([SeriesState.ANOMALOUS], [], {}).health is Health.HEALTHY  # no open anomaly known


@pytest.mark.parametrize("kind", [E, L])
def test_errors_or_latency_on_one_pod_of_many_is_observe_across_the_service_unhealthy(
    kind: MetricType,
) -> None:
    metric = "e" if kind is E else "l"
    assert health([a(metric, "p1", kind)]) is Health.OBSERVE
    assert health([a(metric, "p1", kind), a(metric, "p2", kind)]) is Health.UNHEALTHY  # half of 4 pods
    assert health([a(metric, "", kind)], {metric: 1}) is Health.UNHEALTHY  # one instance: the whole service


def test_errors_on_one_pod_plus_another_metric_is_unhealthy_unless_it_is_custom_on_one_pod() -> None:
    assert health([a("e", "p1", E), a("l", "p1", L)]) is Health.UNHEALTHY
    assert health([a("e", "p1", E), a("t", "p3", T)]) is Health.UNHEALTHY
    assert health([a("e", "p1", E), a("c", "p3", C), a("c", "p4", C)]) is Health.UNHEALTHY  # custom wide
    assert health([a("e", "p1", E), a("c", "p3", C)]) is Health.OBSERVE  # 2.5 points


@pytest.mark.parametrize("kind", [T, S])
def test_throughput_or_saturation_is_observe_even_across_the_service(kind: MetricType) -> None:
    metric = "t" if kind is T else "s"
    everywhere = [a(metric, f"p{i}", kind) for i in range(4)]
    assert health(everywhere[:1]) is Health.OBSERVE
    assert health(everywhere) is Health.OBSERVE
    assert (
        health([*everywhere, a("s" if kind is T else "t", "p1", S if kind is T else T)]) is Health.UNHEALTHY
    )


def test_custom_metrics_weigh_least() -> None:
    assert health([a("c", "p1", C)]) is Health.OBSERVE
    wide = [a(m, p, C) for m in ("c", "c2") for p in ("p1", "p2")]
    assert health(wide) is Health.OBSERVE  # two service-wide custom anomalies: 2 points
    wider = [a(m, p, C) for m in ("c", "c2", "c3") for p in ("p1", "p2")]
    assert health(wider) is Health.UNHEALTHY  # three: 3 points


def test_the_same_metric_on_many_pods_counts_once_at_its_widest() -> None:
    assert points([a("e", f"p{i}", E) for i in range(4)], PODS4) == 4.0
    assert points([a("e", "p1", E), a("e", "p2", E)], PODS4) == 4.0
    assert points([a("c", "p1", C)], {"c": 100}) == 0.5


def test_the_share_counts_the_instances_reporting_the_metric_and_at_least_the_anomalous_ones() -> None:
    # 1 of 3 pods is under half: narrow; an unknown metric (no live series reporting) counts its own.
    assert points([a("e", "p1", E)], {"e": 3}) == 2.0
    assert points([a("e", "p1", E)], {"e": 2}) == 4.0
    assert points([a("e", "p1", E)], {}) == 4.0


def test_an_instance_takes_every_anomaly_at_full_breadth() -> None:
    assert roll_up([N], [a("e", "p1", E)], None).health is Health.UNHEALTHY
    assert roll_up([N], [a("l", "p1", L)], None).health is Health.UNHEALTHY
    assert roll_up([N], [a("t", "p1", T)], None).health is Health.OBSERVE
    assert roll_up([N], [a("c", "p1", C)], None).health is Health.OBSERVE
    assert roll_up([N], [a("c", "p1", C), a("t", "p1", T)], None).health is Health.UNHEALTHY
    assert roll_up([SeriesState.LEARNING], [], None).health is Health.LEARNING


def test_since_is_when_the_open_anomalies_in_opening_order_reached_the_state() -> None:
    opened = [a("c", "p1", C, at=100), a("e", "p2", E, at=200), a("t", "p3", T, at=300)]
    # custom (0.5) at 100: observe; + errors on one pod (2) at 200: 2.5, still observe;
    # + throughput at 300: 3.5, unhealthy
    rolled = roll_up([N], opened, PODS4)
    assert (rolled.health, rolled.since_ms, rolled.points) == (Health.UNHEALTHY, 300, 3.5)
    observe = roll_up([N], opened[:2], PODS4)
    assert (observe.health, observe.since_ms) == (Health.OBSERVE, 100)
    # The order anomalies are given in does not matter (a restarted API reads the topics in another order).
    for order in itertools.permutations(opened):
        assert roll_up([N], list(order), PODS4) == rolled


def test_healthy_since_the_latest_resolution() -> None:
    assert roll_up([N], [], {}, last_resolved_ms=5000).since_ms == 5000
    assert roll_up([N], [], {}).since_ms is None
    # learning series say since when they learn; a service past learning does not take it
    assert roll_up([N, LEARNING], [], {}, 5000, learning_since=[100]).since_ms == 5000
    assert roll_up([N, LEARNING], [], {}, learning_since=[100]).since_ms is None


def test_learning_since_the_earliest_of_its_learning_series_when_all_of_them_say() -> None:
    rolled = roll_up([LEARNING] * 3, [], {}, 5000, learning_since=[300, 100, 200])
    assert (rolled.health, rolled.since_ms) == (Health.LEARNING, 100)  # not the last resolution
    assert roll_up([LEARNING], [], None, learning_since=[42]).since_ms == 42  # an instance: the same rule
    # one series restored from a checkpoint older than the field does not say: the earliest is not known
    assert roll_up([LEARNING] * 2, [], {}, learning_since=[100, None]).since_ms is None
    assert roll_up([LEARNING], [], {}, last_resolved_ms=5000).since_ms is None  # none said
    assert roll_up([], [], {}).since_ms is None  # nothing seen yet


@pytest.mark.parametrize("module", [health_module, status_module])
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.failed == 0
    assert result.attempted > 0
