"""Compatibility: series preparation moved to :mod:`engine.preparation` (the receiver still imports this)."""

from engine.preparation import Count, Prepared, Preparer, format_selector

__all__ = ["Count", "Prepared", "Preparer", "format_selector"]
