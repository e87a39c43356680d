"""Vigil's configuration: YAML validated once at start-up into frozen objects.

Every value can be overridden from the environment: ``VIGIL_`` + the key path joined by ``__``, for example
``VIGIL_KAFKA__BOOTSTRAP_SERVERS=kafka:9092`` or ``VIGIL_RECEIVER__PORT=9301``. Secrets are ``SecretStr``
(never printed) and may also be read from files (``*_file`` keys).
"""

from __future__ import annotations

import re
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from engine.errors import ConfigError


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MetricType(StrEnum):
    ERRORS = "errors"
    LATENCY = "latency"
    THROUGHPUT = "throughput"
    SATURATION = "saturation"
    CUSTOM = "custom"


class Direction(StrEnum):
    """Which deviation is bad: only those raise anomalies."""

    HIGHER = "higher"
    LOWER = "lower"
    BOTH = "both"


class Sensitivity(StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class ProcessingGuarantee(StrEnum):
    AT_LEAST_ONCE = "at_least_once"
    EXACTLY_ONCE = "exactly_once"


EXACTLY_ONCE_REFUSED = (
    "exactly_once is not offered: it would run on Faust 0.15's Kafka transactions, which have open reports "
    "of duplicate and lost records and of crashed workers (faust-streaming issues 517, 440, 323, 177), and "
    "the embedded broker cannot do transactions at all; use at_least_once"
)


class Topics(Frozen):
    samples: str = "vigil.samples"
    verdicts: str = "vigil.verdicts"
    deadletter: str = "vigil.deadletter"
    #: compacted, keyed by metric family: remote-write metadata (types), read by every worker
    metadata: str = "vigil.metadata"
    #: compacted, keyed by (watch, query): the poller's watermark, the last step it emitted completely
    poller_state: str = "vigil.poller-state"
    #: compacted, keyed by verification id: the API's jobs (request, status, verdict)
    verifications: str = "vigil.verifications"
    #: compacted, keyed by deployment id: deployments of services (API, Flagger, Argo Rollouts), read by every
    #: worker so that anomalies opening soon after one carry it
    deployments: str = "vigil.deployments"
    #: compacted, keyed by series (service, metric, instance): the latest status of every series
    status: str = "vigil.status"


class KafkaConfig(Frozen):
    bootstrap_servers: str = Field(
        default="", description="host:port[,host:port]; empty starts the embedded broker"
    )
    partitions: int = Field(default=4, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1, le=16)
    topics: Topics = Topics()
    app_id: str = Field(default="vigil", pattern=r"^[A-Za-z0-9._-]+$")
    embedded_quirks: bool = Field(
        default=False,
        description="work around the embedded broker's bugs; set automatically for the embedded broker",
    )
    ack_timeout_s: float = Field(
        default=20.0,
        gt=0,
        le=300,
        description="wait this long for a send's acknowledgement, then resend; above the cluster's "
        "failover time (Kafka's broker.session.timeout.ms, 9 s by default, plus a controller election)",
    )
    session_timeout_s: float = Field(
        default=10.0,
        ge=6,
        le=300,
        description="a worker that stops heartbeating for this long leaves the consumer group and its "
        "partitions go to the others (Faust's default is 60 s); heartbeats every tenth of it",
    )
    processing_guarantee: ProcessingGuarantee = Field(
        default=ProcessingGuarantee.AT_LEAST_ONCE,
        description="at_least_once only: exactly_once is refused (see EXACTLY_ONCE_REFUSED)",
    )

    @field_validator("processing_guarantee")
    @classmethod
    def _no_exactly_once(cls, value: ProcessingGuarantee) -> ProcessingGuarantee:
        if value is ProcessingGuarantee.EXACTLY_ONCE:
            raise ValueError(EXACTLY_ONCE_REFUSED)
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_commit_interval(cls, data: Any) -> Any:
        if isinstance(data, dict) and "commit_interval_s" in data:
            raise ValueError(
                "commit_interval_s is gone: workers commit offsets with each checkpoint "
                "(detection.checkpoint_interval_s), so a crash never skips samples a checkpoint missed"
            )
        return data

    @property
    def embedded(self) -> bool:
        return not self.bootstrap_servers.strip()


class LabelsConfig(Frozen):
    service: str = Field(default="job", min_length=1)
    instance: str = Field(default="instance", min_length=1)
    default_service: str | None = Field(
        default=None, description="service for series without the service label"
    )


#: The built-in detectors, by name (the contract suite, the benchmark and the kill -9 test iterate these).
DetectorName = Literal["zscore", "seasonal", "forecast", "hst", "contextual", "ensemble"]
_PARAM = int | float | str | bool | None


class RiverDetector(Frozen):
    """Any River anomaly detector by name: ``{river: anomaly.HalfSpaceTrees, params: {n_trees: 10}}``."""

    river: str = Field(
        pattern=r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*\.[A-Za-z_][A-Za-z0-9_]*$",
        max_length=200,
        description="a path under the river package: module(s) then class, e.g. anomaly.HalfSpaceTrees",
    )
    params: dict[str, _PARAM] = Field(
        default_factory=dict, max_length=50, description="its constructor's keyword arguments (plain values)"
    )

    @model_validator(mode="after")
    def _resolvable(self) -> RiverDetector:
        from engine.river_detector import river_class  # imports river: only when a rule names one

        cls = river_class(self.river)
        try:
            cls(**self.params)
        except Exception as exc:  # noqa: BLE001 - any constructor error is a configuration error
            raise ValueError(
                f"river {self.river} does not take params {sorted(self.params)}: {exc}"
            ) from None
        return self


class MetricRule(Frozen):
    """Metric name regex → how to judge it. The first rule that matches wins."""

    match: str
    type: MetricType = MetricType.CUSTOM
    direction: Direction = Direction.BOTH
    detector: DetectorName | RiverDetector = Field(
        default="zscore",
        description="zscore: robust level and spread; seasonal: the same per hour of the day and, once two "
        "weeks are seen, per hour of the week where it differs (UTC); "
        "forecast: the residual of a level-and-trend forecast (Holt); hst: River's HalfSpaceTrees over "
        "the last 3 values, scaled online; contextual: how rare the step into the value's bin is after "
        "the last bins; ensemble: the larger of zscore's and contextual's raw scores; "
        "{river: PATH, params: {...}}: any River anomaly detector "
        "(needs detection.checkpoint_key_file)",
    )
    sensitivity: Sensitivity = Sensitivity.MEDIUM
    min_abs_deviation: float = Field(
        default=0.0, ge=0, description="deviations smaller than this never alarm"
    )
    min_rel_deviation: float = Field(
        default=0.05, ge=0, description="deviations below this share of the level never alarm"
    )
    new_extreme: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="a value beyond the series' earlier range by more than this share of it, and at least "
        "6 typical steps from its recent level, is an anomaly (0: off). Worth 14 NAB points, but it also "
        "opens on the records of strongly autocorrelated noise and on a seasonal series' first cycle",
    )

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return value

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(self.match)


