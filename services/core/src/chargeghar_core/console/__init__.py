"""The operator console: server-rendered pages at ``/console`` over the same services as the API.

Page modules live in :mod:`chargeghar_core.console.pages`; each exposes ``router`` (an ``APIRouter``
with ``include_in_schema=False``); every module listed in :data:`PAGE_MODULES` is mounted.
"""

from __future__ import annotations

import importlib

from fastapi import FastAPI

# Imported by name, after the settings module (which imports this package for ConsoleSettings) is loaded.
PAGE_MODULES = (
    "auth",
    "dashboard",
    "stations",
    "powerbanks",
    "rentals",
    "renters",
    "money",
    "synclog",
    "audit",
    "config",
)


def install_console(app: FastAPI) -> None:
    """Mount the console on ``app``: static assets, HTML error pages for /console, every page router."""
    # Imported here: chargeghar_core.settings imports this package for ConsoleSettings.
    from chargeghar_core.console.compression import ConsoleCompression
    from chargeghar_core.console.errors import install_console_errors
    from chargeghar_core.console.rendering import STATIC_DIR
    from chargeghar_core.console.static_files import CachedStaticFiles

    settings = app.state.settings.console
    install_console_errors(app)
    app.add_middleware(ConsoleCompression)
    for name in PAGE_MODULES:
        module = importlib.import_module(f"chargeghar_core.console.pages.{name}")
        app.include_router(module.router)
    app.mount(
        "/console/static",
        CachedStaticFiles(directory=STATIC_DIR, max_age_s=settings.static_max_age_s),
        name="console-static",
    )
