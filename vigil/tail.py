"""Printing verdict events for people (``vigil tail``)."""

from __future__ import annotations

from typing import Any


def describe(event: dict[str, Any]) -> str:
    """One line for a CloudEvent from ``vigil.verdicts``."""
    data = event.get("data") or {}
    kind = str(event.get("type", "?")).removeprefix("vigil.")
    if kind == "source.error" and isinstance(data, dict):
        return (
            f"{event.get('time', '?')}  {kind:<17} {data.get('source')}: watch {data.get('watch')} query "
            f"{data.get('query')} disabled ({data.get('kind')}): {str(data.get('message'))[:300]}"
        )
    if kind.startswith("verification.") and isinstance(data, dict):
        progress = data.get("progress") or {}
        step = f"step {progress.get('steps')}/{progress.get('total')}"
        return (
            f"{event.get('time', '?')}  {kind:<26} {data.get('service')} {data.get('id')}: "
            f"{data.get('verdict') or data.get('status')} ({step}): {str(data.get('reason'))[:300]}"
        )
    where = f"{data.get('service')}/{data.get('metric')}"
    if data.get("instance"):
        where += f" [{data['instance']}]"
    expected = data.get("expected") or {}
    window = data.get("window") or {}
    return (
        f"{event.get('time', '?')}  {kind:<17} {where}  value={_num(data.get('value'))} "
        f"expected=[{_num(expected.get('low'))}, {_num(expected.get('high'))}] "
        f"score={_num(data.get('score'))}  window {window.get('start', '?')} → {window.get('end', '?')}"
    )


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)