#: The built-in rules; ``config/vigil.yaml`` spells out the same (a test keeps them identical).
DEFAULT_RULES = (
    MetricRule(
        match=r'.*(error|fail|5xx|code="5).*',
        type=MetricType.ERRORS,
        direction=Direction.HIGHER,
        min_rel_deviation=0.1,
    ),
    MetricRule(match=r".*(duration|latency|seconds).*", type=MetricType.LATENCY, direction=Direction.HIGHER),
    MetricRule(match=r".*(requests|ops|throughput).*", type=MetricType.THROUGHPUT, direction=Direction.BOTH),
    MetricRule(match=r".*", type=MetricType.CUSTOM, direction=Direction.BOTH, new_extreme=0.02),
)


class DetectionConfig(Frozen):
    warmup: int = Field(
        default=200, ge=2, description="samples a new series learns (state `learning`) before it may alarm"
    )
    half_life: float = Field(
        default=30.0,
        gt=1,
        description="samples after which an old observation weighs half in the detector's level",
    )
    spread_half_life: float = Field(
        default=300.0, gt=1, description="the same for the detector's spread (longer: spread changes slowly)"
    )
    open_after: int = Field(default=1, ge=1, description="consecutive anomalous samples that open an anomaly")
    resolve_after: int = Field(default=5, ge=1, description="consecutive normal samples that resolve it")
    rest_after_alarm: int = Field(
        default=100,
        ge=0,
        description="an open anomaly lasts at least this many samples: one page per episode",
    )
    suspect_weight: float = Field(
        default=0.5, ge=0, le=1, description="learning weight of samples while an anomaly is open"
    )
    checkpoint_interval_s: float = Field(default=30.0, gt=0)
    max_future_s: float = Field(default=600.0, ge=0, description="samples further in the future are refused")
    checkpoint_key_file: Path | None = Field(
        default=None,
        description="a file holding the HMAC key (at least 32 bytes) that signs the pickled checkpoints of "
        "River detectors named by a rule; unsigned or badly signed ones are refused, never unpickled",
    )
    seed: int = Field(
        default=0,
        ge=0,
        description="seed of randomised detectors (hst): identical input gives identical events",
    )
    idle_evict_s: float = Field(
        default=3600.0,
        gt=0,
        description="a sample key whose samples stopped this long ago (wall clock) leaves memory after its "
        "checkpoint; it is restored from the checkpoint when its samples come back",
    )
    max_keys: int = Field(
        default=200_000,
        ge=1,
        description="sample keys a worker holds in memory at most; beyond it the least recently used leaves "
        "memory (checkpointed first)",
    )
    deployment_window_s: float = Field(
        default=1800.0,
        ge=0,
        le=7 * 86_400,
        description="an anomaly that opens within this long (metric time) after a deployment of its service "
        "carries that deployment (`data.deployment`); 0 turns it off",
    )
    inherit_models: bool = Field(
        default=True,
        description="a new instance of a known metric starts from the model of the instance of it that has "
        "learned most (with no open anomaly), so new pods after a deployment are watched at once",
    )
    on_checkpoint_mismatch: Literal["fresh", "error"] = Field(
        default="fresh",
        description="a checkpoint of another format, River version or configuration: `fresh` starts the key "
        "anew; `error` keeps the checkpoint and dead-letters the key's samples naming the mismatch",
    )


