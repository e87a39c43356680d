"""The judge: canary against baseline, one look per step, a verdict that holds under every look.

Per metric, each step gives the baseline's and the canary's value (the same query under two selectors),
so the two are compared *paired in time*: the difference ``d = canary - baseline`` cancels the load both
share. A metric is ``high`` once the sign e-process rejects "median d <= tau", ``low`` once it rejects
"median d >= -tau", where ``tau = max(min_abs, min_rel x |baseline median|)`` is the ignore threshold: a
shift smaller than that never fails however sure it is. A metric with numerator and denominator is judged
as counts by :class:`~engine.verification.sequential.RateTest` against the rate ratio ``1 + min_rel``.

The error budget ``alpha`` (from the sensitivity) is split Bonferroni-wise: half over the failing sides of
the aggregate metrics, half over those of the canary instances (all of it to the aggregates when there are
no instance series). Every test is anytime-valid, so the chance that a canary as good as its baseline ever
fails, however many steps are looked at, is at most ``alpha``, under the assumption that the paired
differences of successive steps are independent with median 0 (exchangeable canary and baseline).
"""

from __future__ import annotations

import bisect
import datetime
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from engine.config import Direction, MetricType, Sensitivity
from engine.verification.sequential import RateTest, sign_bound, sign_log_e
from engine.verification.statistics import mann_whitney

if TYPE_CHECKING:
    from engine.verification.ml import MLReport

ALPHA = {Sensitivity.LOW: 0.001, Sensitivity.MEDIUM: 0.01, Sensitivity.HIGH: 0.05}


class Result(StrEnum):
    PASS = "pass"  # noqa: S105 (a verdict, not a password)
    HIGH = "high"
    LOW = "low"
    NODATA = "nodata"


class Health(StrEnum):
    HEALTHY = "healthy"
    OBSERVE = "observe"
    UNHEALTHY = "unhealthy"


class Outcome(StrEnum):
    PASS = "pass"  # noqa: S105 (a verdict, not a password)
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """How one metric is judged; ``counts``: its steps carry numerator and denominator."""

    name: str
    direction: Direction = Direction.BOTH
    type: MetricType = MetricType.CUSTOM
    counts: bool = False
    critical: bool = False
    weight: float = 1.0
    min_abs: float = 0.0
    min_rel: float = 0.05
    #: the sign tests take every stride-th step: values of rate(x[1m]) 15 s apart share most of their
    #: window, so only those a window apart count as independent (counts need no thinning: see RateTest).
    stride: int = 1

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ValueError(f"stride must be positive, got {self.stride}")

    @property
    def bad_sides(self) -> tuple[Result, ...]:
        return {
            Direction.HIGHER: (Result.HIGH,),
            Direction.LOWER: (Result.LOW,),
            Direction.BOTH: (Result.HIGH, Result.LOW),
        }[self.direction]


@dataclass(frozen=True, slots=True)
class Settings:
    """``pass_score``/``marginal_score`` (0-100): Kayenta's weighted scoring, off when None."""

    alpha: float = 0.01
    min_samples: int = 30
    step_s: float = 15.0
    pass_score: float | None = None
    marginal_score: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.min_samples < 1 or self.step_s <= 0:
            raise ValueError("min_samples and step_s must be positive")


@dataclass(frozen=True, slots=True)
class Counts:
    """Events and traffic, both per second (``rate()`` values) at one step."""

    events: float
    traffic: float


@dataclass(frozen=True, slots=True)
class Observation:
    """One metric at one step; None where the query gave nothing (or NaN, as 0/0 with no traffic)."""

    baseline: float | None = None
    canary: float | None = None
    baseline_counts: Counts | None = None
    canary_counts: Counts | None = None
    baseline_instances: Mapping[str, float] = field(default_factory=dict)
    canary_instances: Mapping[str, float] = field(default_factory=dict)
    baseline_instance_counts: Mapping[str, Counts] = field(default_factory=dict)
    canary_instance_counts: Mapping[str, Counts] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MetricReport:
    name: str
    result: Result
    regression: bool
    samples: int
    threshold: float
    baseline_median: float | None = None
    canary_median: float | None = None
    shift_low: float | None = None
    shift_high: float | None = None
    e_value: float = 1.0
    auc: float | None = None
    hl_shift: float | None = None
    p_fixed: float | None = None
    baseline_rate: float | None = None
    canary_rate: float | None = None
    #: the ML view (evidence only, never part of the verdict): :mod:`engine.verification.ml`
    ml: MLReport | None = None


