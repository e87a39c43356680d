"""Which remote-write version a request speaks, from its Content-Type and Content-Encoding headers."""

from __future__ import annotations

from connectors.remote_write.errors import UNSUPPORTED, DecodeError, show

V1 = "1.0"
V2 = "2.0"
MEDIA_TYPE = "application/x-protobuf"
_PROTOS = {"prometheus.writerequest": V1, "io.prometheus.write.v2.request": V2}
_EXPECTED = (
    f"expected {MEDIA_TYPE} (remote write 1.0) or {MEDIA_TYPE};proto=io.prometheus.write.v2.Request (2.0)"
)


def protocol_version(content_type: str | None, content_encoding: str | None) -> str:
    """``"1.0"`` or ``"2.0"``; anything else is a :class:`DecodeError` with status 415.

    Media type, parameter names and values are matched case-insensitively, spaces and quotes around values
    are ignored, and so are parameters other than ``proto``. Bodies must be snappy-compressed (block
    format): a missing Content-Encoding is refused like a wrong one.

    >>> protocol_version("application/x-protobuf", "snappy")
    '1.0'
    >>> protocol_version('Application/X-Protobuf ; proto="io.prometheus.write.v2.Request"', "Snappy")
    '2.0'
    """
    version = _version(content_type)
    if content_encoding is None or not content_encoding.strip():
        raise DecodeError(
            UNSUPPORTED, "missing Content-Encoding: remote write bodies must be snappy-compressed"
        )
    if content_encoding.strip().lower() != "snappy":
        raise DecodeError(
            UNSUPPORTED,
            f"unsupported Content-Encoding {show(content_encoding)}: "
            "remote write bodies must be snappy-compressed",
        )
    return version


def _version(content_type: str | None) -> str:
    if content_type is None or not content_type.strip():
        raise DecodeError(UNSUPPORTED, f"missing Content-Type: {_EXPECTED}")
    media_type, *parameters = content_type.split(";")
    if media_type.strip().lower() != MEDIA_TYPE:
        raise DecodeError(UNSUPPORTED, f"unsupported Content-Type {show(content_type)}: {_EXPECTED}")
    proto: str | None = None
    for parameter in parameters:
        if not parameter.strip():
            continue
        name, equals, value = parameter.partition("=")
        if not equals:
            raise DecodeError(UNSUPPORTED, f"malformed Content-Type {show(content_type)}: {_EXPECTED}")
        if name.strip().lower() != "proto":
            continue
        if proto is not None:
            raise DecodeError(
                UNSUPPORTED, f"Content-Type {show(content_type)} names proto twice: {_EXPECTED}"
            )
        proto = value.strip()
        if len(proto) >= 2 and proto[0] == proto[-1] == '"':
            proto = proto[1:-1].strip()
    if proto is None:
        return V1
    version = _PROTOS.get(proto.lower())
    if version is None:
        raise DecodeError(UNSUPPORTED, f"unsupported proto={show(proto)} in Content-Type: {_EXPECTED}")
    return version
