"""A verdict as JSON-ready data (the API's verification document and ``vigil verify --json``)."""

from __future__ import annotations

import math
from typing import Any

from engine.verification.judge import Verdict, clock
from engine.verification.ml import MLReport


def _number(v: float | None) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return float(f"{v:.6g}")


def ml_document(ml: MLReport | None) -> dict[str, Any] | None:
    """A metric's ML view (evidence only); the band is null on a side that is no risk."""
    if ml is None:
        return None
    return {
        "detector": ml.detector,
        "trained": ml.trained,
        "learning": ml.learning,
        "steps": ml.steps,
        "anomalous": ml.anomalous,
        "anomalous_share": _number(ml.share),
        "max_score": _number(ml.max_score),
        "first_anomalous_at": None if ml.first_anomalous_ms is None else clock(ml.first_anomalous_ms),
        "expected": _number(ml.expected),
        "expected_band": [_number(ml.expected_low), _number(ml.expected_high)],
        "last_value": _number(ml.last_value),
    }


def verdict_document(verdict: Verdict) -> dict[str, Any]:
    """``verdict`` (null while undecided), ``score``, ``reason``, ``decided_at``, ``metrics``,
    ``instances`` and ``missing``, as the README describes them."""
    return {
        "verdict": None if verdict.outcome is None else str(verdict.outcome),
        "final": verdict.final,
        "score": _number(verdict.score),
        "reason": verdict.reason,
        "decided_at": None if verdict.decided_at_ms is None else clock(verdict.decided_at_ms),
        "steps": verdict.steps,
        "metrics": [
            {
                "name": m.name,
                "result": str(m.result),
                "regression": m.regression,
                "samples": m.samples,
                "ignore_threshold": _number(m.threshold),
                "baseline_median": _number(m.baseline_median),
                "canary_median": _number(m.canary_median),
                "shift_ci": [_number(m.shift_low), _number(m.shift_high)],
                "e_value": _number(m.e_value),
                "auc": _number(m.auc),
                "hodges_lehmann_shift": _number(m.hl_shift),
                "mann_whitney_p_fixed": _number(m.p_fixed),
                "baseline_rate": _number(m.baseline_rate),
                "canary_rate": _number(m.canary_rate),
                "ml": ml_document(m.ml),
            }
            for m in verdict.metrics
        ],
        "instances": [
            {
                "instance": i.instance,
                "role": i.role,
                "health": str(i.health),
                "metrics": {k: str(v) for k, v in i.metrics.items()},
            }
            for i in verdict.instances
        ],
        "missing": list(verdict.missing),
    }
