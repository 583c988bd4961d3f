"""Gzip for the console's pages and assets only.

Operators may be on a slow mobile link, where htmx and Leaflet shrink to about a third; the station-data hot
path and the JSON API stay uncompressed (their answers are small and their CPU budget is tight).
"""

from __future__ import annotations

from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

CONSOLE_PREFIX = "/console"


class ConsoleCompression:
    def __init__(self, app: ASGIApp, *, minimum_size: int = 1024) -> None:
        self.app = app
        self.gzip = GZipMiddleware(app, minimum_size=minimum_size)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and str(scope.get("path", "")).startswith(CONSOLE_PREFIX):
            await self.gzip(scope, receive, send)
        else:
            await self.app(scope, receive, send)
