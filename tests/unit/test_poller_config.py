"""The ``poller:`` section: sources (and their secrets) and watches, with clear errors and no secret
ever echoed."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import load_config, redacted
from engine.errors import ConfigError


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "vigil.yaml"
    path.write_text(text)
    return load_config(path)


def failure(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    return str(caught.value)


SOURCE = "poller:\n  sources:\n    - name: main\n"


def test_a_source_needs_only_name_and_url(tmp_path: Path) -> None:
    config = load_config(None)
    assert config.poller.sources == ()
    loaded = load(tmp_path, SOURCE + "      url: http://127.0.0.1:9090/\n")
    (source,) = loaded.poller.sources  # type: ignore[attr-defined]
    assert source.base_url == "http://127.0.0.1:9090"
    assert (source.timeout_s, source.max_concurrency, source.retries) == (30.0, 4, 5)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("      url: ftp://h\n", "url must be http://"),
        ("      url: http://\n", "url must be http://"),
        ("      url: http://h/?x=1\n", "query string"),
        ("      url: http://h\n      timeout_s: 0\n", "timeout_s: Input should be greater than 0"),
        ("      url: http://h\n      max_concurrency: 0\n", "max_concurrency"),
        ("      url: http://h\n      tls: {cert_file: /c.pem}\n", "both cert_file and key_file"),
        ("      url: http://h\n      basic_username: u\n", "needs both basic_username and basic_password"),
        (
            "      url: http://h\n      bearer_token: a\n      bearer_token_file: /t\n",
            "one way only, not bearer_token and bearer_token_file",
        ),
        (
            "      url: http://h\n      bearer_token: a\n      basic_username: u\n      basic_password: p\n",
            "not both",
        ),
        (
            "      url: http://h\n      bearer_token: a\n      headers: {Authorization: x}\n",
            "Authorization header",
        ),
    ],
)
def test_bad_sources_are_refused_clearly(tmp_path: Path, extra: str, expected: str) -> None:
    assert expected in failure(tmp_path, SOURCE + extra)


@pytest.mark.parametrize(
    "extra",
    [
        "      url: http://admin:hunter2-secret@h:9090\n",
        "      url: http://h\n      bearer_token: [hunter2-secret]\n",
        "      url: http://h\n      headers: {X-Key: [hunter2-secret]}\n",
        "      url: http://h\n      basic_username: u\n      basic_password: {a: hunter2-secret}\n",
        "      url: http://h\n      bearer_tokn: hunter2-secret\n",
    ],
)
def test_errors_never_echo_a_secret(tmp_path: Path, extra: str) -> None:
    message = failure(tmp_path, SOURCE + extra)
    assert "poller.sources.0" in message
    assert "hunter2" not in message


def test_config_check_masks_secrets(tmp_path: Path) -> None:
    text = (
        SOURCE
        + "      url: http://h\n      bearer_token: hunter2-secret\n      headers: {X-Scope-OrgID: t1}\n"
    )
    shown = str(redacted(load(tmp_path, text)))  # type: ignore[arg-type]
    assert "hunter2" not in shown
    assert "t1" not in shown
