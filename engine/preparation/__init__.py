"""Series preparation: raw series in, the series Vigil's detectors learn from out.

Where things happen: :mod:`.preparer` drives it (identity of series, types, memory); :mod:`.counters`
turns counters into rates; :mod:`.histograms` turns classic histogram buckets into quantiles and
_sum/_count into means, collected per timestamp by :mod:`.groups`; :mod:`.native` does native histograms;
:mod:`.tracks` passes gauges through; :mod:`.quantiles` is Prometheus' ``histogram_quantile`` maths;
:mod:`.names` the names of derived series; :mod:`.types` metric types from metadata; :mod:`.counts` what
is counted; :mod:`.context` the one interface the per-series state uses; :mod:`.state` checkpoints.
"""

from engine.preparation.counts import Count
from engine.preparation.names import format_selector
from engine.preparation.preparer import Prepared, Preparer
from engine.preparation.types import FamilyTypes

__all__ = ["Count", "FamilyTypes", "Prepared", "Preparer", "format_selector"]
