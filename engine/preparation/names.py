"""How a raw series is read and what its prepared series are called.

Pure helpers of :mod:`engine.preparation`: the role a series plays (from its name, labels and metadata), the
canonical selector and quantile suffix of derived names, and the sample and label values with a meaning of
their own (stale markers, numeric ``le`` / ``quantile`` labels).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from enum import Enum
from typing import Final

from engine.raw import MetricKind

__all__ = ["Role", "format_selector", "is_stale_nan", "parse_float", "quantile_suffix", "role_of"]

_STALE_BITS: Final = struct.pack("<Q", 0x7FF0000000000002)
_pack_double: Final = struct.Struct("<d").pack
_LEGACY_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


# --- values with a meaning of their own -----------------------------------------------------------------


def is_stale_nan(value: float) -> bool:
    """Whether ``value`` is Prometheus' stale marker, a NaN with one exact bit pattern.

    >>> is_stale_nan(struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0])
    True
    >>> is_stale_nan(float("nan")), is_stale_nan(1.0)
    (False, False)
    """
    return _pack_double(value) == _STALE_BITS


def parse_float(text: str | None) -> float | None:
    """A label value as a number (``+Inf`` included), ``None`` when it is not one or is NaN."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return None if value != value else value


# --- derived names --------------------------------------------------------------------------------------


def quantile_suffix(q: float) -> str:
    """The name suffix of quantile ``q``: ``p`` and the percentage, without float noise.

    >>> [quantile_suffix(q) for q in (0.5, 0.9, 0.99, 0.999, 0.25, 0.001)]
    ['p50', 'p90', 'p99', 'p99.9', 'p25', 'p0.1']
    """
    return "p" + f"{q * 100:.6f}".rstrip("0").rstrip(".")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_selector(labels: Iterable[tuple[str, str]]) -> str:
    r"""Labels as a canonical PromQL selector: sorted by name, values escaped, ``""`` when there are none.

    Label names that are not legacy identifiers are quoted, as Prometheus 3 writes UTF-8 names.

    >>> format_selector([("method", "GET"), ("code", "500")])
    '{code="500",method="GET"}'
    >>> print(format_selector([("path", 'say "hi"\n'), ("k8s.pod", "a")]))
    {"k8s.pod"="a",path="say \"hi\"\n"}
    >>> format_selector([])
    ''
    """
    parts = [
        f'{name if _LEGACY_NAME.fullmatch(name) else chr(34) + _escape(name) + chr(34)}="{_escape(value)}"'
        for name, value in sorted(labels)
    ]
    return "{" + ",".join(parts) + "}" if parts else ""


# --- series roles ---------------------------------------------------------------------------------------


class Role(Enum):
    """How a raw series is read: what it contributes to which prepared series."""

    GAUGE = "gauge"
    COUNTER = "counter"
    COUNT = "count"  # _count of a histogram or summary: rate, and half of the mean
    SUM = "sum"
    BUCKET = "bucket"
    GAUGE_BUCKET = "gauge_bucket"  # bucket of a gauge histogram: quantiles of the absolute counts
    SUMMARY_QUANTILE = "summary_quantile"
    CREATED = "created"


_GAUGE_KINDS: Final = frozenset({MetricKind.GAUGE, MetricKind.INFO, MetricKind.STATESET})


def role_of(name: str, has_le: bool, has_quantile: bool, kind: MetricKind | None) -> tuple[Role, str]:
    """How a series is read and the family its derived names start with.

    >>> role_of("http_requests_total", False, False, None)
    (<Role.COUNTER: 'counter'>, 'http_requests_total')
    >>> role_of("latency_seconds_bucket", True, False, None)
    (<Role.BUCKET: 'bucket'>, 'latency_seconds')
    >>> role_of("rpc_seconds", False, True, MetricKind.SUMMARY)
    (<Role.SUMMARY_QUANTILE: 'summary_quantile'>, 'rpc_seconds')
    >>> role_of("temperature", False, False, MetricKind.COUNTER)
    (<Role.COUNTER: 'counter'>, 'temperature')
    """
    if kind in _GAUGE_KINDS:
        return Role.GAUGE, name
    if kind is None or kind is MetricKind.SUMMARY or kind is MetricKind.HISTOGRAM:
        if name.endswith("_created"):
            return Role.CREATED, name
        if has_quantile and kind is not MetricKind.HISTOGRAM:
            return Role.SUMMARY_QUANTILE, name
        if has_le and name.endswith("_bucket") and kind is not MetricKind.SUMMARY:
            return Role.BUCKET, name[: -len("_bucket")]
        if kind is None and name.endswith("_total"):
            return Role.COUNTER, name
        if name.endswith("_count"):
            return Role.COUNT, name[: -len("_count")]
        if name.endswith("_sum"):
            return Role.SUM, name[: -len("_sum")]
        return Role.GAUGE, name  # e.g. the float samples of a native histogram series
    if kind is MetricKind.COUNTER:
        return (Role.CREATED if name.endswith("_created") else Role.COUNTER), name
    if kind is MetricKind.GAUGE_HISTOGRAM and has_le and name.endswith("_bucket"):
        return Role.GAUGE_BUCKET, name[: -len("_bucket")]
    return Role.GAUGE, name
