"""What series preparation counts: the keys of :attr:`engine.preparation.Prepared.counts`.

Its own module so that the per-series state can count without importing the
:class:`~engine.preparation.Preparer` that drives it.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Count"]


class Count(StrEnum):
    """What :meth:`~engine.preparation.Preparer.prepare` counts, in samples or events."""

    NO_NAME = "no_name"  #: series without ``__name__``: dropped
    NO_SERVICE = "no_service"  #: series without the service label (and no default): dropped
    CREATED = "created_series"  #: ``*_created`` series: dropped
    BAD_LABEL = "bad_label"  #: ``le`` / ``quantile`` label that is not a number: dropped
    SERIES_LIMIT = "series_limit"  #: new series refused, ``max_series`` already tracked
    RETYPED = "retyped"  #: tracked series whose state was dropped because new metadata changed its type
    OUT_OF_ORDER = "out_of_order"
    DUPLICATE = "duplicate"
    STALE = "stale"  #: stale markers seen
    NAN = "nan"  #: NaN samples that are not stale markers: dropped
    INF = "inf"  #: ±Inf samples: dropped
    FIRST_SAMPLE = "first_sample"  #: counter samples without a predecessor: no rate yet
    COUNTER_RESET = "counter_reset"
    NO_TRAFFIC = "no_traffic"  #: intervals without observations: no quantile, no mean
    INCOMPLETE_GROUP = "incomplete_group"  #: histogram timestamps missing buckets (or _sum/_count): dropped
    LATE = "late"  #: bucket or _sum/_count samples for a timestamp already computed: dropped
    HISTOGRAM_INVALID = "histogram_invalid"  #: native histograms that are malformed or non-finite: dropped
    HISTOGRAM_UNSUPPORTED = "histogram_unsupported"  #: native histograms with a schema not in -4..8
    HISTOGRAM_INCOMPATIBLE = "histogram_incompatible"  #: intervals whose zero bucket width changed: skipped
    COLLISION = "collision"  #: derived points for a timestamp another source already gave
