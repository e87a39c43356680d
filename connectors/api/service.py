"""The API server as a service (``await start()`` / ``await stop()``, both idempotent) and ``vigil api``."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiokafka.errors import KafkaError

from connectors.api.routes import API, Api, make_app
from connectors.http import listen
from connectors.receiver.auth import ssl_context
from connectors.signals import stopped_by_signals
from engine.config import VigilConfig
from engine.errors import BrokerUnavailable

log = logging.getLogger("vigil.api")
STOP_TIMEOUT_S = 3.0


class ApiServer:
    def __init__(self, config: VigilConfig) -> None:
        self.config = config
        self._ssl = ssl_context(config.api.tls, "api.tls")
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self.port = config.api.port

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl else 'http'}://{self.config.api.host}:{self.port}"

    @property
    def api(self) -> Api:
        assert self.app is not None, "start() first"
        return self.app[API]

    async def start(self) -> None:
        if self._runner is not None:
            return
        self.app = make_app(self.config)
        a = self.config.api
        self._runner, self.port = await listen(
            self.app,
            a.host,
            a.port,
            self._ssl,
            what="api",
            setting="api.port",
            shutdown_timeout=STOP_TIMEOUT_S,
            access_log=None,
        )

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


def run_api(config: VigilConfig) -> None:
    """``vigil api``: serve until SIGINT or SIGTERM."""

    async def main() -> None:
        with stopped_by_signals() as stop:
            server = ApiServer(config)
            await server.start()
            print(f"vigil api: listening on {server.url}", flush=True)
            try:
                await stop.wait()
            finally:
                await server.stop()

    try:
        asyncio.run(main())
    except KafkaError as exc:  # Kafka away at start: `vigil run` restarts the part (exit 1, not 2)
        raise BrokerUnavailable(f"Kafka at {config.kafka.bootstrap_servers}: {exc}") from None
