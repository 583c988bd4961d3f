"""``GET /metrics``: core's counters (kit/metrics.py) and the dashboard gauges read from the database.

The scrape never fails because the database does: the gauges are left out and ``database_up`` is 0, so the
``CoreDown`` alert means the process is gone and the database alerts stay separate.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import datetime

import structlog
from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.kit.db import DbSession
from chargeghar_core.kit.metrics import METRICS
from chargeghar_core.payments.models import Wallet
from chargeghar_core.rentals.models import OPEN_STATUSES, Rental
from chargeghar_core.stations.models import Station, SyncLog

logger = structlog.get_logger(__name__)

router = APIRouter(tags=["health"])

GAUGE_TIMEOUT_S = 3.0
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"

GaugeValue = float | Sequence[tuple[dict[str, str], float]]

METRICS_EXAMPLE = """\
# HELP chargeghar_core_events_applied_total Station events from the ingest, by type and outcome
# TYPE chargeghar_core_events_applied_total counter
chargeghar_core_events_applied_total{type="full",outcome="SUCCESS"} 42
# HELP chargeghar_core_dues_outstanding_paisa Sum of unpaid rental dues (paisa)
# TYPE chargeghar_core_dues_outstanding_paisa gauge
chargeghar_core_dues_outstanding_paisa 15000
"""


def _timestamp(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


async def read_gauges(session: AsyncSession) -> dict[str, GaugeValue]:
    """The dashboard gauges; each a few aggregate statements (the per-station one uses the sync-log index)."""
    dues = (
        await session.execute(
            select(func.coalesce(func.sum(Rental.amount_due_paisa), 0), func.count()).where(
                Rental.amount_due_paisa > 0
            )
        )
    ).one()
    open_rows = (
        await session.execute(
            select(Rental.status, func.count())
            .where(Rental.status.in_(OPEN_STATUSES))
            .group_by(Rental.status)
        )
    ).all()
    open_counts = {status: 0 for status in OPEN_STATUSES} | {status: count for status, count in open_rows}
    station_rows = (
        await session.execute(
            select(Station.status, Station.is_maintenance, func.count())
            .where(Station.is_deployed.is_(True))
            .group_by(Station.status, Station.is_maintenance)
        )
    ).all()
    by_status = {"ONLINE": 0, "OFFLINE": 0, "MAINTENANCE": 0}
    for status, maintenance, count in station_rows:
        key = "MAINTENANCE" if maintenance else status
        by_status[key] = by_status.get(key, 0) + count
    newest = select(func.max(SyncLog.created_at)).where(SyncLog.station_id == Station.id).scalar_subquery()
    uploads = (
        await session.execute(
            select(Station.serial_number, func.coalesce(newest, Station.created_at)).where(
                Station.is_deployed.is_(True)
            )
        )
    ).all()
    balance = (await session.execute(select(func.coalesce(func.sum(Wallet.balance_paisa), 0)))).scalar_one()
    return {
        "database_up": 1.0,
        "dues_outstanding_paisa": float(dues[0]),
        "dues_outstanding_rentals": float(dues[1]),
        "rentals_open": [({"status": status}, float(count)) for status, count in sorted(open_counts.items())],
        "stations_deployed": float(sum(by_status.values())),
        "stations_by_status": [
            ({"status": status}, float(count)) for status, count in sorted(by_status.items())
        ],
        "station_last_upload_timestamp_seconds": [
            ({"station": serial}, _timestamp(at)) for serial, at in uploads
        ],
        "wallet_balance_paisa": float(balance),
    }


async def _gauges_or_down(session: AsyncSession) -> dict[str, GaugeValue]:
    try:
        async with asyncio.timeout(GAUGE_TIMEOUT_S):
            return await read_gauges(session)
    except Exception as exc:  # the scrape still answers: counters matter most when the database is down
        logger.warning("metrics_gauges_unavailable", error=repr(exc))
        with contextlib.suppress(Exception):
            await session.rollback()
        return {"database_up": 0.0}


@router.get(
    "/metrics",
    summary="Prometheus metrics of core (text exposition format, no authentication)",
    description=(
        "Counters of this process (request latency by route, station events by type and outcome, rentals "
        "started/failed, popup outcomes) and gauges read from the database (dues, open rentals, stations by "
        "status, newest upload per deployed station). When the database cannot be read the "
        "gauges are left out and `chargeghar_core_database_up` is 0. Expose it to the Prometheus network "
        "only (docs/operations.md)."
    ),
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}, "example": METRICS_EXAMPLE}}}},
)
async def metrics_text(session: DbSession) -> Response:
    gauges = await _gauges_or_down(session)
    return Response(METRICS.render(gauges), media_type=PROMETHEUS_TEXT)
