"""Series as a remote-write sender (or a PromQL query) hands them over, before preparation.

This is the neutral shape between the protocol decoders in ``connectors/`` and the series preparation in
:mod:`engine.preparation`: no protobuf types cross this line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

#: Label pairs sorted by name, e.g. ``(("__name__", "up"), ("instance", "a:9100"), ("job", "node"))``.
#: Tuples are hashable, so decoders can cache and reuse one object per distinct label set.
Labels = tuple[tuple[str, str], ...]


class MetricKind(StrEnum):
    """Prometheus metric types, as sent in remote-write metadata."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"
    GAUGE_HISTOGRAM = "gaugehistogram"
    SUMMARY = "summary"
    INFO = "info"
    STATESET = "stateset"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class NativeHistogram:
    """One native (sparse, exponential) histogram sample.

    Bucket counts are absolute (already un-delta-encoded), both for integer and float histograms.
    Spans are (offset, length) pairs as in the protocol.
    """

    timestamp_ms: int
    schema: int
    zero_threshold: float
    zero_count: float
    count: float
    sum: float
    positive_spans: tuple[tuple[int, int], ...] = ()
    positive_counts: tuple[float, ...] = ()
    negative_spans: tuple[tuple[int, int], ...] = ()
    negative_counts: tuple[float, ...] = ()
    reset_hint: int = 0  # 0 unknown, 1 yes, 2 no, 3 gauge


@dataclass(slots=True)
class RawSeries:
    """One series of a write request: its labels and what was sent for it."""

    labels: Labels
    samples: list[tuple[int, float]] = field(default_factory=list)  # (Unix ms, value), stale NaN kept as is
    histograms: list[NativeHistogram] = field(default_factory=list)
    kind: MetricKind | None = None  # from metadata sent with the series (remote-write 2.0)
    created_ms: int = 0  # created timestamp (2.0), 0 when unknown

    @property
    def name(self) -> str:
        for key, value in self.labels:
            if key == "__name__":
                return value
        return ""


@dataclass(slots=True)
class WriteRequest:
    """A decoded write request. ``metadata`` maps metric family name → kind (1.0 sends it separately)."""

    series: list[RawSeries] = field(default_factory=list)
    metadata: dict[str, MetricKind] = field(default_factory=dict)
    exemplars: int = 0

    @property
    def sample_count(self) -> int:
        return sum(len(s.samples) for s in self.series)

    @property
    def histogram_count(self) -> int:
        return sum(len(s.histograms) for s in self.series)
