"""The console's static assets, served from the package with long cache lifetimes (URLs carry a digest
of the files, see :func:`chargeghar_core.console.rendering.static_url`)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope


class CachedStaticFiles(StaticFiles):
    def __init__(self, *, max_age_s: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_age_s = max_age_s

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code in (200, 304):
            response.headers["Cache-Control"] = f"public, max-age={self.max_age_s}"
            response.headers["X-Content-Type-Options"] = "nosniff"
        return response
