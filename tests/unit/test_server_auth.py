"""The receiver's and the API's auth and TLS settings: errors name the section they come from."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from connectors.receiver.auth import Auth, ssl_context
from engine.config import AuthConfig, TLSConfig
from engine.errors import ConfigError


@pytest.mark.parametrize("section", ["receiver.auth", "api.auth"])
def test_auth_errors_name_their_section_and_never_the_secret(section: str, tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=rf"^{section}\.bearer_token_file: .* is empty$"):
        Auth(AuthConfig(bearer_token_file=empty), section)
    with pytest.raises(ConfigError, match=rf"^{section}\.bearer_token_file: cannot read"):
        Auth(AuthConfig(bearer_token_file=tmp_path / "missing"), section)
    with pytest.raises(ConfigError, match=rf"^{section}: basic auth needs both") as caught:
        Auth(AuthConfig(basic_password=SecretStr("hunter2-secret")), section)
    assert "hunter2" not in str(caught.value)


def test_tls_errors_name_their_section(tmp_path: Path) -> None:
    bad = tmp_path / "cert.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"^api\.tls: cannot load"):
        ssl_context(TLSConfig(cert_file=bad, key_file=bad), "api.tls")
