"""Prometheus remote-write protocol: decoding 1.0 and 2.0 requests into :mod:`engine.raw` objects."""

from connectors.remote_write.decode import Decoded, DecodeError, Decoder, Limits, bare_decode
from connectors.remote_write.negotiate import protocol_version

__all__ = ["DecodeError", "Decoded", "Decoder", "Limits", "bare_decode", "protocol_version"]
