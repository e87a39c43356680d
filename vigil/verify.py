"""``vigil verify``: judge a canary in-process from the configured source and exit with the verdict."""

from __future__ import annotations

import sys
from typing import Any, TextIO

import orjson

from connectors.verifier import verify
from engine.config import VigilConfig
from engine.errors import ConfigError
from engine.verification import Outcome, Verdict
from engine.verification.document import ml_document, verdict_document
from engine.verification.judge import clock
from engine.verification.request import duration_s, parse_request, plan

#: pass, fail, inconclusive (2 is a bad configuration or input, as everywhere in vigil)
EXIT = {Outcome.PASS: 0, Outcome.FAIL: 1, Outcome.INCONCLUSIVE: 3}


def parse_metric(text: str) -> dict[str, str]:
    """``NAME=QUERY``.

    >>> parse_metric("errors=sum(rate(x[1m]))")
    {'name': 'errors', 'query': 'sum(rate(x[1m]))'}
    """
    name, sep, query = text.partition("=")
    if not sep or not name.strip() or not query.strip():
        raise ConfigError(f"--metric: expected NAME=QUERY, got {text!r:.60}")
    return {"name": name.strip(), "query": query.strip()}


#: the ML view (evidence only): steps at a normalised score >= 1 of those scored, the highest score, and
#: the band the detector trained on the baseline expected at the last step
ML_COLUMNS = ("ML >=1", "ML max", "ML expected")


def ml_cells(ml: object) -> tuple[str, str, str]:
    """The ML view's cells of one metric, from its document (``None``: no view).

    >>> ml_cells({"anomalous": 2, "steps": 120, "max_score": 1.5, "expected_band": [None, 0.2]})
    ('2/120', '1.5', '[-, 0.2]')
    """
    if not isinstance(ml, dict):
        return ("-", "-", "-")

    def n(v: object) -> str:
        return "-" if not isinstance(v, int | float) else f"{v:.4g}"

    low, high = (ml.get("expected_band") or [None, None])[:2]
    share = f"{ml.get('anomalous')}/{ml.get('steps')}"
    return (share, n(ml.get("max_score")), f"[{n(low)}, {n(high)}]")


