"""Steps both protocol versions take for a series off the fast path."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from connectors.remote_write.labels import LabelCache, validate
from connectors.remote_write.limits import Limits
from engine.raw import Labels, NativeHistogram, RawSeries


def cached_labels(
    key: Hashable, pairs: Sequence[tuple[bytes, bytes]], limits: Limits, cache: LabelCache
) -> Labels:
    """The validated labels for ``key``, from the cache or by validating ``pairs`` (and caching them)."""
    labels = cache.young.get(key)
    if labels is None:
        labels = cache.recall(key)
    if labels is None:
        labels = cache.young[key] = validate(pairs, limits)
    return labels


def keep_present(
    labels: Labels, samples: list[tuple[int, float]], histograms: Sequence[NativeHistogram], limit_ms: int
) -> tuple[RawSeries | None, int]:
    """The series without its samples and histograms later than ``limit_ms`` (None if that leaves nothing of
    a series that had some), and how many were dropped."""
    kept = [sample for sample in samples if sample[0] <= limit_ms]
    kept_histograms = [h for h in histograms if h.timestamp_ms <= limit_ms]
    rejected = len(samples) - len(kept) + len(histograms) - len(kept_histograms)
    if rejected and not kept and not kept_histograms:
        return None, rejected
    return RawSeries(labels, kept, kept_histograms), rejected
