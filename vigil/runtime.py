"""Running Vigil's parts as processes: the embedded broker, the worker, the ingest server.

``vigil run`` (vigil/supervisor.py) starts the broker (unless one is configured) and the other parts as
child processes with these helpers. Each child is tied to the supervisor's life by the kernel
(``PR_SET_PDEATHSIG``). Stopping is bounded: SIGTERM to every child, SIGKILL to those still running after
``STOP_GRACE_S``, then the broker (``BROKER_GRACE_S``): well within 10 s in all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import orjson

from connectors.broker import EmbeddedBroker, die_with_parent
from connectors.kafka import compacted_topics, topic_names
from engine.config import VigilConfig
from engine.errors import VigilError

log = logging.getLogger(__name__)

STOP_GRACE_S = 6.0
BROKER_GRACE_S = 2.0


def state_file() -> Path:
    base = os.environ.get("VIGIL_STATE_DIR") or Path.home() / ".cache" / "vigil"
    return Path(base) / "embedded.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def running_embedded() -> str | None:
    """Bootstrap address of the embedded broker of a running ``vigil run``/``vigil demo``, if any."""
    try:
        doc = orjson.loads(state_file().read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(doc, dict) or not _pid_alive(int(doc.get("pid", 0))):
        return None
    servers = doc.get("bootstrap_servers")
    return servers if isinstance(servers, str) else None


def resolve_bootstrap(config: VigilConfig, override: str | None = None) -> str:
    """Where a client command (replay, tail) finds Kafka."""
    found = override or config.kafka.bootstrap_servers or running_embedded()
    if not found:
        raise VigilError(
            "no Kafka to talk to: start `vigil run` (embedded broker) first, "
            "or set kafka.bootstrap_servers / --bootstrap-servers"
        )
    return found


def with_kafka(config: VigilConfig, servers: str, quirks: bool | None = None) -> VigilConfig:
    kafka = config.kafka.model_copy(
        update={
            "bootstrap_servers": servers,
            "embedded_quirks": config.kafka.embedded_quirks if quirks is None else quirks,
        }
    )
    return config.model_copy(update={"kafka": kafka})


def child_env(config: VigilConfig) -> dict[str, str]:
    env = dict(os.environ)
    env["VIGIL_KAFKA__BOOTSTRAP_SERVERS"] = config.kafka.bootstrap_servers
    env["VIGIL_KAFKA__EMBEDDED_QUIRKS"] = "true" if config.kafka.embedded_quirks else "false"
    env["VIGIL_WORKER__METRICS_ENABLED"] = "true" if config.worker.metrics_enabled else "false"
    return env


def spawn(
    command: str, config_path: Path | None, config: VigilConfig, *extra: str
) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "vigil", command, *extra]
    if config_path is not None:
        args += ["-c", str(config_path)]
    # A session of its own: Ctrl-C in a terminal reaches only the supervisor, which stops the parts in order
    # (worker and ingest first, the broker last) instead of all of them at once.
    return subprocess.Popen(
        args,
        env=child_env(config),
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
        start_new_session=True,
    )


def stop_all(children: list[subprocess.Popen[bytes]], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM, then SIGKILL after ``grace``; a second Ctrl-C must not cut this short and orphan a child."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _stop_all(children, grace)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_all(children: list[subprocess.Popen[bytes]], grace: float) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


class _Stop(Exception):
    pass


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Turn SIGTERM into an exception (SIGINT already is one), so every exit path runs the clean-up."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Stop(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except (_Stop, KeyboardInterrupt):
        log.info("stopping")
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def kafka_for(config: VigilConfig) -> Iterator[VigilConfig]:
    """The configuration with a reachable Kafka: the configured one, or an embedded broker meanwhile."""
    with embedded_kafka(config) as (live, _):
        yield live


@contextlib.contextmanager
def embedded_kafka(config: VigilConfig) -> Iterator[tuple[VigilConfig, EmbeddedBroker | None]]:
    """Like :func:`kafka_for`, with the embedded broker it started (None when Kafka is configured)."""
    if not config.kafka.embedded:
        yield config, None
        return
    broker = EmbeddedBroker(
        topic_names(config.kafka), config.kafka.partitions, compacted=compacted_topics(config.kafka)
    )
    broker.start()
    try:
        path = state_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed: a reader never sees a half-written file.
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_bytes(orjson.dumps({"bootstrap_servers": broker.bootstrap_servers, "pid": os.getpid()}))
        partial.replace(path)
        try:
            yield with_kafka(config, broker.bootstrap_servers, quirks=True), broker
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
    finally:
        broker.stop(timeout=BROKER_GRACE_S)
