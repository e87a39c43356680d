"""Helpers for tests that start and signal real processes: default signal handlers, listening ports."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

_LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp


def default_signals() -> None:  # pragma: no cover - runs in the child between fork and exec
    """``preexec_fn``: give the child default SIGINT/SIGTERM handlers whatever the test runner inherited
    (``nohup`` ignores SIGINT, and an ignored signal stays ignored across exec)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def ignore_sigint() -> None:  # pragma: no cover - runs in the child between fork and exec
    """``preexec_fn``: start the child as ``nohup`` would, with SIGINT ignored (SIGTERM default)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def listening_ports(pid: int) -> set[int]:
    """TCP ports that process ``pid`` listens on: its socket inodes matched against /proc/net/tcp{,6}."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == _LISTEN and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
