"""``vigil run``: keep the parts running, restart a crashed one, stop everything in bounded time.

A worker or ingest child that dies is started again after a backoff (1 s, doubling, capped at 30 s; back to
1 s once a child has run for a minute), and the log says why it died. Two things are not restarted: a child
that exits with 2 (Vigil's code for a configuration error, which a restart cannot fix), and the embedded
broker — it keeps everything in memory, so when it dies every topic, offset and checkpoint is gone and the
parts cannot go on; ``vigil run`` then stops everything and exits 1.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from connectors.kafka import compacted_topics, ensure_topics, topic_names
from engine.config import VigilConfig
from vigil.runtime import embedded_kafka, signals_raise, spawn, stop_all

log = logging.getLogger("vigil.run")

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # a child that ran this long starts its next backoff from the first step again
CONFIG_ERROR = 2  # the exit code of a vigil command refused by its configuration
POLL_S = 0.2


def exit_reason(code: int) -> str:
    """How a child ended, for a person.

    >>> exit_reason(-9)
    'killed by signal SIGKILL'
    >>> exit_reason(1)
    'exit code 1'
    """
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class Part:
    """One supervised child: its process, and when to start it again after it died."""

    name: str
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_FIRST_S
    due: float | None = field(default=None)  # monotonic time of the next start, while it is down

    def died(self, now: float) -> float:
        """The child exited: schedule its next start; return the delay until then."""
        self.process = None
        if now - self.started >= STABLE_AFTER_S:
            self.backoff = BACKOFF_FIRST_S
        delay, self.backoff = self.backoff, min(self.backoff * 2, BACKOFF_MAX_S)
        self.due = now + delay
        return delay


def supervise(config_path: Path | None, config: VigilConfig, names: list[str]) -> int:
    """Run ``names`` (e.g. ["worker", "ingest"]) until SIGINT/SIGTERM; 1 if the embedded broker died."""
    parts = [Part(name) for name in names]

    def children() -> list[subprocess.Popen[bytes]]:
        return [p.process for p in parts if p.process is not None]

    with signals_raise(), embedded_kafka(config) as (live, broker):
        try:
            if broker is None:
                k = live.kafka
                asyncio.run(
                    ensure_topics(
                        k.bootstrap_servers,
                        topic_names(k),
                        k.partitions,
                        k.replication_factor,
                        compacted_topics(k),
                    )
                )
            for part in parts:
                part.process, part.started = spawn(part.name, config_path, live), time.monotonic()
            print(f"vigil: running {', '.join(names)} on Kafka {live.kafka.bootstrap_servers}", flush=True)
            while True:
                if broker is not None and not broker.running:
                    code = broker.returncode
                    log.error(
                        "the embedded broker died (%s); its data is gone (it keeps everything in memory), "
                        "so Vigil stops. Start `vigil run` again, or point kafka.bootstrap_servers at a "
                        "Kafka that keeps its data.",
                        "unknown exit" if code is None else exit_reason(code),
                    )
                    return 1
                now = time.monotonic()
                for part in parts:
                    code = None if part.process is None else part.process.poll()
                    if part.process is not None and code is not None:
                        if code == CONFIG_ERROR:
                            log.error("%s refused its configuration (exit code 2); stopping", part.name)
                            return CONFIG_ERROR
                        pid = part.process.pid
                        delay = part.died(now)
                        log.warning(
                            "%s (pid %d) died: %s; restarting it in %.0f s",
                            part.name,
                            pid,
                            exit_reason(code),
                            delay,
                        )
                    elif part.process is None and part.due is not None and now >= part.due:
                        part.process, part.started, part.due = spawn(part.name, config_path, live), now, None
                        part.restarts += 1
                        log.warning(
                            "%s restarted (pid %d, restart %d)", part.name, part.process.pid, part.restarts
                        )
                time.sleep(POLL_S)
        finally:
            stop_all(children())
    return 0
