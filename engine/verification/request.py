"""A verification request (the API's JSON and ``vigil verify``'s options) and the plan made from it:
per metric, the PromQL for baseline and canary, and how it is judged.

Everything is checked here, once: unknown fields, invalid values, an unknown source or pack are a
:class:`~engine.errors.ConfigError` naming the field (the API answers 400 with it).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.config import Direction, MetricType, PackName, Sensitivity, VigilConfig
from engine.errors import ConfigError, first_error
from engine.packs import load_pack, render
from engine.verification.judge import ALPHA, MetricSpec, Settings

NAME = r"^[A-Za-z_:][A-Za-z0-9_:.-]{0,199}$"
_DURATION = re.compile(r"^(\d{1,6})(ms|s|m|h)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
#: ``[1m]`` and the like in a query: the widest is how far apart two steps must be to be independent.
_RANGE = re.compile(r"\[(\d{1,6})(ms|s|m|h|d)(?::[^\]]*)?\]")


def duration_s(text: str) -> float:
    """Prometheus-style duration.

    >>> duration_s("15s"), duration_s("2m"), duration_s("500ms")
    (15.0, 120.0, 0.5)
    """
    found = _DURATION.fullmatch(text.strip())
    if not found:
        raise ValueError(f"not a duration like 15s, 1m or 1h: {text!r:.40}")
    return int(found.group(1)) * _UNIT_S[found.group(2)]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MetricRequest(Frozen):
    name: str = Field(pattern=NAME)
    query: str = Field(min_length=1, max_length=16_384)
    instance_query: str | None = Field(default=None, min_length=1, max_length=16_384)
    numerator: str | None = Field(default=None, min_length=1, max_length=16_384)
    denominator: str | None = Field(default=None, min_length=1, max_length=16_384)
    direction: Direction | None = None
    type: MetricType | None = None
    critical: bool = False
    weight: float = Field(default=1.0, gt=0, le=1000)
    min_abs_deviation: float | None = Field(default=None, ge=0)
    min_rel_deviation: float | None = Field(default=None, ge=0, le=100)

    @model_validator(mode="after")
    def _both_counts(self) -> MetricRequest:
        if (self.numerator is None) != (self.denominator is None):
            raise ValueError("give numerator and denominator together")
        return self


def selector(text: str) -> str:
    """Label matchers as ``{{selector}}`` takes them: each led by a comma.

    >>> selector('version="v42"'), selector('{version="v42", track="canary"}')
    (',version="v42"', ',version="v42", track="canary"')
    """
    inner = text.strip()
    if inner.startswith("{") and inner.endswith("}"):
        inner = inner[1:-1].strip()
    inner = inner.strip(",").strip()
    if not inner or "{" in inner or "}" in inner or "\n" in inner:
        raise ValueError('label matchers like version="v42" (without braces inside)')
    return "," + inner


class Request(Frozen):
    """``POST /api/v1/verifications`` and ``vigil verify``; see the README for each field's default."""

    service: str = Field(min_length=1, max_length=4096)
    type: Literal["canary", "before_after", "load_test"] = "canary"
    source: str | None = Field(default=None, max_length=64)
    #: canary: the two groups' matchers (required)
    baseline: str | None = Field(default=None, min_length=1, max_length=4096)
    canary: str | None = Field(default=None, min_length=1, max_length=4096)
    #: before_after and load_test: the matchers of the service's series (required)
    selector: str | None = Field(default=None, min_length=1, max_length=4096)
    #: before_after: when the new version rolled out (required); ``start`` defaults to it
    deployed_at: datetime.datetime | None = None
    #: load_test: where the earlier run's window starts; it is as long as this run. Or ``baseline_run``:
    #: the id or key of an earlier verification, whose start the API looks up (one of the two is required)
    baseline_start: datetime.datetime | None = None
    baseline_run: str | None = Field(default=None, min_length=1, max_length=200)
    instance_label: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,199}$")
    metrics: tuple[MetricRequest, ...] = Field(default=(), max_length=500)
    pack: tuple[PackName, ...] = Field(default=(), max_length=5)
    start: datetime.datetime | None = None
    end: datetime.datetime | None = None
    duration: str | None = None
    step: str = "15s"
    sensitivity: Sensitivity = Sensitivity.MEDIUM
    fail_fast: bool = True
    min_samples: int = Field(default=20, ge=1, le=100_000)
    pass_score: float | None = Field(default=None, ge=0, le=100)
    marginal_score: float | None = Field(default=None, ge=0, le=100)
    key: str | None = Field(default=None, min_length=1, max_length=200)
    #: canary: the ML view also learns the baseline over this long before ``start`` (off by default)
    ml_history: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _start_at_the_deploy(cls, doc: object) -> object:
        if (
            isinstance(doc, dict)
            and doc.get("type") == "before_after"
            and doc.get("start") is None
            and doc.get("deployed_at") is not None
        ):
            return {**doc, "start": doc["deployed_at"]}
        return doc

    @field_validator("baseline", "canary", "selector")
    @classmethod
    def _matchers(cls, value: str | None) -> str | None:
        if value is not None:
            selector(value)
        return value

    @field_validator("step", "duration", "ml_history")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None and not 1 <= duration_s(value) <= 86_400 * 7:
            raise ValueError("must be between 1s and 7 days")
        return value

    @field_validator("start", "end", "deployed_at", "baseline_start")
    @classmethod
    def _zoned(cls, value: datetime.datetime | None) -> datetime.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("needs a time zone (Z or +hh:mm)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Request:
        if not self.metrics and not self.pack:
            raise ValueError("give metrics and/or pack: nothing to verify")
        self._fields_of_the_type()
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"metric names repeat: {names}")
        if self.end is not None and self.start is None:
            raise ValueError("end needs start")
        if self.start and self.end and self.end <= self.start:
            raise ValueError("end is not after start")
        if self.end is None and self.duration is None:
            raise ValueError("give end (a replay of a past window) or duration (live)")
        if self.marginal_score is not None and self.pass_score is None:
            raise ValueError("marginal_score needs pass_score")
        return self

    def _fields_of_the_type(self) -> None:
        needs: tuple[str, ...] = {
            "canary": ("baseline", "canary"),
            # live, deployed_at defaults to start, and start to the time the verification is created
            "before_after": ("selector", "deployed_at") if self.end is not None else ("selector",),
            "load_test": ("selector",),
        }[self.type]
        for name in needs:
            if getattr(self, name) is None:
                raise ValueError(f"type {self.type} needs {name}")
        if self.type == "load_test":
            if (self.baseline_start is None) == (self.baseline_run is None):
                raise ValueError("type load_test needs one of baseline_start and baseline_run")
            needs = ("selector", "baseline_start", "baseline_run")
        allowed = ("selector", "deployed_at") if self.type == "before_after" else needs
        for name in ("baseline", "canary", "selector", "deployed_at", "baseline_start", "baseline_run"):
            if name not in allowed and getattr(self, name) is not None:
                raise ValueError(f"{name} is not a field of type {self.type}")
        if self.ml_history is not None and self.type != "canary":
            raise ValueError(f"ml_history is not a field of type {self.type} (it learns the window before)")
        if self.deployed_at is not None and self.start is not None and self.start < self.deployed_at:
            raise ValueError("start is before deployed_at: the window judged follows the deploy")
        if self.baseline_start is not None and self.start is not None and self.baseline_start >= self.start:
            raise ValueError("baseline_start is not before start: the earlier run comes first")

    def pinned(self, now: datetime.datetime) -> Request:
        """A live request with what moves fixed at ``now`` (its creation): ``start`` and, for
        ``before_after``, ``deployed_at`` (= ``start``). A replica taking the job over then judges the same
        window, and the references of a before/after stay where they were. A replay is returned as is.

        >>> at = datetime.datetime(2026, 12, 2, 10, 30, tzinfo=datetime.UTC)
        >>> live = parse_request({"service": "a", "type": "before_after", "selector": 'job="a"',
        ...                       "pack": ["http"], "duration": "30m"}).pinned(at)
        >>> live.start == live.deployed_at == at
        True
        """
        if self.end is not None:
            return self
        update: dict[str, datetime.datetime] = {}
        if self.start is None:
            update["start"] = now
        if self.type == "before_after" and self.deployed_at is None:
            update["deployed_at"] = self.start or now
        return parse_request(self.model_dump() | update) if update else self  # checked again, as pinned

    @property
    def step_s(self) -> float:
        return duration_s(self.step)

    @property
    def length_ms(self) -> int:
        """How long the judged window is."""
        assert self.start is not None  # checked
        if self.end is not None:
            return round((self.end - self.start).total_seconds() * 1000)
        return round(duration_s(self.duration or "0s") * 1000)

    def references(self) -> tuple[tuple[str, int], ...]:
        """The windows the judged one is compared with, as (name, how far back in ms); none for canary.

        before_after: the window just before the deploy, the same hours a day and a week earlier;
        load_test: the earlier run's window."""
        if self.type == "before_after":
            assert self.deployed_at is not None
            assert self.start is not None
            before = round((self.start - self.deployed_at).total_seconds() * 1000) + self.length_ms
            return (
                ("before the deploy", before),
                ("a day earlier", 86_400_000),
                ("a week earlier", 604_800_000),
            )
        if self.type == "load_test":
            assert self.baseline_start is not None
            assert self.start is not None
            return (("the earlier run", round((self.start - self.baseline_start).total_seconds() * 1000)),)
        return ()