class AuthConfig(Frozen):
    bearer_token: SecretStr | None = None
    bearer_token_file: Path | None = None
    basic_username: str | None = None
    basic_password: SecretStr | None = None
    basic_password_file: Path | None = None


class TLSConfig(Frozen):
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _both_or_none(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls needs both cert_file and key_file, or neither")
        return self


class ReceiverConfig(Frozen):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9201, ge=0, le=65535)
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="largest decompressed request body"
    )
    max_in_flight_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024, description="budget of bodies being handled"
    )
    max_labels: int = Field(default=64, ge=1)
    max_label_name_length: int = Field(default=256, ge=1)
    max_label_value_length: int = Field(default=4096, ge=1)
    quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)
    auth: AuthConfig = AuthConfig()
    tls: TLSConfig = TLSConfig()

    @field_validator("quantiles")
    @classmethod
    def _in_unit_interval(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(not 0 < q < 1 for q in value):
            raise ValueError("quantiles must be a non-empty list of numbers between 0 and 1 (exclusive)")
        return value


class SourceTLSConfig(Frozen):
    ca_file: Path | None = Field(default=None, description="CA bundle to verify the server with")
    cert_file: Path | None = Field(default=None, description="client certificate (mutual TLS)")
    key_file: Path | None = None
    insecure_skip_verify: bool = Field(default=False, description="do not verify the server (tests only)")

    @model_validator(mode="after")
    def _both_or_none(self) -> SourceTLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls needs both cert_file and key_file, or neither")
        return self


class SourceConfig(Frozen):
    """A Prometheus (or anything with its HTTP query API: Thanos, Mimir, VictoriaMetrics, Cortex).

    A secret is given at most one way: inline, ``*_file`` (read again on every request, so a rotated token
    is picked up) or ``*_env`` (the name of an environment variable).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    url: str = Field(description="base URL, e.g. http://127.0.0.1:9090 or https://mimir/prometheus")
    bearer_token: SecretStr | None = None
    bearer_token_file: Path | None = None
    bearer_token_env: str | None = None
    basic_username: str | None = None
    basic_password: SecretStr | None = None
    basic_password_file: Path | None = None
    basic_password_env: str | None = None
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="sent with every request, e.g. X-Scope-OrgID (values masked)"
    )
    tls: SourceTLSConfig = SourceTLSConfig()
    timeout_s: float = Field(default=30.0, gt=0, le=600, description="one request, answer included")
    max_concurrency: int = Field(default=4, ge=1, le=64, description="requests in flight to this source")
    retries: int = Field(default=5, ge=0, le=50, description="tries after the first on retriable errors")
    backoff_s: float = Field(default=0.5, gt=0, le=60, description="first retry delay, doubled each time")
    max_backoff_s: float = Field(default=30.0, gt=0, le=3600, description="longest delay between tries")
    max_response_bytes: int = Field(default=256 * 1024 * 1024, ge=1024, description="larger answers fail")

    @model_validator(mode="before")
    @classmethod
    def _url(cls, data: Any) -> Any:
        # Checked here, on the whole mapping, so an error never echoes a URL that may hold a password.
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            return data
        url = data["url"]
        scheme, sep, rest = url.partition("://")
        host = rest.split("/", 1)[0]
        if not sep or scheme not in ("http", "https") or not host:
            raise ValueError("url must be http://host[:port][/path] or https://...")
        if "@" in host:
            raise ValueError("url must not hold credentials: use basic_username and basic_password(_file)")
        if "?" in rest or "#" in rest:
            raise ValueError("url must not have a query string or fragment")
        return data

    @model_validator(mode="after")
    def _one_way_each(self) -> SourceConfig:
        bearer = [k for k in ("bearer_token", "bearer_token_file", "bearer_token_env") if getattr(self, k)]
        password = [
            k for k in ("basic_password", "basic_password_file", "basic_password_env") if getattr(self, k)
        ]
        if len(bearer) > 1 or len(password) > 1:
            raise ValueError(
                f"set a secret one way only, not {' and '.join(bearer if len(bearer) > 1 else password)}"
            )
        if bool(self.basic_username) != bool(password):
            raise ValueError("basic auth needs both basic_username and basic_password(_file/_env)")
        if bearer and password:
            raise ValueError("set bearer_token or basic auth, not both")
        if (bearer or password) and any(h.lower() == "authorization" for h in self.headers):
            raise ValueError("an Authorization header and bearer/basic auth cannot both be set")
        return self

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")


#: Placeholders a query may hold, filled per watch (see :meth:`WatchConfig.render`); the selector is empty
#: for the poller (verification puts baseline or canary matchers there).
PLACEHOLDERS = ("{{service}}", "{{service_label}}", "{{instance_label}}", "{{selector}}")
#: The built-in metric packs (engine/packs/*.yaml).
PackName = Literal["http", "grpc", "process", "node", "kubernetes"]


class QueryConfig(Frozen):
    """One PromQL expression; its result series become samples named ``name``, one per instance."""

    name: str = Field(pattern=r"^[A-Za-z_:][A-Za-z0-9_:.-]{0,199}$", description="the metric's name")
    query: str = Field(min_length=1, max_length=16_384)


class WatchConfig(Frozen):
    """A service watched through PromQL: every ``interval_s`` the steps of ``step_s`` that are at least
    ``delay_s`` old are queried; a first start backfills ``lookback_s``."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    source: str | None = Field(default=None, description="a source's name; default: the first source")
    service: str | None = Field(default=None, min_length=1, max_length=4096)
    selector: str | None = Field(
        default=None,
        pattern=r"^\{[^{}]*[^{}\s][^{}]*\}$",
        max_length=4096,
        description="e.g. '{namespace=\"shop\"}': one watch per value of the service label it matches",
    )
    pack: tuple[PackName, ...] = Field(default=(), description="built-in metric packs")
    queries: tuple[QueryConfig, ...] = ()
    step_s: int = Field(default=15, ge=1, le=86_400, description="resolution: one sample per step")
    interval_s: float = Field(default=15.0, gt=0, le=86_400, description="how often to poll")
    lookback_s: int = Field(default=3600, ge=0, le=90 * 86_400, description="backfill of a first start")
    delay_s: int = Field(default=30, ge=0, le=86_400, description="only steps this old are complete")

    @model_validator(mode="after")
    def _what(self) -> WatchConfig:
        if (self.service is None) == (self.selector is None):
            raise ValueError("a watch needs a service or a selector (one of them)")
        if not self.queries and not self.pack:
            raise ValueError("a watch needs a pack or at least one query")
        if self.selector is not None:
            alike = [q.name for q in self.queries if "{{service}}" not in q.query]
            if alike:
                raise ValueError(f"in a selector watch every query needs {{{{service}}}}; not in {alike}")
        if len(set(self.pack)) != len(self.pack):
            raise ValueError(f"a pack is named twice: {list(self.pack)}")
        names = [q.name for q in self.all_queries]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"query names must be unique in a watch (packs included), twice: {twice}")
        return self

    @cached_property
    def all_queries(self) -> tuple[QueryConfig, ...]:
        """The explicit queries, then each pack's per-instance queries (named as the pack names them)."""
        from engine.packs import load_pack  # the packs module reads this one's types

        packed = (
            QueryConfig(name=m.name, query=m.instance_query) for name in self.pack for m in load_pack(name)
        )
        return (*self.queries, *packed)

    @property
    def matchers(self) -> str:
        """The selector's matchers as ``{{selector}}`` takes them: each after a comma; "" without one.

        >>> WatchConfig(name="w", selector='{ namespace="shop" }', pack=("http",)).matchers
        ',namespace="shop"'
        """
        inner = (self.selector or "{}")[1:-1].strip().strip(",").strip()
        return f",{inner}" if inner else ""

    @property
    def label(self) -> str:
        """How logs, metrics and watermarks name this watch: ``name``, or ``name/service`` for one service
        of a selector watch."""
        return self.name if self.selector is None or self.service is None else f"{self.name}/{self.service}"

    def for_service(self, service: str) -> WatchConfig:
        """One service of a selector watch (the selector stays: its matchers fill ``{{selector}}``)."""
        return self.model_copy(update={"service": service})

    def render(self, query: QueryConfig, labels: LabelsConfig) -> str:
        """The query with its :data:`PLACEHOLDERS` filled in."""
        return (
            query.query.replace("{{service}}", self.service or "")
            .replace("{{service_label}}", labels.service)
            .replace("{{instance_label}}", labels.instance)
            .replace("{{selector}}", self.matchers)
        )


