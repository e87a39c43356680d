"""Flagger webhooks: ``POST /api/v1/flagger/{kind}`` with Flagger's payload ``{name, namespace, phase,
checksum, metadata}``. The verification's fields come from ``metadata`` (strings, as Flagger sends them):
``type`` (default canary), for a canary ``baseline`` and ``canary`` (label matchers), for ``before_after``
and ``load_test`` ``selector`` (the service's matchers) with ``deployed_at`` (before_after; default: when
the first call came) or one of ``baseline_start`` and ``baseline_run`` (load_test), ``service`` (default:
the canary's name), ``pack`` (comma-separated, default http), ``duration`` (default 30m; or ``start`` and
``end`` for a past window), ``source``, ``instance_label``, ``sensitivity``, ``step``, ``ml_history``.
The request's own checks apply (a field of another type is a 400 naming it). Every call for one canary
revision (name, namespace, checksum) is the same verification (its key).

Flagger's semantics: for a check (``rollout``, ``pre-rollout``, ``post-rollout``), a 2xx lets the rollout go
on and anything else counts as a failed check; a gate (``confirm-rollout``, ``confirm-traffic-increase``,
``confirm-promotion``) holds its step until it answers 2xx; a ``rollback`` hook that answers 2xx makes
Flagger roll back. So a check answers 200 while Vigil is deciding or has passed, 412 with the reason once
it failed or was inconclusive (Flagger has no "inconclusive"); a gate answers 200 only after a pass (409
while Vigil decides, 412 after a fail or an inconclusive verdict: the step stays held, and a ``rollout``
or ``rollback`` hook of the same verification rolls it back); ``rollback`` answers 200 only for a fail.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.api.jobs import now_ms, state_of
from engine.errors import ConfigError, first_error

CHECKS = (
    "confirm-rollout",
    "pre-rollout",
    "rollout",
    "confirm-traffic-increase",
    "confirm-promotion",
    "post-rollout",
)
KINDS = (*CHECKS, "rollback")
#: the hooks Flagger waits on ("paused until the hook returns HTTP 200"), unlike the checks it counts
GATES = ("confirm-rollout", "confirm-traffic-increase", "confirm-promotion")
FIELDS = (
    "service",
    "type",
    "baseline",
    "canary",
    "selector",
    "deployed_at",
    "baseline_start",
    "baseline_run",
    "duration",
    "start",
    "end",
    "source",
    "instance_label",
    "sensitivity",
    "step",
    "ml_history",
)


class Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")  # Flagger adds fields over its versions

    name: str = Field(min_length=1, max_length=253)
    namespace: str = Field(min_length=1, max_length=253)
    phase: str = Field(default="", max_length=64)
    checksum: str = Field(default="", max_length=256)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=64)


def request_of(doc: object) -> dict[str, Any]:
    """The verification request a Flagger payload asks for; ConfigError naming what is wrong."""
    try:
        payload = Payload.model_validate(doc)
    except ValidationError as exc:
        raise first_error(exc, "payload") from None
    meta = payload.metadata
    unknown = sorted(set(meta) - {*FIELDS, "pack"})
    if unknown:
        raise ConfigError(f"metadata: unknown keys {unknown}; known: {sorted({*FIELDS, 'pack'})}")
    out: dict[str, Any] = {k: meta[k] for k in FIELDS if k in meta}
    out.setdefault("service", payload.name)
    if "end" not in out:
        out.setdefault("duration", "30m")
    out["pack"] = [p.strip() for p in meta.get("pack", "http").split(",") if p.strip()]
    out["key"] = f"flagger/{payload.namespace}/{payload.name}/{payload.checksum}"
    return out


def answer(kind: str, doc: dict[str, Any]) -> tuple[int, str]:
    """(status, reason) of a webhook call, from the verification's document."""
    state = state_of(doc, now_ms())
    if kind == "rollback":
        if state == "fail":
            return 200, f"roll back: {doc['reason']}"
        return 409, f"no roll back: the verification is {state}"
    if kind in GATES:
        # Flagger holds the step until a gate answers 2xx: only a pass opens it, never a verdict to come
        if state == "pass":
            return 200, "go on: the verification passed"
        if state == "running":
            return 409, "wait: the verification is still running"
        return 412, f"hold: the verification is {state}: {doc['reason']}"
    if state in ("running", "pass"):
        return 200, f"go on: the verification is {state}"
    return 412, f"stop: the verification is {state}: {doc['reason']}"