def parse_request(doc: object) -> Request:
    """A request from decoded JSON; :class:`ConfigError` with the field and what was wrong."""
    try:
        return Request.model_validate(doc)
    except ValidationError as exc:
        raise first_error(exc, "request") from None


@dataclass(frozen=True, slots=True)
class MetricPlan:
    """One metric's queries, rendered for baseline and canary: ``queries[role][kind]``."""

    spec: MetricSpec
    queries: dict[str, dict[str, str]]


@dataclass(frozen=True, slots=True)
class Plan:
    request: Request
    source: str
    instance_label: str
    metrics: tuple[MetricPlan, ...]
    settings: Settings


def fill(template: str, matchers: str, *, service_label: str, service: str, instance_label: str) -> str:
    """``{{selector}}`` filled with comma-led matchers, wherever it stands in a matcher list.

    >>> fill('up{job="a",{{selector}},code="5"}', ',v="2"', service_label="job", service="a",
    ...      instance_label="pod")
    'up{job="a",v="2",code="5"}'
    >>> fill('up{ {{selector}} }', ',v="2"', service_label="job", service="a", instance_label="pod")
    'up{ v="2" }'
    """
    bare = matchers[1:]
    text = re.sub(r"(\{\s*)\{\{selector\}\}", lambda m: m.group(1) + bare, template)
    text = re.sub(r",\s*\{\{selector\}\}", lambda _: matchers, text)
    text = text.replace("{{selector}}", matchers)
    return render(text, service_label=service_label, service=service, instance_label=instance_label)


