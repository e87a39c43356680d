"""What a remote-write request may contain, validated once per label set."""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import ReceiverConfig


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on a request. The defaults are :class:`~engine.config.ReceiverConfig`'s and a 10-minute
    allowance for clocks running ahead."""

    max_body_bytes: int = 32 * 1024 * 1024  # decompressed
    max_labels: int = 64
    max_label_name_length: int = 256  # bytes of UTF-8
    max_label_value_length: int = 4096  # bytes of UTF-8
    max_future_ms: int = 600_000  # samples further ahead of "now" are dropped and counted

    @classmethod
    def from_config(cls, config: ReceiverConfig, max_future_ms: int) -> Limits:
        return cls(
            max_body_bytes=config.max_body_bytes,
            max_labels=config.max_labels,
            max_label_name_length=config.max_label_name_length,
            max_label_value_length=config.max_label_value_length,
            max_future_ms=max_future_ms,
        )
