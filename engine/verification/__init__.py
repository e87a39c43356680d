"""Deployment verification: canary against baseline with anytime-valid sequential tests."""

from engine.verification.judge import (
    ALPHA,
    Counts,
    Health,
    InstanceReport,
    Judge,
    MetricReport,
    MetricSpec,
    Observation,
    Outcome,
    Result,
    Settings,
    Verdict,
)

__all__ = [
    "ALPHA",
    "Counts",
    "Health",
    "InstanceReport",
    "Judge",
    "MetricReport",
    "MetricSpec",
    "Observation",
    "Outcome",
    "Result",
    "Settings",
    "Verdict",
]