class PollerConfig(Frozen):
    """The PromQL poller: where to read (``sources``) and what to watch (``watches``).

    ``enabled`` runs it in ``vigil run``; ``vigil poller`` runs it alone; ``vigil poll --once`` prints one
    poll. It serves Prometheus metrics at ``http://metrics_host:metrics_port/metrics``.
    """

    enabled: bool = Field(default=False, description="run the poller in `vigil run` (needs watches)")
    sources: tuple[SourceConfig, ...] = ()
    watches: tuple[WatchConfig, ...] = ()
    chunk_steps: int = Field(
        default=1000, ge=1, le=11_000, description="steps per request while catching up (backfill)"
    )
    discover_interval_s: float = Field(
        default=300.0, gt=0, le=86_400, description="how often selector watches look for new services"
    )
    session_timeout_s: float = Field(
        default=10.0,
        ge=1,
        le=300,
        description="pollers share the watches in a consumer group: a poller silent this long is taken over",
    )
    heartbeat_interval_s: float = Field(default=3.0, gt=0, le=100, description="below session_timeout_s")
    metrics_enabled: bool = Field(default=True, description="false: the poller opens no port at all")
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9204, ge=0, le=65535, description="0: any free port (printed)")

    @model_validator(mode="after")
    def _names(self) -> PollerConfig:
        sources = [s.name for s in self.sources]
        watches = [w.name for w in self.watches]
        for what, names in (("source", sources), ("watch", watches)):
            if len(set(names)) != len(names):
                raise ValueError(f"{what} names must be unique, got {sorted(names)}")
        if self.watches and not self.sources:
            raise ValueError("watches need a source: add poller.sources")
        if self.enabled and not self.watches:
            raise ValueError("poller.enabled needs at least one watch")
        if self.heartbeat_interval_s >= self.session_timeout_s:
            raise ValueError(
                f"heartbeat_interval_s ({self.heartbeat_interval_s:g}) must be below session_timeout_s "
                f"({self.session_timeout_s:g})"
            )
        for watch in self.watches:
            if watch.source is not None and watch.source not in sources:
                raise ValueError(f"watch {watch.name}: no source named {watch.source!r}, have {sources}")
        return self

    def source_of(self, watch: WatchConfig) -> SourceConfig:
        name = watch.source or self.sources[0].name
        return next(s for s in self.sources if s.name == name)


