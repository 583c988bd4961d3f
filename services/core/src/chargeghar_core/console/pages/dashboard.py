"""The dashboard: the numbers of ``GET /api/admin/dashboard`` (same function), refreshed by htmx."""

from __future__ import annotations

from fastapi import APIRouter, Response

from chargeghar_core.console.context import Page
from chargeghar_core.operations.dashboard import fleet_dashboard

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("/")
async def dashboard(ctx: Page) -> Response:
    return ctx.render("pages/dashboard.html", {"board": await fleet_dashboard(ctx.db)})


@router.get("/dashboard/panels")
async def dashboard_panels(ctx: Page) -> Response:
    """The panels alone: what the page's htmx swaps in every ``dashboard_refresh_s`` seconds."""
    return ctx.render("pages/_dashboard_panels.html", {"board": await fleet_dashboard(ctx.db)}, fragment=True)
