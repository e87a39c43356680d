"""Reading Prometheus' HTTP query API: windows, the client, its errors (see the modules' docstrings)."""

from connectors.prometheus.client import ClientStats, PrometheusClient
from connectors.prometheus.errors import ErrorKind, QueryError
from connectors.prometheus.response import RangeResult, RangeSeries
from connectors.prometheus.windows import MAX_POINTS, Window, aligned, split

__all__ = [
    "MAX_POINTS",
    "ClientStats",
    "ErrorKind",
    "PrometheusClient",
    "QueryError",
    "RangeResult",
    "RangeSeries",
    "Window",
    "aligned",
    "split",
]
