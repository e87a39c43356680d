"""Decode Prometheus remote-write requests (1.0 and 2.0) into :class:`~engine.raw.WriteRequest`.

``Decoder.decode`` takes the body and the two headers as they arrived and either returns the request or
raises :class:`DecodeError` with the HTTP status to answer (400, 413 or 415) and a one-line reason. No
input bytes make it raise anything else, and a body is never decompressed past ``max_body_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cramjam

from connectors.remote_write.errors import BAD_REQUEST, TOO_LARGE, DecodeError
from connectors.remote_write.labels import LabelCache
from connectors.remote_write.limits import Limits
from connectors.remote_write.negotiate import V1, V2, protocol_version
from connectors.remote_write.proto import remote_v1_pb2, remote_v2_pb2
from connectors.remote_write.v1 import decode_v1
from connectors.remote_write.v2 import decode_v2
from engine.raw import WriteRequest

__all__ = ["DecodeError", "Decoded", "Decoder", "Limits", "bare_decode"]

#: Label sets a decoder remembers by default (each costs roughly 1 kB).
DEFAULT_CACHE_SIZE = 65_536


@dataclass(slots=True)
class Decoded:
    request: WriteRequest
    version: str  # "1.0" or "2.0"
    future_rejected: int = 0  # samples dropped for being more than max_future_ms ahead of now


class Decoder:
    """Decodes requests one after the other, remembering validated label sets across them.

    Not thread-safe: give each thread (or event loop) its own.
    """

    def __init__(self, limits: Limits, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.limits = limits
        self._cache = LabelCache(cache_size)

    @property
    def cached_label_sets(self) -> int:
        return len(self._cache)

    def decode(
        self, body: bytes, content_type: str | None, content_encoding: str | None, now_ms: int
    ) -> Decoded:
        """The request in ``body``; samples later than ``now_ms + max_future_ms`` are dropped and counted."""
        version = protocol_version(content_type, content_encoding)
        raw = decompress(body, self.limits.max_body_bytes)
        self._cache.rotate()
        limit_ms = now_ms + self.limits.max_future_ms
        if version == V1:
            request, rejected = decode_v1(raw, self.limits, self._cache, limit_ms)
        else:
            request, rejected = decode_v2(raw, self.limits, self._cache, limit_ms)
        return Decoded(request, version, rejected)


def decompress(body: bytes, max_bytes: int) -> bytes:
    """Snappy block decompression that reads the length the body claims first, and refuses (413) before
    allocating anything when it is over ``max_bytes``."""
    if len(body) > _max_compressed_length(max_bytes):
        raise DecodeError(
            TOO_LARGE, f"body of {len(body)} bytes cannot decompress to at most {max_bytes} bytes"
        )
    try:
        claimed = cramjam.snappy.decompress_raw_len(body)
    except cramjam.DecompressionError as error:
        raise DecodeError(BAD_REQUEST, f"corrupt snappy body: {error}") from None
    if claimed > max_bytes:
        raise DecodeError(
            TOO_LARGE, f"body decompresses to {claimed} bytes, more than the limit of {max_bytes}"
        )
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except cramjam.DecompressionError as error:
        raise DecodeError(BAD_REQUEST, f"corrupt snappy body: {error}") from None


def _max_compressed_length(raw_length: int) -> int:
    """Snappy's worst case (``MaxCompressedLength``) for ``raw_length`` bytes."""
    return 32 + raw_length + raw_length // 6


def bare_decode(body: bytes, version: str) -> int:
    """The baseline benchmarks compare against: snappy, a plain protobuf parse and a naive walk building
    label tuples and sample lists, without limits, validation or caching. Returns the sample count."""
    raw = bytes(cramjam.snappy.decompress_raw(body))
    series: list[tuple[tuple[tuple[str, str], ...], list[tuple[int, float]]]] = []
    if version == V1:
        request_v1 = remote_v1_pb2.WriteRequest()
        request_v1.ParseFromString(raw)
        for ts in request_v1.timeseries:
            labels = tuple((label.name, label.value) for label in ts.labels)
            series.append((labels, [(sample.timestamp, sample.value) for sample in ts.samples]))
    elif version == V2:
        request_v2 = remote_v2_pb2.Request()
        request_v2.ParseFromString(raw)
        symbols = list(request_v2.symbols)
        for ts2 in request_v2.timeseries:
            refs = ts2.labels_refs
            labels = tuple((symbols[refs[i]], symbols[refs[i + 1]]) for i in range(0, len(refs), 2))
            series.append((labels, [(sample.timestamp, sample.value) for sample in ts2.samples]))
    else:
        raise ValueError(f"unknown remote-write version {version!r}")
    return sum(len(samples) for _, samples in series)
