"""Label-set validation, and the cache that lets a repeated label set skip it.

A sender repeats the same series request after request, so the decoders look every label set up by its raw
encoding first (the bytes of a 1.0 series' label fields, or the tuple of symbol bytes a 2.0 series refers
to) and validate and build a :data:`~engine.raw.Labels` only for keys they have not seen.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable, Sequence
from typing import NoReturn

from connectors.remote_write.errors import BAD_REQUEST, DecodeError, show
from connectors.remote_write.limits import Limits
from engine.raw import Labels

METRIC_NAME = "__name__"


class LabelCache:
    """Validated label sets by raw key, bounded like a cheap LRU: two generations of at most
    ``capacity / 2`` entries each. Lookups go to ``young``; a hit in ``old`` is copied to ``young``;
    :meth:`rotate`, called between requests, retires ``old`` once ``young`` is full. Keys used in the
    last ``capacity / 2`` insertions therefore always survive, and memory stays within ``capacity``
    entries plus one request's worth.
    """

    __slots__ = ("_half", "old", "young")

    def __init__(self, capacity: int) -> None:
        if capacity < 2:
            raise ValueError("the label cache needs room for at least 2 label sets")
        self._half = capacity // 2
        self.young: dict[Hashable, Labels] = {}
        self.old: dict[Hashable, Labels] = {}

    def __len__(self) -> int:
        return len(self.young) + len(self.old)

    def recall(self, key: Hashable) -> Labels | None:
        """The slow half of a lookup, after ``young.get(key)`` missed."""
        labels = self.old.get(key)
        if labels is not None:
            self.young[key] = labels
        return labels

    def rotate(self) -> None:
        if len(self.young) >= self._half:
            self.old = self.young
            self.young = {}

    def clear(self) -> None:
        self.young = {}
        self.old = {}


def validate(pairs: Sequence[tuple[bytes, bytes]], limits: Limits) -> Labels:
    """Check one series' raw label pairs and build its labels, or raise a 400 that names the bad label.

    Names must be non-empty UTF-8 (Prometheus 3 accepts any, the classic ``[a-zA-Z_][a-zA-Z0-9_]*`` among
    them), values UTF-8, both within the length limits (in bytes); names strictly increasing (sorted, no
    duplicates); ``__name__`` present and non-empty; at most ``max_labels`` pairs.
    """
    if len(pairs) > limits.max_labels:
        raise DecodeError(
            BAD_REQUEST,
            f"series {_series_hint(pairs)} has {len(pairs)} labels, "
            f"more than the limit of {limits.max_labels}",
        )
    labels: list[tuple[str, str]] = []
    previous = b""
    for raw_name, raw_value in pairs:
        try:
            name = raw_name.decode()
        except UnicodeDecodeError:
            raise DecodeError(
                BAD_REQUEST,
                f"label name is not valid UTF-8: {show(raw_name)} in series {_series_hint(pairs)}",
            ) from None
        try:
            value = raw_value.decode()
        except UnicodeDecodeError:
            raise DecodeError(
                BAD_REQUEST,
                f"value of label {show(name)} is not valid UTF-8: {show(raw_value)} "
                f"in series {_series_hint(pairs)}",
            ) from None
        if (
            not name
            or raw_name <= previous
            or len(raw_name) > limits.max_label_name_length
            or len(raw_value) > limits.max_label_value_length
        ):
            _refuse(name, raw_name, raw_value, previous, pairs, limits)
        previous = raw_name
        labels.append((sys.intern(name), value))
    metric = dict(labels).get(METRIC_NAME)
    if metric is None:
        raise DecodeError(
            BAD_REQUEST, f"series without a metric name (no __name__ label): {_series_hint(pairs)}"
        )
    if not metric:
        raise DecodeError(BAD_REQUEST, f"empty __name__ label in series {_series_hint(pairs)}")
    return tuple(labels)


def _refuse(
    name: str,
    raw_name: bytes,
    raw_value: bytes,
    previous: bytes,
    pairs: Sequence[tuple[bytes, bytes]],
    limits: Limits,
) -> NoReturn:
    """Raise the 400 for the one label :func:`validate` found wrong."""
    where = f"in series {_series_hint(pairs)}"
    if not name:
        raise DecodeError(BAD_REQUEST, f"empty label name {where}")
    if raw_name == previous:
        raise DecodeError(BAD_REQUEST, f"duplicate label {show(name)} {where}")
    if raw_name < previous:
        raise DecodeError(
            BAD_REQUEST,
            f"labels not sorted by name: {show(name)} comes after {show(previous.decode())} {where}",
        )
    if len(raw_name) > limits.max_label_name_length:
        raise DecodeError(
            BAD_REQUEST,
            f"label name {show(name)} is {len(raw_name)} bytes long, more than the limit of "
            f"{limits.max_label_name_length}",
        )
    raise DecodeError(
        BAD_REQUEST,
        f"label {show(name)} has a value of {len(raw_value)} bytes, more than the limit of "
        f"{limits.max_label_value_length} ({where})",
    )


def _series_hint(pairs: Sequence[tuple[bytes, bytes]]) -> str:
    """The series as ``{__name__='up', job='node'}``, shortened, to say where a bad label is."""
    shown = ", ".join(
        f"{name.decode(errors='replace')}={value.decode(errors='replace')!r}" for name, value in pairs[:8]
    )
    if len(pairs) > 8:
        shown += ", ..."
    if len(shown) > 200:
        shown = shown[:200] + "..."
    return "{" + shown + "}"
