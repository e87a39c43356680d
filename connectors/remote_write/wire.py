"""Protobuf wire-format helpers for the decoders' fast paths.

The fast paths read the layouts Prometheus actually sends (a sample is ``12 10 09 <8-byte double> 10
<6-byte varint>``, or ``12 07 10 <6-byte varint>`` when the value is 0) straight from the bytes, mostly
with C-level ``bytes``, ``re`` and ``struct`` calls. Whatever they do not recognise raises
:class:`Fallback`, and the caller hands the series to the generated protobuf classes instead, so every
input is decoded exactly as protobuf defines it; the fast paths only decide how quickly.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from functools import cache, lru_cache
from typing import Any

#: A sample field with a value and a 6-byte timestamp (Unix ms from 1971 to 2109), and one whose value is
#: 0.0 (proto3 leaves it out).
SAMPLE = b"\x12\x10\x09"
SAMPLE_ZERO = b"\x12\x07\x10"
_SAMPLES_OR_ZERO = re.compile(rb"(?:(?:\x12\x10\x09.{8}|\x12\x07)\x10[\x80-\xff]{5}[\x00-\x7f])+", re.DOTALL)
_SAMPLE_PARTS = re.compile(rb"(?:\x12\x10\x09(.{8})|\x12\x07)\x10([\x80-\xff]{5}[\x00-\x7f])", re.DOTALL)
_VARINT_BYTES = re.compile(rb"[\x80-\xff]*[\x00-\x7f]")
unpack_double = struct.Struct("<d").unpack_from
_pack_bits = struct.Struct("<Q").pack
_INT64_SIGN = 1 << 63
_UINT64 = 1 << 64


class Fallback(Exception):
    """This layout is not one the fast path reads: decode the series with protobuf."""


def stamp6(raw: bytes) -> int:
    """A 6-byte varint, the size of every Unix-ms timestamp from 1971 to 2109.

    >>> stamp6(bytes([0xc0, 0xe2, 0xf3, 0xe5, 0xb2, 0x32]))
    1731622400320
    """
    x = int.from_bytes(raw, "little")
    if len(raw) != 6 or x & 0x808080808080 != 0x008080808080:
        raise Fallback
    return (
        (x & 0x7F)
        | (x >> 1 & 0x3F80)
        | (x >> 2 & 0x1FC000)
        | (x >> 3 & 0xFE00000)
        | (x >> 4 & 0x7F0000000)
        | (x >> 5 & 0x3F800000000)
    )


class Stamps(dict[bytes, int]):
    """Decoded 6-byte timestamps of one request; a request's series mostly share a few scrape times."""

    def __missing__(self, raw: bytes) -> int:
        value = self[raw] = stamp6(raw)
        return value


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The unsigned varint at ``pos`` and the position after it.

    >>> read_varint(b"\\x96\\x01", 0)
    (150, 2)
    """
    value = shift = 0
    for end in range(pos, min(pos + 10, len(buf))):
        byte = buf[end]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & (_UINT64 - 1), end + 1
        shift += 7
    raise Fallback


def signed64(value: int) -> int:
    """An int64 read as an unsigned varint."""
    return value - _UINT64 if value & _INT64_SIGN else value


def read_samples(
    buf: bytes, start: int, stamps: Stamps, limit_ms: int
) -> tuple[list[tuple[int, float]], int]:
    """Every sample field from ``start`` to the end of ``buf``, and how many were later than ``limit_ms``
    (those are left out)."""
    values: Sequence[float]
    count, rest = divmod(len(buf) - start, 18)
    fields: Sequence[Any] = ()
    if rest == 0 and count:
        if count <= _STRUCTS_UP_TO:
            fields = _samples_struct(count).unpack_from(buf, start)
        else:
            fields = [field for sample in _SAMPLE_STRUCT.iter_unpack(buf[start:]) for field in sample]
    if fields and fields[0::4].count(SAMPLE) == count and fields[2::4].count(0x10) == count:
        values = fields[1::4]
        times = list(map(stamps.__getitem__, fields[3::4]))
    elif _SAMPLES_OR_ZERO.fullmatch(buf, start):
        parts = _SAMPLE_PARTS.findall(buf, start)
        values = [unpack_double(value)[0] if value else 0.0 for value, _ in parts]
        times = [stamps[stamp] for _, stamp in parts]
    else:
        raise Fallback
    if max(times) > limit_ms:
        kept = [(time, value) for time, value in zip(times, values, strict=True) if time <= limit_ms]
        return kept, len(times) - len(kept)
    return list(zip(times, values, strict=True)), 0


_STRUCTS_UP_TO = 64
_SAMPLE_STRUCT = struct.Struct("<3sdB6s")


@lru_cache(maxsize=_STRUCTS_UP_TO)
def _samples_struct(count: int) -> struct.Struct:
    """``count`` value-and-timestamp samples: (field header, value, timestamp tag, timestamp) each."""
    return struct.Struct("<" + "3sdB6s" * count)


def samples_from_bits(samples: Iterable[Any]) -> list[tuple[int, float]]:
    """(timestamp, value) pairs from ``SampleBits`` messages, the value's bits kept as they are."""
    return [(sample.timestamp, unpack_double(_pack_bits(sample.value))[0]) for sample in samples]


class _Varints(dict[bytes, int]):
    """uint32 varints by their bytes: the 1- and 2-byte ones are stored, longer ones decoded on the spot."""

    def __missing__(self, raw: bytes) -> int:
        value, end = read_varint(raw, 0)
        if end != len(raw):
            raise Fallback
        return value & 0xFFFFFFFF


@cache
def _varints() -> _Varints:
    table = _Varints({bytes([low]): low for low in range(0x80)})
    table.update((bytes([low | 0x80, high]), low | high << 7) for high in range(0x80) for low in range(0x80))
    return table


def uint32s(raw: bytes) -> list[int] | bytes:
    """A packed repeated uint32 field's payload as numbers (bytes iterate as their numbers when every
    varint is one byte long)."""
    if raw.isascii():
        return raw
    if raw[-1] >= 0x80:
        raise Fallback
    return list(map(_varints().__getitem__, _VARINT_BYTES.findall(raw)))
