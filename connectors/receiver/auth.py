"""Who may write, and over what: bearer token / basic auth as Prometheus' ``remote_write`` sends them, and
the server's TLS context. Only the write endpoint needs credentials; ``/metrics`` and the health endpoints
stay open for probes and scrapes, as in Prometheus."""

from __future__ import annotations

import base64
import binascii
import hmac
import ssl
from pathlib import Path
from typing import Any

from engine.config import AuthConfig, TLSConfig
from engine.errors import ConfigError


def _secret(value: Any, path: Path | None, what: str) -> bytes | None:
    """``what`` is the setting's key path (``receiver.auth.bearer_token``), for messages."""
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{what}_file: cannot read {path}: {exc}") from None
        if not text:
            raise ConfigError(f"{what}_file: {path} is empty")
        return text.encode()
    if value is not None:
        secret: str = value.get_secret_value()
        if not secret:
            raise ConfigError(f"{what}: must not be empty")
        return secret.encode()
    return None


class Auth:
    """Bearer token and/or basic auth, as Prometheus' ``remote_write`` sends them; either one admits.

    Secrets are read once at start-up (from the config, i.e. also from ``VIGIL_RECEIVER__AUTH__*``, or from
    files), compared in constant time, and never logged.
    """

    def __init__(self, config: AuthConfig, section: str = "receiver.auth") -> None:
        """``section`` is where ``config`` sits in the configuration (``api.auth``), for messages."""
        if config.bearer_token is not None and config.bearer_token_file is not None:
            raise ConfigError(f"{section}: set bearer_token or bearer_token_file, not both")
        if config.basic_password is not None and config.basic_password_file is not None:
            raise ConfigError(f"{section}: set basic_password or basic_password_file, not both")
        self._bearer = _secret(config.bearer_token, config.bearer_token_file, f"{section}.bearer_token")
        password = _secret(config.basic_password, config.basic_password_file, f"{section}.basic_password")
        if (config.basic_username is None) != (password is None):
            raise ConfigError(f"{section}: basic auth needs both basic_username and a password")
        self._basic = None if password is None else (config.basic_username or "").encode() + b":" + password

    @property
    def enabled(self) -> bool:
        return self._bearer is not None or self._basic is not None

    @property
    def challenges(self) -> list[str]:
        out = []
        if self._bearer is not None:
            out.append('Bearer realm="vigil"')
        if self._basic is not None:
            out.append('Basic realm="vigil", charset="UTF-8"')
        return out

    def admits(self, authorization: str | None) -> bool:
        if not self.enabled:
            return True
        if not authorization:
            return False
        scheme, _, credentials = authorization.strip().partition(" ")
        scheme = scheme.lower()
        given = credentials.strip().encode("utf-8", "surrogateescape")
        if scheme == "bearer" and self._bearer is not None:
            return hmac.compare_digest(given, self._bearer)
        if scheme == "basic" and self._basic is not None:
            try:
                decoded = base64.b64decode(given, validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(decoded, self._basic)
        return False


def ssl_context(tls: TLSConfig, section: str = "receiver.tls") -> ssl.SSLContext | None:
    """The server's TLS context, or ``None`` for plain HTTP; ``section`` names ``tls`` in messages."""
    if tls.cert_file is None or tls.key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{section}: cannot load {tls.cert_file} / {tls.key_file}: {exc}") from None
    return context
