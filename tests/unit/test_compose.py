"""docker-compose.yml cannot run here (no Docker): check what it refers to exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from typer.main import get_command

from vigil.cli import app

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return doc


def vigil_commands() -> set[str]:
    group = get_command(app)
    return set(group.commands)  # type: ignore[attr-defined]


def test_every_vigil_service_runs_an_existing_command() -> None:
    services = compose()["services"]
    vigil_services = {name: s for name, s in services.items() if s.get("image") == "vigil:local"}
    assert {"ingest", "worker"} <= set(vigil_services)
    for name, service in vigil_services.items():
        command = service["command"]
        assert command[0] in vigil_commands(), f"{name}: `vigil {command[0]}` does not exist"
        if "-c" in command:
            assert (ROOT / command[command.index("-c") + 1]).is_file()
        assert service["environment"]["VIGIL_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_every_mounted_file_exists() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_dockerfile_copies_only_what_exists() -> None:
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for part in line.split()[1:-1]:
                assert (ROOT / part).exists(), part


def test_kafka_runs_in_kraft_mode_with_the_official_image() -> None:
    kafka = compose()["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_prometheus_remote_writes_to_the_ingest_service() -> None:
    prometheus = yaml.safe_load((ROOT / "config" / "prometheus.yml").read_text())
    assert prometheus["remote_write"][0]["url"] == "http://ingest:9201/api/v1/write"


def run_kafka_settings() -> dict[str, str]:
    """The fixed server properties tests/kafka/run-kafka.sh writes (values without shell variables)."""
    script = (ROOT / "tests" / "kafka" / "run-kafka.sh").read_text()
    block = script.split('cat >"$dir/server.properties" <<EOF\n', 1)[1].split("\nEOF\n", 1)[0]
    pairs = (line.split("=", 1) for line in block.splitlines() if "=" in line and not line.startswith("#"))
    return {key: value for key, value in pairs if "$" not in value}


def test_kafka_has_the_version_and_settings_of_the_tests() -> None:
    kafka = compose()["services"]["kafka"]
    pom = (ROOT / "tests" / "kafka" / "pom.xml").read_text()
    version = pom.split("<kafka.version>", 1)[1].split("</kafka.version>", 1)[0]
    assert kafka["image"] == f"apache/kafka:{version}"
    settings = run_kafka_settings()
    assert {"process.roles", "auto.create.topics.enable", "broker.session.timeout.ms"} <= settings.keys()
    environment = {k: str(v) for k, v in kafka["environment"].items()}
    for key, value in settings.items():
        name = "KAFKA_" + key.upper().replace(".", "_")
        assert environment.get(name) == value, (
            f"docker-compose.yml: {name} should be {value!r} as in the tests"
        )