def split_ratio(query: str) -> tuple[str, str] | None:
    """``A / B`` at the top level (outside brackets, braces, parentheses and strings) as (A, B).

    >>> split_ratio('sum by (pod) (rate(e{code=~"5.."}[1m])) / sum by (pod) (rate(r[1m]))')
    ('sum by (pod) (rate(e{code=~"5.."}[1m]))', 'sum by (pod) (rate(r[1m]))')
    >>> split_ratio('a / b / c'), split_ratio('(a / b)'), split_ratio('a{x="/"}')
    (None, None, None)
    """
    depth, quote, cuts = 0, "", []
    for i, ch in enumerate(query):
        if quote:
            if ch == quote and query[i - 1] != "\\":
                quote = ""
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "/" and depth == 0:
            cuts.append(i)
    if len(cuts) != 1:
        return None
    left, right = query[: cuts[0]].strip(), query[cuts[0] + 1 :].strip()
    if not left or not right or right.startswith(("on", "ignoring", "bool", "group_")):
        return None
    return left, right


def stride_of(queries: list[str], step_s: float) -> int:
    """Steps between independent values: the widest range selector over the step.

    >>> stride_of(['rate(x[1m])', 'rate(y[30s])'], 15.0), stride_of(['up'], 15.0)
    (4, 1)
    """
    widest = max(
        (
            int(m.group(1)) * (86_400 if m.group(2) == "d" else _UNIT_S[m.group(2)])
            for q in queries
            for m in _RANGE.finditer(q)
        ),
        default=0.0,
    )
    return max(1, math.ceil(widest / step_s))


