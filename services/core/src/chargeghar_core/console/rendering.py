"""Jinja2 rendering of console pages: one environment (autoescape on), filters for money and times, the
navigation, and the security headers every console page carries."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"
STATIC_PREFIX = "/console/static"

# Operators work in Nepal time (UTC+05:45, no daylight saving time).
CONSOLE_TZ = timezone(timedelta(hours=5, minutes=45), "NPT")

# (testid suffix, label, path): every entry of the contract, in the order operators use them.
NAV_ENTRIES: tuple[tuple[str, str, str], ...] = (
    ("dashboard", "Dashboard", "/console/"),
    ("stations", "Stations", "/console/stations"),
    ("powerbanks", "Power banks", "/console/powerbanks"),
    ("rentals", "Rentals", "/console/rentals"),
    ("renters", "Renters", "/console/renters"),
    ("money", "Money", "/console/money"),
    ("sync-log", "Sync log", "/console/sync-log"),
    ("parked", "Parked events", "/console/parked"),
    ("audit", "Audit log", "/console/audit"),
    ("config", "Configuration", "/console/config"),
)


@lru_cache(maxsize=1)
def static_version() -> str:
    """A digest of every static file: part of asset URLs, so that they can be cached for long."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(STATIC_DIR).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def static_url(path: str) -> str:
    return f"{STATIC_PREFIX}/{path.lstrip('/')}?v={static_version()}"


def format_paisa(value: int | None) -> str:
    """Paisa as rupees: ``123450`` → ``Rs 1,234.50`` (negative amounts keep their sign)."""
    if value is None:
        return "—"
    sign = "-" if value < 0 else ""
    rupees, paisa = divmod(abs(int(value)), 100)
    return f"{sign}Rs {rupees:,}.{paisa:02d}"


def format_time(value: datetime | None, seconds: bool = False) -> str:
    if value is None:
        return "—"
    local = value.astimezone(CONSOLE_TZ)
    return local.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(["html", "xml"], default_for_string=True, default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["paisa"] = format_paisa
    env.filters["when"] = format_time
    env.filters["duration"] = format_duration
    env.globals["static"] = static_url
    env.globals["nav_entries"] = NAV_ENTRIES
    return env


def render_template(name: str, context: dict[str, Any]) -> str:
    return environment().get_template(name).render(**context)


def content_security_policy(tile_url: str) -> str:
    """Scripts only from our own static files (no inline script, no eval); map tiles from their server."""
    img_sources = ["'self'", "data:"]
    if tile_url:
        parts = urlsplit(tile_url)
        if parts.scheme in ("http", "https") and parts.netloc:
            host = parts.netloc.replace("{s}", "*")
            img_sources.append(f"{parts.scheme}://{host}")
    return (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        f"img-src {' '.join(img_sources)}; connect-src 'self'; frame-ancestors 'none'; "
        "form-action 'self'; base-uri 'none'; object-src 'none'"
    )


def page_headers(tile_url: str) -> dict[str, str]:
    return {
        # Pages show live fleet data and carry the CSRF token: never cached (static assets are).
        "Cache-Control": "no-store",
        "Content-Security-Policy": content_security_policy(tile_url),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "X-Frame-Options": "DENY",
    }
