"""Serving an aiohttp application on a configured address: one way for every Vigil HTTP server."""

from __future__ import annotations

import ssl
from typing import Any

from aiohttp import web

from engine.errors import VigilError


async def listen(
    app: web.Application,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    *,
    what: str,
    setting: str,
    **runner_options: Any,
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (0 = any free port): the runner and the port bound. A port that cannot
    be bound is a :class:`VigilError` naming ``what`` and the ``setting`` to change; nothing is left open."""
    runner = web.AppRunner(app, **runner_options)
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise VigilError(
                f"{what} cannot listen on {host}:{port} ({setting}): {exc.strerror or exc}"
            ) from None
    except BaseException:
        await runner.cleanup()
        raise
    bound = next((int(address[1]) for address in runner.addresses), port)
    return runner, bound