class ApiConfig(Frozen):
    """The HTTP API (verifications): ``vigil api``, and in ``vigil run`` when ``enabled``."""

    enabled: bool = Field(default=False, description="true: `vigil run` also runs the API")
    host: str = "127.0.0.1"
    port: int = Field(default=9202, ge=0, le=65535, description="0: any free port (printed)")
    auth: AuthConfig = AuthConfig()
    tls: TLSConfig = TLSConfig()
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_running: int = Field(default=64, ge=1, le=10_000, description="verifications judged at once")
    max_wait_s: float = Field(default=60.0, ge=0, le=600, description="longest ?wait_s= long-poll")
    lease_s: float = Field(
        default=30.0, gt=0, le=3600, description="a running job not updated this long is taken over"
    )
    external_url: str | None = Field(
        default=None,
        description="how people reach Vigil's API (behind a proxy, say); notifications link to it",
    )

    @field_validator("external_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^/@?#\s]+(/[^?#\s]*)?", value):
            raise ValueError("external_url must be http(s)://host[:port][/path], without credentials")
        return value


class NotifierType(StrEnum):
    ALERTMANAGER = "alertmanager"
    WEBHOOK = "webhook"
    SLACK = "slack"
    PAGERDUTY = "pagerduty"


class NotifyEvent(StrEnum):
    OPENED = "opened"
    RESOLVED = "resolved"


