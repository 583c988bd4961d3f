"""Operator console settings (``CORE_CONSOLE__…``)."""

from __future__ import annotations

from pydantic import BaseModel, Field

# OpenStreetMap's public tiles: fine for a demo; a closed network sets its own tile server (or "" for none:
# the station markers are drawn either way).
DEFAULT_TILE_URL = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"


class ConsoleSettings(BaseModel):
    enabled: bool = Field(default=True, description="Serve the operator console at /console")
    session_idle_minutes: int = Field(
        default=30, ge=1, le=24 * 60, description="A console session unused this long must log in again"
    )
    session_absolute_hours: int = Field(
        default=12, ge=1, le=24 * 14, description="A console session ends this long after login, used or not"
    )
    secure_cookie: bool | None = Field(
        default=None,
        description="Secure flag of the session cookie; default: on in production or over https",
    )
    dashboard_refresh_s: int = Field(default=10, ge=2, le=3600, description="Dashboard refresh interval")
    page_size: int = Field(default=25, ge=5, le=200, description="Rows per page of the console's tables")
    map_tile_url: str = Field(
        default=DEFAULT_TILE_URL,
        max_length=500,
        description="Leaflet tile URL template for the station map; empty: markers on a blank map",
    )
    map_attribution: str = Field(default="© OpenStreetMap contributors", max_length=300)
    static_max_age_s: int = Field(
        default=7 * 24 * 3600, ge=0, description="Cache-Control max-age of the console's static assets"
    )
