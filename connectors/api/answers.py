"""JSON answers of the API: a document, or an error ``{"error": <short name>, "reason": <one sentence>}``."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


def error(status: int, name: str, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    body = orjson.dumps({"error": name, "reason": reason})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def ok(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(doc), content_type="application/json", headers=headers
    )
