from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import Direction, ProcessingGuarantee, load_config, redacted
from engine.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "vigil.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_the_example_config_is_valid_and_uses_the_embedded_broker() -> None:
    config = load_config(ROOT / "config" / "vigil.yaml")
    assert config.kafka.embedded
    assert config.kafka.topics.samples == "vigil.samples"
    assert config.rule_for("http_errors_total:rate").direction is Direction.HIGHER
    assert config.rule_for("something_else").sensitivity == "medium"


def test_the_built_in_defaults_are_the_example_config() -> None:
    """Without -c a user gets exactly what config/vigil.yaml spells out (the backtest's NAB figures hold for
    both)."""
    assert load_config(None).model_dump() == load_config(ROOT / "config" / "vigil.yaml").model_dump()


def test_configuration_is_frozen() -> None:
    config = load_config(None)
    with pytest.raises(ValueError, match="frozen"):
        config.kafka.partitions = 9  # type: ignore[misc]


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "kafka:\n  partitions: 2\n  bootstrap_servers: a:1\n")
    monkeypatch.setenv("VIGIL_KAFKA__PARTITIONS", "8")
    monkeypatch.setenv("VIGIL_RECEIVER__PORT", "9999")
    config = load_config(path)
    assert config.kafka.partitions == 8
    assert config.kafka.bootstrap_servers == "a:1"  # untouched keys of the section survive
    assert config.receiver.port == 9999


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kafka:\n  partitions: -1\n", "kafka.partitions: Input should be greater than or equal to 1"),
        ("kafka:\n  partitions: many\n", "kafka.partitions: Input should be a valid integer"),
        ("kafka:\n  bogus: 1\n", "kafka.bogus: Extra inputs are not permitted"),
        ("rules:\n  - match: '(['\n", "rules.0.match: Value error, invalid regular expression"),
        (
            "rules:\n  - match: x\n    direction: sideways\n",
            "rules.0.direction: Input should be 'higher', 'lower'",
        ),
        ("receiver:\n  tls:\n    cert_file: /x.pem\n", "tls needs both cert_file and key_file"),
        ("poller:\n  enabled: true\n", "poller.enabled needs at least one watch"),
        ("- a\n- b\n", "expected a mapping of sections at the top, got list"),
        ("kafka: [\n", "not valid YAML"),
        (b"kafka:\n  app_id: \xff\xfe\n", "cannot read"),
        ("&a [*a, *a]", "expected a mapping"),
    ],
)
def test_a_wrong_file_names_the_file_the_key_and_what_was_expected(
    tmp_path: Path, text: str | bytes, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_an_oversized_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "# " + "x" * (2 * 1024 * 1024) + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_config(path)


def test_secrets_are_masked(tmp_path: Path) -> None:
    path = write(
        tmp_path, "receiver:\n  auth:\n    bearer_token: s3cret-token\n    basic_password: hunter2\n"
    )
    config = load_config(path)
    shown = str(redacted(config))
    assert "s3cret-token" not in shown
    assert "hunter2" not in shown
    assert "s3cret-token" not in repr(config)
    assert config.receiver.auth.bearer_token is not None
    assert config.receiver.auth.bearer_token.get_secret_value() == "s3cret-token"


def test_config_check_prints_the_effective_config_and_exits_2_on_errors(tmp_path: Path) -> None:
    good = write(tmp_path, "receiver:\n  auth:\n    bearer_token: s3cret-token\n")
    ok = subprocess.run(
        [sys.executable, "-m", "vigil", "config", "check", "-c", str(good)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "partitions: 4" in ok.stdout
    assert "s3cret-token" not in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("detection:\n  warmup: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "vigil", "config", "check", "-c", str(bad)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{bad}: detection.warmup: Input should be greater than or equal to 2" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("receiver:\n  auth:\n    bearer_tokn: s3cr3t\n", "receiver.auth.bearer_tokn: Extra inputs"),
        ("receiver:\n  auth:\n    bearer_token: [s3cr3t]\n", "receiver.auth.bearer_token: Input should be"),
        ("receiver:\n  auth:\n    basic_password: 5535353\n", "receiver.auth.basic_password: Input"),
        ("receiver:\n  auth:\n    bearer_token: {s3cr3t: 1}\n", "receiver.auth.bearer_token: Input"),
        ("receiver:\n  auth: s3cr3t\n", "receiver.auth: Input should be"),
        ("kafka:\n  sasl_password: s3cr3t\n", "kafka.sasl_password: Extra inputs"),
    ],
)
def test_a_configuration_error_never_echoes_a_secret(tmp_path: Path, text: str, path: str) -> None:
    config = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    message = str(caught.value)
    assert path in message
    assert "s3cr3t" not in message
    assert "5535353" not in message


def test_config_check_does_not_print_a_misspelt_secret(tmp_path: Path) -> None:
    path = write(tmp_path, "receiver:\n  auth:\n    bearer_tokn: s3cr3t\n")
    result = subprocess.run(
        [sys.executable, "-m", "vigil", "config", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert "receiver.auth.bearer_tokn" in result.stderr
    assert "s3cr3t" not in result.stderr + result.stdout


def test_a_bad_environment_section_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_RECEIVER__AUTH", "{not json s3cr3t")
    with pytest.raises(ConfigError, match="environment: ") as caught:
        load_config(None)
    assert "s3cr3t" not in str(caught.value)


def test_the_worker_section_defaults_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIGIL_WORKER__METRICS_PORT", raising=False)
    worker = load_config(None).worker
    assert (worker.metrics_enabled, worker.metrics_host, worker.metrics_port) == (True, "127.0.0.1", 9203)
    monkeypatch.setenv("VIGIL_WORKER__METRICS_PORT", "0")
    monkeypatch.setenv("VIGIL_WORKER__METRICS_ENABLED", "false")
    worker = load_config(None).worker
    assert (worker.metrics_enabled, worker.metrics_port) == (False, 0)


def test_at_least_once_is_the_processing_guarantee_and_reaches_faust(tmp_path: Path) -> None:
    from engine.app import faust_settings

    config = load_config(write(tmp_path, "kafka:\n  processing_guarantee: at_least_once\n"))
    assert config.kafka.processing_guarantee is ProcessingGuarantee.AT_LEAST_ONCE
    assert load_config(None).kafka.processing_guarantee is ProcessingGuarantee.AT_LEAST_ONCE
    assert faust_settings(config)["processing_guarantee"] == "at_least_once"


def test_exactly_once_is_refused_saying_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "kafka:\n  processing_guarantee: exactly_once\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert f"{path}: kafka.processing_guarantee: " in message
    assert "Faust 0.15" in message
    assert all(issue in message for issue in ("517", "440", "323", "177"))
    assert "embedded broker cannot do transactions" in message
    assert "\n" not in message
    monkeypatch.setenv("VIGIL_KAFKA__PROCESSING_GUARANTEE", "exactly_once")
    with pytest.raises(ConfigError, match="exactly_once is not offered"):
        load_config(None)