def plan(request: Request, config: VigilConfig, *, now: datetime.datetime | None = None) -> Plan:
    """The queries and judging rules of ``request`` under ``config``; ConfigError for an unknown source.
    A live request is pinned at ``now`` (default: the clock), see :meth:`Request.pinned`."""
    request = request.pinned(now or datetime.datetime.now(datetime.UTC))
    if request.baseline_run is not None:
        raise ConfigError(
            "baseline_run: an earlier verification is looked up by the API (vigil verify --api);"
            " give baseline_start here"
        )
    sources = config.poller.sources
    if not sources:
        raise ConfigError("poller.sources is empty: verification reads a Prometheus source")
    name = request.source or sources[0].name
    if name not in {s.name for s in sources}:
        raise ConfigError(f"source: no source named {name!r:.60}, have {[s.name for s in sources]}")
    instance_label = request.instance_label or config.labels.instance
    fill_args = {
        "service_label": config.labels.service,
        "service": request.service,
        "instance_label": instance_label,
    }
    if request.type == "canary":
        assert request.baseline is not None
        assert request.canary is not None
        roles = {"baseline": selector(request.baseline), "canary": selector(request.canary)}
    else:
        # the same series at other times: the reference windows are fetched from the canary queries
        assert request.selector is not None  # checked by Request
        roles = {"canary": selector(request.selector)}
    entries: list[tuple[MetricSpec, dict[str, str]]] = []
    for pack in request.pack:
        for entry in load_pack(pack):
            rule = config.rule_for(entry.name)
            spec = MetricSpec(
                entry.name,
                entry.direction,
                entry.type,
                counts=entry.numerator is not None,
                min_abs=rule.min_abs_deviation,
                min_rel=rule.min_rel_deviation,
            )
            entries.append((spec, entry.templates()))
    for m in request.metrics:
        rule = config.rule_for(m.name)
        kind = m.type or rule.type
        counted: tuple[str | None, str | None] = (m.numerator, m.denominator)
        if m.numerator is None and kind is MetricType.ERRORS:
            # an error ratio written as a plain A / B is judged as counts: its two sides are the counts
            counted = split_ratio(m.query) or (None, None)
        spec = MetricSpec(
            m.name,
            m.direction or rule.direction,
            kind,
            counts=counted[0] is not None,
            critical=m.critical,
            weight=m.weight,
            min_abs=rule.min_abs_deviation if m.min_abs_deviation is None else m.min_abs_deviation,
            min_rel=rule.min_rel_deviation if m.min_rel_deviation is None else m.min_rel_deviation,
        )
        templates = {"query": m.query}
        if m.instance_query is not None:
            templates["instance_query"] = m.instance_query
        numerator, denominator = counted
        if numerator is not None and denominator is not None:
            templates["numerator"], templates["denominator"] = numerator, denominator
        entries.append((spec, templates))
    names = [spec.name for spec, _ in entries]
    if len(set(names)) != len(names):
        raise ConfigError(f"metrics: names repeat across metrics and packs: {sorted(names)}")
    metrics = tuple(
        MetricPlan(
            spec,
            {
                role: {k: fill(t, sel, **fill_args) for k, t in templates.items()}
                for role, sel in roles.items()
            },
        )
        for spec, templates in entries
    )
    if request.type != "canary":
        # pods change with a deploy: there is no pod to pair with an earlier one, so aggregates only
        metrics = tuple(
            MetricPlan(
                m.spec,
                {
                    r: {k: q for k, q in qs.items() if not k.startswith("instance_")}
                    for r, qs in m.queries.items()
                },
            )
            for m in metrics
        )
    for one in metrics:  # per-instance counts, when the instance query is a plain A / B
        for queries in one.queries.values():
            parts = split_ratio(queries.get("instance_query", "")) if one.spec.counts else None
            if parts is not None:
                queries["instance_numerator"], queries["instance_denominator"] = parts
    # each metric's stride from its own range selectors: a [5m] elsewhere does not slow an http metric
    metrics = tuple(
        MetricPlan(
            dataclasses.replace(m.spec, stride=stride_of(list(m.queries["canary"].values()), request.step_s)),
            m.queries,
        )
        for m in metrics
    )
    settings = Settings(
        alpha=ALPHA[request.sensitivity],
        min_samples=request.min_samples,
        step_s=request.step_s,
        pass_score=request.pass_score,
        marginal_score=request.marginal_score,
    )
    return Plan(request, name, instance_label, metrics, settings)
