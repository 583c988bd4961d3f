"""Operations API: the fleet dashboard (staff and viewers) and staff device commands (audited)."""

from __future__ import annotations

import uuid

import httpx
from fastapi import APIRouter, Request

from chargeghar_core.auth.dependencies import StaffUser
from chargeghar_core.kit.db import DbSession
from chargeghar_core.kit.openapi import errors
from chargeghar_core.kit.schemas import Envelope
from chargeghar_core.operations.commands import run_staff_command, staff_client
from chargeghar_core.operations.dashboard import fleet_dashboard
from chargeghar_core.operations.schemas import Dashboard, StaffCommand, StaffCommandResult
from chargeghar_core.rentals.runtime import RentalRuntime
from chargeghar_core.settings import Settings

router = APIRouter(prefix="/api/admin", tags=["admin: operations"])


@router.get(
    "/dashboard",
    response_model=Envelope[Dashboard],
    summary="Fleet at a glance: stations, banks, rentals, sync health and today's money",
    description=(
        'Five aggregate queries whatever the fleet size. "Today" starts at midnight Nepal time. '
        "`sync.parked_events` is null: parked and dead events live in the ingest's spool."
    ),
)
async def dashboard(_staff: StaffUser, session: DbSession) -> Envelope[Dashboard]:
    return Envelope(message="Fleet dashboard", data=await fleet_dashboard(session))


@router.post(
    "/stations/{station_id}/commands",
    response_model=Envelope[StaffCommandResult],
    summary="Send a station a command through the ingest (check, popup, reboot, Wi-Fi, volume, upload_all)",
    description=(
        "Signed and forwarded to the ingest's command API (contract.md §3); the answer is the device's "
        "outcome (`ok`, `failed` or `timeout`, with the decoded reply). Popups are never sent twice: QoS 0, "
        "no retry (not even on DEVICE_BUSY), and a popup of a bank that is out on (or reserved by) an open "
        "rental is refused. Every command is audited with its outcome and timing (`action=device.command`), "
        "Wi-Fi passwords masked."
    ),
    responses=errors(
        (400, "VALIDATION_ERROR", "Bad command arguments (slot 1-255, decimal serial, volume 0-100, SSID)"),
        (404, "NOT_FOUND", "No such station"),
        (
            409,
            "DEVICE_BUSY",
            "Refused, nothing sent: DEVICE_BUSY (another command in flight), DEVICE_OFFLINE, or "
            "BANK_ON_RENTAL (popup of a bank on an open rental)",
        ),
        (
            502,
            "INGEST_NO_ANSWER",
            "The ingest was unreachable (INGEST_UNREACHABLE: nothing sent) or did not answer "
            "(INGEST_NO_ANSWER: the command may have been sent; run `check` first)",
        ),
    ),
)
async def station_command(
    station_id: uuid.UUID, body: StaffCommand, request: Request, staff: StaffUser, session: DbSession
) -> Envelope[StaffCommandResult]:
    runtime: RentalRuntime = request.app.state.rentals
    settings: Settings = request.app.state.settings
    http: httpx.AsyncClient = request.app.state.http_client
    token = runtime.settings.ingest_service_token
    client = staff_client(
        http,
        base_url=runtime.settings.ingest_url,
        secret=settings.hmac.secret.get_secret_value(),
        token=token.get_secret_value() if token is not None else None,
    )
    result = await run_staff_command(session, client, station_id, body, staff)
    return Envelope(message=f"Command {result.outcome}", data=result)