class MinHealth(StrEnum):
    """The service health states a notifier can require (see :mod:`engine.health`)."""

    OBSERVE = "observe"
    UNHEALTHY = "unhealthy"


PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"

#: settings each type needs (one of each tuple) and allows
_NEEDS: dict[NotifierType, tuple[tuple[str, ...], ...]] = {
    NotifierType.ALERTMANAGER: (("url",),),
    NotifierType.WEBHOOK: (("url",),),
    NotifierType.SLACK: (("webhook_url_file", "webhook_url_env"),),
    NotifierType.PAGERDUTY: (("routing_key_file", "routing_key_env"),),
}
_ALLOWS: dict[NotifierType, frozenset[str]] = {
    NotifierType.ALERTMANAGER: frozenset({"url"}),
    NotifierType.WEBHOOK: frozenset({"url", "secret_file", "secret_env"}),
    NotifierType.SLACK: frozenset({"webhook_url_file", "webhook_url_env"}),
    NotifierType.PAGERDUTY: frozenset({"url", "routing_key_file", "routing_key_env"}),
}
_SPECIFIC = frozenset().union(*_ALLOWS.values())


def _plain_url(url: str) -> str | None:
    """Why ``url`` is refused, or None. Never repeats the URL (it may hold a token)."""
    scheme, sep, rest = url.partition("://")
    host = rest.split("/", 1)[0]
    if not sep or scheme not in ("http", "https") or not host:
        return "url must be http://host[:port][/path] or https://..."
    if "@" in host:
        return "url must not hold credentials"
    return None


