"""The ingest server as a service: :class:`Receiver` (start/stop), :func:`serve` and :func:`run_ingest`
(``vigil ingest``: until SIGINT or SIGTERM)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from connectors.http import listen
from connectors.receiver.auth import ssl_context
from connectors.receiver.delivery import STOP_TIMEOUT_S
from connectors.receiver.routes import INGEST, SERVER_OPTIONS, WRITE_PATH, Ingest, make_app
from connectors.signals import stopped_by_signals
from engine.config import VigilConfig

log = logging.getLogger(__name__)


class Receiver:
    """``await start()`` listens (``port`` 0 picks a free one), ``await stop()`` answers what is in flight
    for a moment, then closes. Both are idempotent."""

    def __init__(self, config: VigilConfig) -> None:
        self.config = config
        self._ssl = ssl_context(config.receiver.tls)
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self.port: int = config.receiver.port

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl else "http"
        return f"{scheme}://{self.config.receiver.host}:{self.port}"

    @property
    def ingest(self) -> Ingest:
        assert self.app is not None, "start() the receiver first"
        return self.app[INGEST]

    async def start(self) -> None:
        if self._runner is not None:
            return
        self.app = make_app(self.config)
        r = self.config.receiver
        self._runner, self.port = await listen(
            self.app,
            r.host,
            r.port,
            self._ssl,
            what="receiver",
            setting="receiver.port",
            shutdown_timeout=STOP_TIMEOUT_S,
            **SERVER_OPTIONS,
        )
        log.info("receiver listening on %s%s", self.url, WRITE_PATH)

    async def wait_connected(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self.ingest.connected.wait()

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


async def serve(config: VigilConfig, stop: asyncio.Event) -> None:
    """Run the receiver until ``stop`` is set."""
    receiver = Receiver(config)
    await receiver.start()
    try:
        await stop.wait()
    finally:
        await receiver.stop()


def run_ingest(config: VigilConfig) -> None:
    """``vigil ingest``: run the receiver until SIGINT or SIGTERM."""

    async def main() -> None:
        with stopped_by_signals() as stop:
            await serve(config, stop)

    asyncio.run(main())
