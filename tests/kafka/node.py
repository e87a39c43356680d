"""Apache Kafka nodes for the tests, through ``run-kafka.sh`` (the same script people run by hand)."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from connectors.broker import free_port

SCRIPT = Path(__file__).resolve().parent / "run-kafka.sh"
START_TIMEOUT_S = 180


@dataclass
class KafkaNode:
    """One KRaft node (broker and controller) on loopback, its data in ``data_dir``."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    properties: tuple[str, ...] = ()
    pid: int | None = None
    #: seconds the last start took (script start to "accepts clients")
    start_seconds: float = 0.0

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> KafkaNode:
        started = time.monotonic()
        result = subprocess.run(
            [str(SCRIPT), str(self.data_dir), str(self.port), *self.properties],
            env=dict(os.environ, KAFKA_START_TIMEOUT=str(START_TIMEOUT_S), **self.env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S + 60,
            check=False,
        )
        assert result.returncode == 0, f"run-kafka.sh failed:\n{result.stdout}\n{result.stderr}"
        self.pid = int(result.stdout.split()[-1])
        self.start_seconds = time.monotonic() - started
        return self

    def kill(self) -> None:
        """SIGKILL the broker JVM (what a crash does); the data stays on disk."""
        pid, self.pid = self.pid, None
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and not _zombie(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        subprocess.run([str(SCRIPT), "--stop", str(self.data_dir)], check=True, timeout=60)
        self.pid = None

    @property
    def alive(self) -> bool:
        return self.pid is not None and Path(f"/proc/{self.pid}").exists() and not _zombie(self.pid)

    def rss_mb(self) -> float:
        """Resident memory of the broker JVM, in MB."""
        assert self.pid is not None
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


@dataclass
class KafkaCluster:
    """``size`` nodes forming one KRaft quorum (every node is a voter and a broker)."""

    base_dir: Path
    size: int = 3
    properties: Sequence[str] = ()
    nodes: list[KafkaNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        # never starting with '-', which Kafka's storage tool would read as an option
        cluster_id = "A" + base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()[1:]
        controllers = [free_port() for _ in range(self.size)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{p}" for i, p in enumerate(controllers))
        self.nodes = [
            KafkaNode(
                self.base_dir / f"node{i + 1}",
                env={
                    "KAFKA_NODE_ID": str(i + 1),
                    "KAFKA_CONTROLLER_PORT": str(controllers[i]),
                    "KAFKA_QUORUM_VOTERS": voters,
                    "KAFKA_CLUSTER_ID": cluster_id,
                },
                properties=tuple(self.properties),
            )
            for i in range(self.size)
        ]

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(n.bootstrap_servers for n in self.nodes)

    def start(self, nodes: Sequence[KafkaNode] | None = None) -> None:
        """Start nodes together: a node is ready only once a quorum of controllers is up."""
        todo = list(self.nodes if nodes is None else nodes)
        with ThreadPoolExecutor(len(todo)) as pool:
            for future in [pool.submit(n.start) for n in todo]:
                future.result()

    def stop(self) -> None:
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(KafkaNode.stop, self.nodes))