def table(verdict: Verdict) -> str:
    rows = [
        ("metric", "result", "samples", "baseline", "canary", "shift CI", "ignore <", "e-value", *ML_COLUMNS)
    ]

    def n(v: float | None) -> str:
        return "-" if v is None else f"{v:.4g}"

    for m in verdict.metrics:
        base, canary = m.baseline_median, m.canary_median
        if m.baseline_rate is not None:
            base, canary = m.baseline_rate, m.canary_rate
        rows.append(
            (
                m.name,
                str(m.result) + (" !" if m.regression else ""),
                str(m.samples),
                n(base),
                n(canary),
                f"[{n(m.shift_low)}, {n(m.shift_high)}]",
                n(m.threshold),
                n(m.e_value),
                *ml_cells(ml_document(m.ml)),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for i in verdict.instances:
        bad = [k for k, v in i.metrics.items() if str(v) != "pass"]
        lines.append(
            f"instance {i.instance} ({i.role}): {i.health}" + (f" ({', '.join(bad)})" if bad else "")
        )
    return "\n".join(lines) + "\n"


async def run_verify(
    config: VigilConfig,
    doc: dict[str, Any],
    *,
    as_json: bool,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Judge ``doc`` (the API's request shape); the exit status of the verdict."""
    out, err = out or sys.stdout, err or sys.stderr
    request = parse_request(doc)
    chosen = plan(request, config)
    every = max(1, round(300 / chosen.settings.step_s))
    strides = "/".join(
        sorted({str(m.spec.stride) for m in chosen.metrics}, key=int)
    )  # a progress line per 5 minutes of metric time

    def progress(done: int, total: int, decided: Verdict | None) -> None:
        if decided is not None and decided.decided_at_ms is not None and decided.steps == done:
            err.write(f"step {done}/{total}: fail at {clock(decided.decided_at_ms)}: {decided.reason}\n")
        elif done % every == 0 or done == total:
            err.write(f"step {done}/{total}: judging\n")

    against = (
        f"canary {request.canary} against baseline {request.baseline}"
        if request.type == "canary"
        else f"{request.selector} against " + ", ".join(name for name, _ in request.references())
    )
    err.write(
        f"verifying {request.service}: {against}, "
        f"{len(chosen.metrics)} metrics from source {chosen.source}, every {request.step}"
        f" (independent samples every {strides} steps)\n"
    )
    if request.duration is not None and request.end is None:
        err.write(f"live for {duration_s(request.duration):.0f} s\n")
    verdict = await verify(config, chosen, progress=progress)
    if as_json:
        out.write(orjson.dumps(verdict_document(verdict)).decode() + "\n")
    else:
        out.write(table(verdict))
        out.write(f"verdict: {verdict.outcome}: {verdict.reason}\n")
    out.flush()
    assert verdict.outcome is not None  # a final verdict always has one
    return EXIT[verdict.outcome]


def doc_table(doc: dict[str, Any]) -> str:
    """The evidence table from an API document (as :func:`table` prints a verdict)."""
    rows = [
        ("metric", "result", "samples", "baseline", "canary", "shift CI", "ignore <", "e-value", *ML_COLUMNS)
    ]

    def n(v: object) -> str:
        return "-" if not isinstance(v, int | float) else f"{v:.4g}"

    for m in doc.get("metrics") or []:
        rate = m.get("baseline_rate") is not None
        base = m.get("baseline_rate") if rate else m.get("baseline_median")
        canary = m.get("canary_rate") if rate else m.get("canary_median")
        low, high = (m.get("shift_ci") or [None, None])[:2]
        result = str(m.get("result")) + (" !" if m.get("regression") else "")
        rows.append(
            (
                str(m.get("name")),
                result,
                str(m.get("samples")),
                n(base),
                n(canary),
                f"[{n(low)}, {n(high)}]",
                n(m.get("ignore_threshold")),
                n(m.get("e_value")),
                *ml_cells(m.get("ml")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for i in doc.get("instances") or []:
        bad = [k for k, v in (i.get("metrics") or {}).items() if v != "pass"]
        which = f" ({', '.join(bad)})" if bad else ""
        lines.append(f"instance {i.get('instance')} ({i.get('role')}): {i.get('health')}{which}")
    return "\n".join(lines) + "\n"


async def run_remote(
    api: str,
    doc: dict[str, Any],
    *,
    as_json: bool,
    token: str | None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Submit ``doc`` to a running API (``--api``), follow it, and exit as in-process."""
    import aiohttp

    out, err = out or sys.stdout, err or sys.stderr
    base = api.rstrip("/") + "/api/v1/verifications"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=90)
    try:
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            async with session.post(base, json=doc) as r:
                answer = await r.json(content_type=None)
                if r.status >= 300:
                    raise ConfigError(f"{api}: {r.status}: {answer.get('reason', answer)}")
            ident = answer["id"]
            err.write(f"verification {ident} at {base}/{ident}\n")
            while answer["status"] == "running":
                async with session.get(f"{base}/{ident}", params={"wait_s": "30"}) as r:
                    answer = await r.json(content_type=None)
                    if r.status >= 300:
                        raise ConfigError(f"{api}: {r.status}: {answer.get('reason', answer)}")
                progress = answer.get("progress") or {}
                err.write(f"step {progress.get('steps')}/{progress.get('total')}: {answer['state']}\n")
    except aiohttp.ClientError as exc:
        raise ConfigError(f"{api}: cannot reach the API: {exc}") from None
    if as_json:
        out.write(orjson.dumps(answer).decode() + "\n")
    else:
        out.write(doc_table(answer))
        out.write(f"verdict: {answer['state']}: {answer['reason']}\n")
    out.flush()
    if answer["status"] != "done":
        raise ConfigError(f"verification {ident} is {answer['status']}: {answer['reason']}")
    return EXIT[Outcome(answer["verdict"])]
