"""Preparation state as plain data, for checkpoints: numbers, strings and lists — never a pickle.

What a restart must not lose: each raw series' watermark (``last_ts``), a counter's previous value, a
gauge's liveness, a native histogram's previous histogram, the half-collected timestamps of classic
histogram groups, and each prepared series' watermark. How a series is *read* (its role, names, groups)
is not stored: it is parsed again from the labels, so a checkpoint cannot contradict the code reading it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from engine.preparation.context import Context
from engine.preparation.counters import CounterTrack
from engine.preparation.groups import Group
from engine.preparation.histograms import QuantileGroup
from engine.preparation.native import NativeState
from engine.preparation.quantiles import Hist
from engine.preparation.tracks import GaugeTrack, Track
from engine.raw import Labels, MetricKind

__all__ = ["TrackDoc", "apply_shared", "apply_track", "dump", "tracks_of"]


def num(value: float) -> float | str:
    """A float as JSON can hold it: non-finite ones as ``"nan"``, ``"inf"``, ``"-inf"``."""
    return value if math.isfinite(value) else str(value)


def unnum(value: Any) -> float:
    if type(value) is str and value in ("nan", "inf", "-inf"):
        return float(value)
    if type(value) not in (int, float):
        raise ValueError(f"expected a number, got {value!r:.40}")
    return float(value)


def _opt(value: float | None) -> float | str | None:
    return None if value is None else num(value)


def _unopt(value: Any) -> float | None:
    return None if value is None else unnum(value)


def _member(key: float | str) -> str:
    """A group member's key: a bucket bound (``"0.5"``, ``"inf"``) or ``"#sum"`` / ``"#count"``."""
    return f"#{key}" if isinstance(key, str) else repr(key)


def _unmember(text: Any) -> float | str:
    if type(text) is not str:
        raise ValueError("member keys are strings")
    return text[1:] if text.startswith("#") else float(text)


def _hist(h: Hist) -> list[Any]:
    return [
        h.schema,
        num(h.zero_threshold),
        num(h.zero_count),
        num(h.count),
        num(h.sum),
        [[i, num(c)] for i, c in h.positive.items()],
        [[i, num(c)] for i, c in h.negative.items()],
    ]


def _unhist(doc: Any) -> Hist:
    schema, zt, zc, count, sum_, pos, neg = doc
    return Hist(
        int(schema),
        unnum(zt),
        unnum(zc),
        unnum(count),
        unnum(sum_),
        {int(i): unnum(c) for i, c in pos},
        {int(i): unnum(c) for i, c in neg},
    )


def _native(n: NativeState) -> list[Any]:
    return [n.last_ts, n.live, None if n.prev is None else _hist(n.prev), n.prev_ts]


def dump(tracks: dict[Labels, Track], ctx: Context, clock: list[int]) -> dict[str, Any]:
    out_tracks = []
    for labels, track in tracks.items():
        extra: dict[str, Any] = {}
        if isinstance(track, GaugeTrack):
            extra["live"] = track.live
        elif isinstance(track, CounterTrack):
            extra["last_v"] = _opt(track.last_v)
        if track.native is not None:
            extra["native"] = _native(track.native)
        out_tracks.append(
            [
                [list(pair) for pair in labels],
                None if track.kind_in is None else track.kind_in.value,
                None if track.role is None else track.role.value,
                track.epoch,
                track.last_ts,
                extra,
            ]
        )
    groups = []
    for key, pending in ctx.groups.items():
        if not isinstance(pending, Group):  # pragma: no cover - every group is one
            continue
        g = pending
        doc: dict[str, Any] = {
            "sent": [[_member(m), [[ts, _opt(v)] for ts, v in sent.items()]] for m, sent in g.sent.items()],
            "prev": None if g.prev is None else [[_member(m), num(v)] for m, v in g.prev.items()],
            "done": g.done_ts,
            "newest": g.newest,
            "live": g.live,
        }
        if isinstance(g, QuantileGroup):
            doc["counted"] = sorted(g.counted)
        groups.append([list(key), doc])
    outputs = [[s, m, i, out.last_ts] for (s, m, i), out in ctx.outputs.items()]
    return {"clock": clock, "tracks": out_tracks, "groups": groups, "outputs": outputs}


@dataclass(frozen=True, slots=True)
class TrackDoc:
    kind: MetricKind | None
    role: str | None
    epoch: int
    last_ts: int
    extra: dict[str, Any]


def tracks_of(doc: dict[str, Any]) -> Iterator[tuple[Labels, TrackDoc]]:
    for labels, kind, role, epoch, last_ts, extra in doc["tracks"]:
        pairs = tuple((str(k), str(v)) for k, v in labels)
        if type(extra) is not dict:
            raise ValueError("track extras must be an object")
        yield (
            pairs,
            TrackDoc(None if kind is None else MetricKind(kind), role, int(epoch), int(last_ts), extra),
        )


def apply_track(track: Track, doc: TrackDoc, ctx: Context) -> bool:
    """Give ``track`` its saved state; ``False`` when it is now read differently (only time order is kept)."""
    track.epoch = doc.epoch
    track.last_ts = doc.last_ts
    current = None if track.role is None else track.role.value
    if current != doc.role:
        return False
    extra = doc.extra
    if isinstance(track, GaugeTrack):
        track.live = bool(extra.get("live", False))
    elif isinstance(track, CounterTrack):
        track.last_v = _unopt(extra.get("last_v"))
    native = extra.get("native")
    if native is not None:
        last_ts, live, prev, prev_ts = native
        n = track.native = NativeState(ctx, track.name, track.selector, track.service, track.instance)
        n.last_ts, n.live, n.prev_ts = int(last_ts), bool(live), int(prev_ts)
        n.prev = None if prev is None else _unhist(prev)
    return True


def apply_shared(doc: dict[str, Any], ctx: Context) -> None:
    """The groups' and prepared series' state, for those the restored tracks made again."""
    for service, metric, instance, last_ts in doc["outputs"]:
        out = ctx.outputs.get((service, metric, instance))
        if out is not None:
            out.last_ts = int(last_ts)
    for key, g_doc in doc["groups"]:
        pending = ctx.groups.get(tuple(str(k) for k in key))
        if not isinstance(pending, Group):
            continue
        g = pending
        g.sent = {_unmember(m): {int(ts): _unopt(v) for ts, v in sent} for m, sent in g_doc["sent"]}
        prev = g_doc["prev"]
        g.prev = None if prev is None else {_unmember(m): unnum(v) for m, v in prev}
        g.done_ts, g.newest, g.live = int(g_doc["done"]), int(g_doc["newest"]), bool(g_doc["live"])
        if isinstance(g, QuantileGroup):
            g.counted = {int(ts) for ts in g_doc.get("counted", ())}
        if g.sent:
            g.changed = True
            ctx.wait(g)