class NotifierConfig(Frozen):
    """One receiver of anomaly notifications. Secrets only from files (read at each send, so a rotated
    one is picked up) or environment variables, never inline: a configuration file is often shared."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    type: NotifierType
    url: str | None = Field(
        default=None, description="alertmanager: its base URL; webhook: where to POST; pagerduty: Events API"
    )
    secret_file: Path | None = Field(default=None, description="webhook: HMAC-SHA256 key (signs the body)")
    secret_env: str | None = None
    webhook_url_file: Path | None = Field(default=None, description="slack: incoming webhook URL (a secret)")
    webhook_url_env: str | None = None
    routing_key_file: Path | None = Field(default=None, description="pagerduty: integration routing key")
    routing_key_env: str | None = None
    services: tuple[str, ...] = Field(default=(), description="only these services (empty: all)")
    metric_types: tuple[MetricType, ...] = Field(default=(), description="only these rule types (empty: all)")
    events: tuple[NotifyEvent, ...] = Field(
        default=(NotifyEvent.OPENED, NotifyEvent.RESOLVED), description="which changes to send"
    )
    min_health: MinHealth | None = Field(
        default=None,
        description="only anomalies of a service whose health is at least this (observe | unhealthy); "
        "an opening waits until its service gets there, and is dropped if it resolves first",
    )
    group_interval_s: float = Field(
        default=10.0, gt=0, le=600, description="slack, pagerduty: one message per service per interval"
    )
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="one request")
    backoff_s: float = Field(default=1.0, gt=0, le=60, description="first retry delay, doubled each time")
    max_backoff_s: float = Field(default=60.0, gt=0, le=3600, description="longest delay between tries")
    resend_interval_s: float = Field(
        default=60.0, gt=0, le=3600, description="alertmanager: open alerts are sent again this often"
    )
    expiry_s: float = Field(
        default=300.0, gt=0, le=86_400, description="alertmanager: endsAt this far ahead of the wall clock"
    )

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        inline = [k for k in ("secret", "webhook_url", "routing_key") if k in data]
        if inline:
            raise ValueError(f"{inline[0]} cannot be given inline: use {inline[0]}_file or {inline[0]}_env")
        url = data.get("url")
        if isinstance(url, str) and (why := _plain_url(url)):
            raise ValueError(why)
        return data

    @model_validator(mode="after")
    def _settings_of_type(self) -> NotifierConfig:
        given = {k for k in _SPECIFIC if getattr(self, k) is not None}
        foreign = sorted(given - _ALLOWS[self.type])
        if foreign:
            raise ValueError(f"{self.type} notifiers do not take {', '.join(foreign)}")
        for one_of in _NEEDS[self.type]:
            found = [k for k in one_of if k in given]
            if not found:
                raise ValueError(f"{self.type} notifiers need {' or '.join(one_of)}")
        for prefix in ("secret", "webhook_url", "routing_key"):
            if f"{prefix}_file" in given and f"{prefix}_env" in given:
                raise ValueError(f"set {prefix}_file or {prefix}_env, not both")
        if self.max_backoff_s < self.backoff_s:
            raise ValueError("max_backoff_s must be at least backoff_s")
        if self.expiry_s <= self.resend_interval_s:
            raise ValueError("expiry_s must exceed resend_interval_s, or open alerts expire between sends")
        return self

    @property
    def endpoint(self) -> str | None:
        """The URL that is not a secret (Slack's is, and comes from a file or the environment)."""
        if self.type is NotifierType.PAGERDUTY:
            return self.url or PAGERDUTY_URL
        return self.url


class NotifierProcessConfig(Frozen):
    """The ``vigil notify`` process: Prometheus metrics at ``http://metrics_host:metrics_port/metrics``."""

    metrics_enabled: bool = Field(default=True, description="false: the notifier opens no port at all")
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9205, ge=0, le=65535, description="0: any free port (printed)")
    max_event_bytes: int = Field(
        default=64 * 1024, ge=1024, le=16 * 1024 * 1024, description="larger records are skipped"
    )


class WorkerConfig(Frozen):
    """Each worker serves Prometheus metrics at ``http://metrics_host:metrics_port/metrics``."""

    metrics_enabled: bool = Field(default=True, description="false: the worker opens no port at all")
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9203, ge=0, le=65535, description="0: any free port (printed)")


class StatusConfig(Frozen):
    """Per-series status (``kafka.topics.status``) and the anomaly scores as Prometheus metrics."""

    interval_s: float = Field(
        default=5.0, gt=0, le=300, description="workers publish the series that changed this often"
    )
    idle_s: float = Field(
        default=900.0,
        gt=0,
        le=30 * 86_400,
        description="a series not seen for this long (wall clock, whatever its samples' age) leaves "
        "/metrics and the services view",
    )
    max_series: int = Field(
        default=200_000, ge=1, le=10_000_000, description="series the API keeps at most (the oldest go)"
    )
    max_record_bytes: int = Field(
        default=16 * 1024, ge=512, le=1024 * 1024, description="larger status records are refused"
    )
    resolved_kept: int = Field(
        default=1000, ge=0, le=1_000_000, description="resolved anomalies the API remembers per service"
    )


class VigilConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VIGIL_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    kafka: KafkaConfig = KafkaConfig()
    labels: LabelsConfig = LabelsConfig()
    rules: tuple[MetricRule, ...] = DEFAULT_RULES
    detection: DetectionConfig = DetectionConfig()
    worker: WorkerConfig = WorkerConfig()
    receiver: ReceiverConfig = ReceiverConfig()
    poller: PollerConfig = PollerConfig()
    api: ApiConfig = ApiConfig()
    notify: tuple[NotifierConfig, ...] = ()
    notifier: NotifierProcessConfig = NotifierProcessConfig()
    status: StatusConfig = StatusConfig()

    @model_validator(mode="after")
    def _notifier_names(self) -> VigilConfig:
        names = [n.name for n in self.notify]
        if len(set(names)) != len(names):
            raise ValueError(f"notifier names must be unique, got {sorted(names)}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file (passed as init values).
        return env_settings, init_settings

    @cached_property
    def pack_rules(self) -> dict[str, MetricRule]:
        """The type and direction of every metric a watch's pack brings, by metric name: they come first."""
        from engine.packs import load_pack

        return {
            m.name: MetricRule(match=re.escape(m.name), type=m.type, direction=m.direction)
            for watch in self.poller.watches
            for name in watch.pack
            for m in load_pack(name)
        }

    @model_validator(mode="after")
    def _river_rules_need_a_key(self) -> VigilConfig:
        if any(isinstance(r.detector, RiverDetector) for r in self.rules):
            from engine.river_detector import read_key

            key_file = self.detection.checkpoint_key_file
            if key_file is None:
                raise ValueError(
                    "a rule names a River detector: its checkpoints are signed pickles, so "
                    "detection.checkpoint_key_file must name a key file"
                )
            read_key(key_file)  # a missing or short key is a clear error now, not on the first checkpoint
        return self

    def rule_for(self, metric: str) -> MetricRule:
        if metric in self.pack_rules:
            return self.pack_rules[metric]
        for rule in self.rules:
            if rule.pattern.fullmatch(metric):
                return rule
        return DEFAULT_RULES[-1]


MAX_FILE_BYTES = 1024 * 1024


def load_config(path: Path | None) -> VigilConfig:
    """Read, validate and freeze the configuration. Raises :class:`ConfigError` with a readable message."""
    where = str(path) if path else "<defaults>"
    data: Any = {}
    if path is not None:
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ConfigError(
                    f"{where}: larger than {MAX_FILE_BYTES} bytes; is this a configuration file?"
                )
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{where}: cannot read: not UTF-8 text ({exc.reason})") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: not valid YAML: {exc}".replace("\n", " ")) from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"{where}: expected a mapping of sections at the top, got {type(data).__name__}"
            )
    try:
        return VigilConfig(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(where, exc)) from None
    except SettingsError as exc:  # a VIGIL_* variable that is not valid JSON where a section is expected
        raise ConfigError(f"environment: {exc}") from None


#: a key path with one of these in it may hold a secret: its value is never shown in an error
SECRET_WORDS = ("auth", "token", "password", "secret", "credential", "header")


def _describe(where: str, exc: ValidationError) -> str:
    """One line per error: file, key path, what was expected, and the value given when that is safe."""
    lines = []
    for err in exc.errors(include_input=True, include_url=False, include_context=False):
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{where}: {path}: {err['msg']}{_shown(err)}")
    return "\n".join(lines)


def _shown(err: Any) -> str:
    """`` (got VALUE)``, unless the value may be a secret: under a secret-looking key, or under a key Vigil
    does not know (a misspelt ``bearer_tokn`` holds a token all the same), or a whole section."""
    got = err.get("input")
    if err["type"] in ("missing", "extra_forbidden") or isinstance(got, dict | list | tuple):
        return ""
    if any(word in str(part).lower() for part in err["loc"] for word in SECRET_WORDS):
        return " (value not shown: it may be a secret)"
    return f" (got {got!r:.80})"


def redacted(config: VigilConfig) -> dict[str, Any]:
    """The effective configuration as plain data, secrets masked."""
    dumped: dict[str, Any] = config.model_dump(mode="json")
    return dumped
