"""The credentials and TLS of one source: request headers and an SSL context, built from its config.

Secrets come inline (also from ``VIGIL_*`` variables), from a file or from a named environment variable.
A file is read again for every request, so a rotated token (e.g. a Kubernetes service-account token) is
used as soon as it changes; if it cannot be read later, the last good value is kept. No secret is ever put
in a log line or an error message: errors name the key and the file, never the content.
"""

from __future__ import annotations

import base64
import logging
import os
import ssl
from pathlib import Path

from pydantic import SecretStr

from engine.config import SourceConfig
from engine.errors import ConfigError

log = logging.getLogger(__name__)


class _Secret:
    def __init__(self, where: str, inline: SecretStr | None, path: Path | None, env: str | None) -> None:
        self.where = where
        self.path = path
        if path is not None:
            self._value = self._read(path)
        elif env is not None:
            if not os.environ.get(env):
                raise ConfigError(f"{where}_env: environment variable {env} is not set or empty")
            self._value = os.environ[env]
        elif inline is not None:
            self._value = inline.get_secret_value()
            if not self._value:
                raise ConfigError(f"{where}: must not be empty")
        else:
            self._value = ""

    def _read(self, path: Path) -> str:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self.where}_file: cannot read {path}: {type(exc).__name__}") from None
        if not text:
            raise ConfigError(f"{self.where}_file: {path} is empty")
        return text

    def value(self) -> str:
        if self.path is not None:
            try:
                self._value = self._read(self.path)
            except ConfigError as exc:
                log.warning("%s; using the value read before", exc)
        return self._value


class Credentials:
    """Headers for every request to one source."""

    def __init__(self, source: SourceConfig) -> None:
        where = f"poller.sources.{source.name}"
        self._bearer = _Secret(
            f"{where}.bearer_token", source.bearer_token, source.bearer_token_file, source.bearer_token_env
        )
        self._password = _Secret(
            f"{where}.basic_password",
            source.basic_password,
            source.basic_password_file,
            source.basic_password_env,
        )
        self._username = source.basic_username or ""
        self._headers = {name: value.get_secret_value() for name, value in source.headers.items()}

    def scrub(self, text: str) -> str:
        """``text`` with every secret of this source replaced by ``***`` (a server may echo one back)."""
        secrets = [self._bearer.value(), self._password.value(), *self._headers.values()]
        for secret in sorted(secrets, key=len, reverse=True):
            if len(secret) >= 3:
                text = text.replace(secret, "***")
        return text

    def headers(self) -> dict[str, str]:
        out = dict(self._headers)
        if token := self._bearer.value():
            out["Authorization"] = f"Bearer {token}"
        elif self._username:
            pair = f"{self._username}:{self._password.value()}".encode()
            out["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        return out


def ssl_context(source: SourceConfig) -> ssl.SSLContext | None:
    """The client TLS context, or ``None`` for plain http without TLS settings."""
    tls = source.tls
    if not source.url.startswith("https://") and tls == type(tls)():
        return None
    where = f"poller.sources.{source.name}.tls"
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file is not None and tls.key_file is not None:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{where}: cannot load certificates: {type(exc).__name__}: {exc.strerror or ''}"
        ) from None
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