@dataclass(frozen=True, slots=True)
class InstanceReport:
    instance: str
    role: str
    health: Health
    metrics: Mapping[str, Result]


@dataclass(frozen=True, slots=True)
class Verdict:
    """``outcome`` None while undecided; ``decided_at_ms`` the metric time it became final."""

    outcome: Outcome | None
    final: bool
    reason: str
    score: float | None
    decided_at_ms: int | None
    steps: int
    metrics: tuple[MetricReport, ...]
    instances: tuple[InstanceReport, ...]
    missing: tuple[str, ...]


def clock(ms: int) -> str:
    """
    >>> clock(1796205600000)
    '2026-12-02T10:00:00Z'
    """
    when = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


class Paired:
    """The sorted paired differences of one series, and the sorted baseline values for the median."""

    __slots__ = ("base", "diffs")

    def __init__(self) -> None:
        self.diffs: list[float] = []
        self.base: list[float] = []

    def add(self, canary: float, baseline: float) -> None:
        bisect.insort(self.diffs, canary - baseline)
        bisect.insort(self.base, baseline)

    def threshold(self, spec: MetricSpec) -> float:
        level = abs(self.base[len(self.base) // 2]) if self.base else 0.0
        return max(spec.min_abs, spec.min_rel * level)

    def log_e(self, side: Result, tau: float) -> float:
        """The sign e-process against "no shift beyond tau" on ``side``."""
        d, n = self.diffs, len(self.diffs)
        if side is Result.HIGH:
            lo, hi = bisect.bisect_left(d, tau), bisect.bisect_right(d, tau)
            return sign_log_e(n - hi, n - (hi - lo))
        lo, hi = bisect.bisect_left(d, -tau), bisect.bisect_right(d, -tau)
        return sign_log_e(lo, n - (hi - lo))


class CountState:
    """Counts of the canary (or one canary instance) against the baseline: both sides' rate tests."""

    __slots__ = ("min_abs", "rates", "steps", "sums")

    def __init__(self, spec: MetricSpec) -> None:
        theta = 1 + spec.min_rel
        self.min_abs = spec.min_abs
        self.rates = {
            Result.HIGH: RateTest(theta, higher=True),
            Result.LOW: RateTest(1 / theta, higher=False),
        }
        self.sums = [0.0, 0.0, 0.0, 0.0]  # canary events, canary traffic, baseline events, baseline traffic
        self.steps = 0

    def add(self, canary: Counts, baseline: Counts, step_s: float) -> None:
        if canary.traffic <= 0 or baseline.traffic <= 0:
            return
        c, b = canary, baseline
        for test in self.rates.values():
            test.add(c.events * step_s, c.traffic * step_s, b.events * step_s, b.traffic * step_s)
        for i, v in enumerate((c.events, c.traffic, b.events, b.traffic)):
            self.sums[i] += v * step_s
        self.steps += 1

    def log_e(self, side: Result) -> float:
        """The rate test's evidence, 0 while the rate difference is within ``min_abs`` (this only removes
        rejections, so the guarantee stays)."""
        ce, ct, be, bt = self.sums
        if ct <= 0 or bt <= 0:
            return 0.0
        diff = ce / ct - be / bt
        beyond = diff > self.min_abs if side is Result.HIGH else -diff > self.min_abs
        return self.rates[side].log_e if beyond else 0.0

    def rates_seen(self) -> tuple[float | None, float | None]:
        """(baseline rate, canary rate) so far."""
        ce, ct, be, bt = self.sums
        return (be / bt if bt > 0 else None), (ce / ct if ct > 0 else None)


class MetricState:
    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self.paired = Paired()
        self.pooled = Paired()  # canary pod i against baseline pod i, pods sorted by name
        self.canary: list[float] = []
        self.baseline: list[float] = []
        self.counts = CountState(spec)
        self.paired_steps = 0
        self.baseline_steps = 0
        self.instances: dict[str, Paired] = {}
        self.instance_counts: dict[str, CountState] = {}

    @property
    def samples(self) -> int:
        """Steps with data on both sides (all of them, also those the stride leaves out)."""
        return self.counts.steps if self.spec.counts else self.paired_steps

    def add(self, seen: Observation, step_s: float, *, independent: bool = True) -> None:
        """One step; ``independent``: this step also feeds the sign tests (see ``MetricSpec.stride``)."""
        if seen.baseline is not None:
            self.baseline_steps += 1
        if seen.canary is not None and seen.baseline is not None:
            self.paired_steps += 1
            if independent:
                self.paired.add(seen.canary, seen.baseline)
            self.canary.append(seen.canary)
            self.baseline.append(seen.baseline)
        if self.spec.counts and seen.canary_counts and seen.baseline_counts:
            self.counts.add(seen.canary_counts, seen.baseline_counts, step_s)
        if self.spec.counts and seen.canary_instance_counts and seen.baseline_instance_counts:
            # each canary instance against all the baseline's events and traffic
            base = seen.baseline_instance_counts.values()
            reference = Counts(sum(c.events for c in base), sum(c.traffic for c in base))
            for name, own in seen.canary_instance_counts.items():
                self.instance_counts.setdefault(name, CountState(self.spec)).add(own, reference, step_s)
        elif seen.canary_instances and seen.baseline_instances and independent:
            reference_value = statistics.median(seen.baseline_instances.values())
            for name, value in seen.canary_instances.items():
                self.instances.setdefault(name, Paired()).add(value, reference_value)
            pods = sorted(seen.canary_instances.items()), sorted(seen.baseline_instances.items())
            for (_, canary_value), (_, base_value) in zip(*pods, strict=False):
                self.pooled.add(canary_value, base_value)

    @property
    def evidence(self) -> Paired:
        """What the sign test of the metric reads: pod pairs when there are instance series (independent
        given the load they share, so k pairs a step give k signs), else the aggregate's difference."""
        return self.pooled if self.pooled.diffs else self.paired

    def log_e(self, side: Result) -> float:
        if self.spec.counts:
            return self.counts.log_e(side)
        return self.evidence.log_e(side, self.evidence.threshold(self.spec))

    def instance_names(self) -> set[str]:
        return set(self.instances) | set(self.instance_counts)

    def instance_log_e(self, name: str, side: Result) -> float | None:
        """An instance's evidence on ``side``; None when it has no data for this metric."""
        if name in self.instance_counts:
            return self.instance_counts[name].log_e(side)
        paired = self.instances.get(name)
        return None if paired is None else paired.log_e(side, paired.threshold(self.spec))


class Judge:
    """Feed it one step at a time with :meth:`look`; each look returns the verdict so far."""

    def __init__(self, specs: Sequence[MetricSpec], settings: Settings | None = None) -> None:
        if not specs:
            raise ValueError("nothing to judge: no metrics")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"metric names repeat: {names}")
        self.settings = settings or Settings()
        self.states = {s.name: MetricState(s) for s in specs}
        self.steps = 0
        self.first_ms: int | None = None
        self.last_ms: int | None = None
        self.no_traffic_since: int | None = None
        self.failed: Verdict | None = None
        self._sides = sum(len(s.bad_sides) for s in specs)

    # --- the error budget ---------------------------------------------------------------------------
    def _instances_seen(self) -> set[str]:
        return {name for state in self.states.values() for name in state.instance_names()}

    def log_threshold(self) -> float:
        """log(1/alpha) of one aggregate test."""
        alpha = self.settings.alpha / (2 if self._instances_seen() else 1)
        return math.log(self._sides / alpha)

    def instance_log_threshold(self) -> float:
        count = max(1, len(self._instances_seen()))
        return math.log(self._sides * count * 2 / self.settings.alpha)

    # --- looking -------------------------------------------------------------------------------------
    def _has_traffic(self, seen: Mapping[str, Observation]) -> bool:
        indicators: list[float | None] = []
        for name, state in self.states.items():
            one = seen.get(name)
            if state.spec.counts:
                indicators.append(one.canary_counts.traffic if one and one.canary_counts else None)
            elif state.spec.type is MetricType.THROUGHPUT:
                indicators.append(one.canary if one else None)
        if not indicators:
            return any(o.canary is not None or o.canary_instances for o in seen.values())
        return any(v is not None and v > 0 for v in indicators)

    def look(self, at_ms: int, seen: Mapping[str, Observation]) -> Outcome | None:
        """Reveal one step (metric time ``at_ms``); FAIL once decided, else None (a cheap check: the full
        report is :meth:`verdict`). A step without canary traffic is not judged."""
        if self.first_ms is None:
            self.first_ms = at_ms
        self.last_ms = at_ms
        self.steps += 1
        if not self._has_traffic(seen):
            if self.no_traffic_since is None:
                self.no_traffic_since = at_ms
            return None
        self.no_traffic_since = None
        index = round((at_ms - self.first_ms) / (self.settings.step_s * 1000))
        for name, state in self.states.items():
            if name in seen:
                state.add(seen[name], self.settings.step_s, independent=index % state.spec.stride == 0)
        if self.failed is not None:
            return Outcome.FAIL  # final, but the evidence keeps growing (e.g. which pod is bad)
        if self._regressed():
            verdict = self.verdict(final=False)
            if verdict.outcome is Outcome.FAIL:  # with scoring, only a critical metric fails early
                self.failed = verdict
                return Outcome.FAIL
        return None

    def _regressed(self) -> bool:
        limit, per_instance = self.log_threshold(), self.instance_log_threshold()
        for state in self.states.values():
            sides = state.spec.bad_sides
            if state.samples and any(state.log_e(side) >= limit for side in sides):
                return True
            for name in state.instance_names():
                if any((state.instance_log_e(name, side) or 0.0) >= per_instance for side in sides):
                    return True
        return False

    # --- the verdict ---------------------------------------------------------------------------------
    def _report(self, state: MetricState, limit: float) -> MetricReport:
        spec, paired = state.spec, state.evidence
        if state.samples == 0:
            return MetricReport(spec.name, Result.NODATA, False, 0, paired.threshold(spec))
        high, low = state.log_e(Result.HIGH), state.log_e(Result.LOW)
        result = Result.HIGH if high >= limit else Result.LOW if low >= limit else Result.PASS
        two = mann_whitney(state.canary, state.baseline)
        base_rate, canary_rate = state.counts.rates_seen() if spec.counts else (None, None)
        return MetricReport(
            name=spec.name,
            result=result,
            regression=result in spec.bad_sides,
            samples=state.samples,
            threshold=paired.threshold(spec),
            baseline_median=statistics.median(state.baseline) if state.baseline else None,
            canary_median=statistics.median(state.canary) if state.canary else None,
            shift_low=sign_bound(paired.diffs, limit, lower=True),
            shift_high=sign_bound(paired.diffs, limit, lower=False),
            e_value=math.exp(min(max(high, low), 700.0)),
            auc=two.auc if two else None,
            hl_shift=two.hl_shift if two else None,
            p_fixed=two.p_value if two else None,
            baseline_rate=base_rate,
            canary_rate=canary_rate,
        )

    def _instances(self) -> list[InstanceReport]:
        limit = self.instance_log_threshold()
        names = sorted(self._instances_seen())
        out = []
        for name in names:
            health, results = Health.HEALTHY, {}
            for state in self.states.values():
                high, low = state.instance_log_e(name, Result.HIGH), state.instance_log_e(name, Result.LOW)
                if high is None or low is None:
                    continue
                es = {Result.HIGH: high, Result.LOW: low}
                result = next((s for s, e in es.items() if e >= limit), Result.PASS)
                results[state.spec.name] = result
                worst = max(es[s] for s in state.spec.bad_sides)
                if result in state.spec.bad_sides:
                    health = Health.UNHEALTHY
                elif worst >= limit / 2 and health is Health.HEALTHY:
                    health = Health.OBSERVE
            out.append(InstanceReport(name, "canary", health, results))
        return out

    def verdict(self, *, final: bool = True) -> Verdict:
        """The verdict so far; ``final=True`` at the end of the run also decides pass or inconclusive.

        A fail is final at the step it was decided; later steps only add evidence to its report."""
        limit = self.log_threshold()
        reports = [self._report(s, limit) for s in self.states.values()]
        instances = self._instances()
        judged = [(r, self.states[r.name].spec) for r in reports if r.result is not Result.NODATA]
        total = sum(spec.weight for _, spec in judged)
        score = 100 * sum(spec.weight for r, spec in judged if not r.regression) / total if total else None
        # A metric neither side has (a pack's latency on a service without the histogram) is not judged;
        # one the baseline has and the canary lacks, or too few steps, is data missing.
        absent = [r.name for r in reports if self.states[r.name].baseline_steps == 0 and r.samples == 0]
        missing = tuple(
            f"{r.name}: {r.samples} samples, need {self.settings.min_samples}"
            for r in reports
            if r.samples < self.settings.min_samples and r.name not in absent
        )
        if self.no_traffic_since is not None:
            missing = (f"no canary traffic since {clock(self.no_traffic_since)}", *missing)

        def done(outcome: Outcome | None, reason: str, is_final: bool) -> Verdict:
            if self.failed is not None:
                first = self.failed
                more = [f"{i.instance} unhealthy" for i in sick if i.instance not in first.reason]
                return Verdict(
                    outcome=Outcome.FAIL,
                    final=True,
                    reason="; ".join([first.reason, *more]),
                    score=score,
                    decided_at_ms=first.decided_at_ms,
                    steps=self.steps,
                    metrics=tuple(reports),
                    instances=tuple(instances),
                    missing=missing,
                )
            return Verdict(
                outcome=outcome,
                final=is_final,
                reason=reason,
                score=score,
                decided_at_ms=self.last_ms if is_final else None,
                steps=self.steps,
                metrics=tuple(reports),
                instances=tuple(instances),
                missing=missing,
            )

        blamed = [r for r in reports if r.regression]
        sick = [i for i in instances if i.health is Health.UNHEALTHY]
        critical = [r for r, spec in judged if r.regression and spec.critical]
        scoring = self.settings.pass_score is not None
        if critical or (blamed and not scoring) or (sick and not scoring):
            parts = [f"{r.name} {r.result}" for r in (critical or blamed)]
            for i in sick:
                which = ", ".join(m for m, res in i.metrics.items() if res is not Result.PASS)
                parts.append(f"{i.instance} unhealthy ({which})")
            return done(Outcome.FAIL, "canary regressed: " + "; ".join(parts), True)
        if not final:
            return done(None, "still judging", False)
        if scoring and score is not None:
            marginal = self.settings.marginal_score or 0.0
            if score < marginal:
                return done(Outcome.FAIL, f"score {score:.0f} below the marginal score {marginal:g}", True)
            if score < (self.settings.pass_score or 0.0):
                return done(Outcome.INCONCLUSIVE, f"score {score:.0f} is marginal", True)
        if missing:
            return done(Outcome.INCONCLUSIVE, "not enough data: " + "; ".join(missing), True)
        reason = f"no regression beyond the ignore thresholds over {self.steps} steps"
        if absent:
            reason += f"; not judged (no data on either side): {', '.join(absent)}"
        return done(Outcome.PASS, reason, True)
