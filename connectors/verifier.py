"""Running a verification against a Prometheus source: each range fetched once, revealed step by step.

A replay (``start`` and ``end`` in the past) fetches every query over the whole window once and shows
the judge one step at a time, as a live run would have seen it, so a verdict never uses data from after
its ``decided_at``. A live run (``duration``, no ``end``) fetches the steps that became complete since
its last look every ``step``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from connectors.prometheus import PrometheusClient, RangeResult, Window, aligned
from engine.config import VigilConfig
from engine.errors import VigilError
from engine.verification import Counts, Judge, Observation, Outcome, Verdict
from engine.verification.compare import AgainstReferences
from engine.verification.ml import MLViews
from engine.verification.request import Plan, duration_s

#: how long after a step a live run waits before asking for it (Prometheus' scrape and rule lag)
LIVE_DELAY_S = 30.0

Progress = Callable[[int, int, Verdict | None], Awaitable[None] | None]


Values = dict[tuple[str, str], dict[int, float]]


@dataclass(slots=True)
class Fetched:
    """Per metric and query kind: ``values[metric][(role, kind)][t_ms]`` (aggregate) and
    ``instances[metric][role][t_ms][instance]``."""

    values: dict[str, Values] = field(default_factory=dict)
    instances: dict[str, dict[str, dict[int, dict[str, float]]]] = field(default_factory=dict)


def _one_series(result: RangeResult, what: str) -> dict[int, float]:
    if len(result.series) > 1:
        raise VigilError(
            f"{what}: gives {len(result.series)} series, needs one (aggregate it, e.g. sum(...))"
        )
    return dict(result.series[0].points) if result.series else {}


async def fetch(client: PrometheusClient, plan: Plan, window: Window) -> Fetched:
    """Every query of the plan over ``window``, once each (concurrently, within the source's limit)."""
    jobs: list[tuple[str, str, str, str]] = [
        (m.spec.name, role, kind, query)
        for m in plan.metrics
        for role, queries in m.queries.items()
        for kind, query in queries.items()
    ]
    answers = await asyncio.gather(
        *(client.query_range(q, window, name=f"{name} {role} {kind}") for name, role, kind, q in jobs)
    )
    out = Fetched()
    for (name, role, kind, _), result in zip(jobs, answers, strict=True):
        if kind.startswith("instance_"):
            per: dict[int, dict[str, float]] = out.instances.setdefault(name, {}).setdefault(
                f"{role} {kind}", {}
            )
            for series in result.series:
                instance = series.labels.get(plan.instance_label, "")
                for t, v in series.points:
                    per.setdefault(t, {})[instance] = v
        else:
            out.values.setdefault(name, {})[(role, kind)] = _one_series(
                result, f"metric {name} {role} {kind}"
            )
    return out


def _at(values: Values, role: str, kind: str, t: int) -> float | None:
    v = values.get((role, kind), {}).get(t)
    return v if v is not None and math.isfinite(v) else None


def _counts(values: Values, role: str, t: int) -> Counts | None:
    traffic = _at(values, role, "denominator", t)
    if traffic is None:
        return None
    return Counts(_at(values, role, "numerator", t) or 0.0, traffic)  # no error series: zero errors


def _instance_counts(events: dict[str, float], traffic: dict[str, float]) -> dict[str, Counts]:
    return {name: Counts(events.get(name, 0.0), t) for name, t in traffic.items()}


def observations(plan: Plan, fetched: Fetched, t: int) -> dict[str, Observation]:
    """What the judge sees of step ``t``."""
    seen = {}
    for m in plan.metrics:
        name = m.spec.name
        values = fetched.values.get(name, {})
        instances = fetched.instances.get(name, {})

        def of(
            role: str, kind: str, instances: dict[str, dict[int, dict[str, float]]] = instances
        ) -> dict[str, float]:
            return {
                k: v for k, v in instances.get(f"{role} {kind}", {}).get(t, {}).items() if math.isfinite(v)
            }

        seen[name] = Observation(
            baseline=_at(values, "baseline", "query", t),
            canary=_at(values, "canary", "query", t),
            baseline_counts=_counts(values, "baseline", t) if m.spec.counts else None,
            canary_counts=_counts(values, "canary", t) if m.spec.counts else None,
            baseline_instances=of("baseline", "instance_query"),
            canary_instances=of("canary", "instance_query"),
            baseline_instance_counts=_instance_counts(
                of("baseline", "instance_numerator"), of("baseline", "instance_denominator")
            ),
            canary_instance_counts=_instance_counts(
                of("canary", "instance_numerator"), of("canary", "instance_denominator")
            ),
        )
    return seen


async def fetch_against(client: PrometheusClient, plan: Plan, window: Window) -> dict[str, Fetched]:
    """For ``before_after``/``load_test``: per reference, the judged window's values as ``canary`` and the
    reference window's (the same queries ``offset`` earlier, moved onto the judged steps) as ``baseline``."""
    references = plan.request.references()
    shifted = [Window(window.start_ms - back, window.end_ms - back, window.step_ms) for _, back in references]
    now, *earlier = await asyncio.gather(
        fetch(client, plan, window), *(fetch(client, plan, w) for w in shifted)
    )
    out = {}
    for (name, back), then in zip(references, earlier, strict=True):
        merged = Fetched()
        for metric, values in now.values.items():
            moved = {
                ("baseline", kind): {t + back: v for t, v in points.items()}
                for (_, kind), points in then.values.get(metric, {}).items()
            }
            merged.values[metric] = {**values, **moved}
        out[name] = merged
    return out


def ml_views(config: VigilConfig, plan: Plan) -> MLViews:
    """The ML view of every metric: the detector of its ``rules`` entry (:mod:`engine.verification.ml`)."""
    specs = [m.spec for m in plan.metrics]
    rules = {spec.name: config.rule_for(spec.name) for spec in specs}
    return MLViews(specs, rules, config.detection, plan.request.sensitivity, plan.settings.min_samples)


def training_window(plan: Plan) -> Window | None:
    """For ``before_after``/``load_test``: the window the ML view learns before the first step, the first
    reference's (before the deploy, or the earlier run), as long as the judged window."""
    request = plan.request
    assert request.start is not None  # pinned by plan()
    _, back = request.references()[0]
    begin = round(request.start.timestamp() * 1000) - back
    return aligned(begin, begin + request.length_ms, round(plan.settings.step_s * 1000))


def history_window(plan: Plan) -> Window | None:
    """For a canary with ``ml_history``: the baseline's window the ML view learns before ``start``."""
    request = plan.request
    if request.ml_history is None:
        return None
    assert request.start is not None  # pinned by plan()
    step_ms = round(plan.settings.step_s * 1000)
    start = round(request.start.timestamp() * 1000)
    return aligned(start - round(duration_s(request.ml_history) * 1000), start - step_ms, step_ms)


async def learn_window(
    client: PrometheusClient, plan: Plan, views: MLViews, role: str, window: Window
) -> None:
    """The ML view learns every metric's ``role`` aggregate over ``window`` (one range query each)."""
    metrics = plan.metrics
    answers = await asyncio.gather(
        *(client.query_range(m.queries[role]["query"], window, name=f"{m.spec.name} ML") for m in metrics)
    )
    for m, result in zip(metrics, answers, strict=True):
        points = _one_series(result, f"metric {m.spec.name} {role} query (ML view)")
        for t in sorted(points):
            if math.isfinite(points[t]):
                views.learn(m.spec.name, t, points[t])


class _Compared:
    """A judge of the window against its references, fed like :class:`Judge` from :func:`fetch_against`."""

    def __init__(self, plan: Plan, views: MLViews) -> None:
        self.plan = plan
        self.views = views
        names = [name for name, _ in plan.request.references()]
        self.judge = AgainstReferences([m.spec for m in plan.metrics], plan.settings, names)
        self.trained = False

    async def fetch(self, client: PrometheusClient, window: Window) -> dict[str, Fetched]:
        if not self.trained:  # the ML view learns the whole reference window first (it lies before)
            self.trained = True
            reference = training_window(self.plan)
            if reference is not None:
                await learn_window(client, self.plan, self.views, "canary", reference)
        return await fetch_against(client, self.plan, window)

    def look(self, t: int, fetched: dict[str, Fetched]) -> Outcome | None:
        seen = {r: observations(self.plan, f, t) for r, f in fetched.items()}
        outcome = self.judge.look(t, seen)
        first = next(iter(self.judge.judges.values()))
        if first.no_traffic_since is None:  # a step without traffic is not judged, nor scored
            for name, one in next(iter(seen.values()), {}).items():
                self.views.score(name, t, one.canary)
        return outcome

    def verdict(self, *, final: bool = True) -> Verdict:
        return self.views.annotate(self.judge.verdict(final=final))


class _Simple:
    """A canary judge, with the same interface as :class:`_Compared`."""

    def __init__(self, plan: Plan, views: MLViews) -> None:
        self.plan = plan
        self.views = views
        self.judge = Judge([m.spec for m in plan.metrics], plan.settings)
        self.trained = False

    async def fetch(self, client: PrometheusClient, window: Window) -> Fetched:
        if not self.trained:  # with ml_history, the ML view learns the baseline before start first
            self.trained = True
            history = history_window(self.plan)
            if history is not None:
                await learn_window(client, self.plan, self.views, "baseline", history)
        return await fetch(client, self.plan, window)

    def look(self, t: int, fetched: Fetched) -> Outcome | None:
        seen = observations(self.plan, fetched, t)
        outcome = self.judge.look(t, seen)
        judged = self.judge.no_traffic_since is None  # a step without canary traffic is not judged
        for name, one in seen.items():
            self.views.learn(name, t, one.baseline)  # the baseline of this step first, then the canary
            if judged:
                self.views.score(name, t, one.canary)
        return outcome

    def verdict(self, *, final: bool = True) -> Verdict:
        return self.views.annotate(self.judge.verdict(final=final))


def _judge_for(config: VigilConfig, plan: Plan) -> _Simple | _Compared:
    views = ml_views(config, plan)
    return _Compared(plan, views) if plan.request.references() else _Simple(plan, views)


async def replay(
    config: VigilConfig, plan: Plan, *, progress: Progress | None = None, cancelled: Callable[[], bool] = bool
) -> Verdict:
    """Judge a past window as if live; stops at a fail when ``fail_fast``."""
    request = plan.request
    assert request.start is not None  # checked by Request
    assert request.end is not None
    step_ms = round(plan.settings.step_s * 1000)
    window = aligned(round(request.start.timestamp() * 1000), round(request.end.timestamp() * 1000), step_ms)
    if window is None:
        raise VigilError(f"no step of {request.step} falls between start and end")
    judge = _judge_for(config, plan)
    source = next(s for s in config.poller.sources if s.name == plan.source)
    async with PrometheusClient(source) as client:
        fetched: Any = await judge.fetch(client, window)
    steps = list(window.steps())
    for i, t in enumerate(steps):
        if cancelled():
            break
        outcome = judge.look(t, fetched)
        if progress is not None:
            done = progress(i + 1, len(steps), judge.verdict(final=False) if outcome else None)
            if done is not None:
                await done
        if outcome is Outcome.FAIL and request.fail_fast:
            break
    return judge.verdict(final=True)


async def live(
    config: VigilConfig, plan: Plan, *, progress: Progress | None = None, cancelled: Callable[[], bool] = bool
) -> Verdict:
    """Judge from now (or ``start``) for ``duration``, each step once it is ``LIVE_DELAY_S`` old."""
    request = plan.request
    assert request.duration is not None  # checked by Request
    step_ms = round(plan.settings.step_s * 1000)
    begin = round((request.start.timestamp() if request.start else time.time()) * 1000)
    begin = -(-begin // step_ms) * step_ms
    finish = begin + round(duration_s(request.duration) * 1000)
    total = (finish - begin) // step_ms + 1
    judge = _judge_for(config, plan)
    source = next(s for s in config.poller.sources if s.name == plan.source)
    next_ms, seen_steps = begin, 0
    async with PrometheusClient(source) as client:
        while next_ms <= finish and not cancelled():
            ready = min(finish, round((time.time() - LIVE_DELAY_S) * 1000))
            window = aligned(next_ms, ready, step_ms) if ready >= next_ms else None
            if window is None:
                await asyncio.sleep(min(plan.settings.step_s, 1.0))
                continue
            fetched: Any = await judge.fetch(client, window)
            for t in window.steps():
                seen_steps += 1
                outcome = judge.look(t, fetched)
                if progress is not None:
                    done = progress(seen_steps, total, judge.verdict(final=False) if outcome else None)
                    if done is not None:
                        await done
                if outcome is Outcome.FAIL and request.fail_fast:
                    return judge.verdict(final=True)
            next_ms = window.last_ms + step_ms
    return judge.verdict(final=True)


async def verify(
    config: VigilConfig, plan: Plan, *, progress: Progress | None = None, cancelled: Callable[[], bool] = bool
) -> Verdict:
    """A replay when the request has an end, else a live run; QueryError and VigilError propagate."""
    run = replay if plan.request.end is not None else live
    return await run(config, plan, progress=progress, cancelled=cancelled)
