"""The device registry's HTTP API: staff endpoints and the ingest's signed check-in at connect."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from pydantic import ValidationError

from chargeghar_core.auth.dependencies import InternalCaller, StaffUser
from chargeghar_core.devices.models import DeviceStatus
from chargeghar_core.devices.repository import DeviceRepository
from chargeghar_core.devices.schemas import (
    IMEI_PATTERN,
    DeviceCheckIn,
    DeviceDecision,
    DeviceRegister,
    DeviceStatusView,
    DeviceView,
)
from chargeghar_core.devices.service import DeviceRegistry
from chargeghar_core.iot.security import InternalGate
from chargeghar_core.kit.db import DbSession
from chargeghar_core.kit.errors import CoreError, ValidationFailed, validation_details
from chargeghar_core.kit.openapi import errors
from chargeghar_core.kit.schemas import Envelope, Page, PageNumber

admin_router = APIRouter(prefix="/api/admin/devices", tags=["admin: devices"])
internal_router = APIRouter(prefix="/api/internal/devices", tags=["internal"])

ImeiPath = Annotated[str, Path(pattern=IMEI_PATTERN, description="Station IMEI (1-32 ASCII letters/digits)")]
NOT_FOUND = errors((404, "DEVICE_NOT_FOUND", "No device with this IMEI"))


@admin_router.get(
    "",
    response_model=Envelope[Page[DeviceView]],
    summary="Known and pending devices (the station registry)",
    description="`status=pending` lists the stations waiting for an approval, newest first.",
)
async def list_devices(
    _staff: StaffUser,
    session: DbSession,
    status: DeviceStatus | None = None,
    page: PageNumber = 1,
    page_size: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Envelope[Page[DeviceView]]:
    rows, total = await DeviceRepository(session).search(
        status=status.value if status else None, limit=page_size, offset=(page - 1) * page_size
    )
    items = [DeviceView.model_validate(row) for row in rows]
    return Envelope(message="Devices", data=Page(items=items, total=total, page=page, page_size=page_size))


@admin_router.post(
    "",
    response_model=Envelope[DeviceView],
    status_code=201,
    summary="Register a station IMEI as approved (audited)",
    responses=errors((409, "DEVICE_EXISTS", "The IMEI is registered already: approve or revoke it")),
)
async def register_device(body: DeviceRegister, staff: StaffUser, session: DbSession) -> Envelope[DeviceView]:
    device = await DeviceRegistry(session).register(body.imei, body.note, staff)
    return Envelope(message="Device registered", data=DeviceView.model_validate(device))


@admin_router.post(
    "/{imei}/approve",
    response_model=Envelope[DeviceView],
    summary="Approve a pending (or revoked) device: it gets MQTT credentials (audited)",
    responses=NOT_FOUND,
)
async def approve_device(
    imei: ImeiPath, staff: StaffUser, session: DbSession, body: DeviceDecision | None = None
) -> Envelope[DeviceView]:
    device = await DeviceRegistry(session).approve(imei, body.note if body else None, staff)
    return Envelope(message="Device approved", data=DeviceView.model_validate(device))


@admin_router.post(
    "/{imei}/revoke",
    response_model=Envelope[DeviceView],
    summary="Revoke a device: no credentials at connect, MQTT login refused (audited)",
    responses=NOT_FOUND,
)
async def revoke_device(
    imei: ImeiPath, staff: StaffUser, session: DbSession, body: DeviceDecision | None = None
) -> Envelope[DeviceView]:
    device = await DeviceRegistry(session).revoke(imei, body.note if body else None, staff)
    return Envelope(message="Device revoked", data=DeviceView.model_validate(device))


class _InvalidJson(CoreError):
    status_code = 400
    code = "INVALID_JSON"


@internal_router.post(
    "/{imei}/connect",
    response_model=Envelope[DeviceStatusView],
    summary="The ingest reports a station's connect and learns whether it may get credentials",
    description=(
        "Signed like the station-data endpoint (bearer + `X-Signature` over the raw body). An unknown IMEI "
        "is recorded as `pending` (or `approved` when the body says `approve: true`: the ingest's `open` "
        "provisioning policy); the answer is the device's status. A revoked device stays revoked."
    ),
    responses=errors(
        (400, "VALIDATION_ERROR", "Bad IMEI or body: VALIDATION_ERROR, INVALID_JSON or INVALID_TIMESTAMP"),
        (403, "INVALID_SIGNATURE", "FORBIDDEN, IP_NOT_ALLOWED, MISSING_HEADERS or INVALID_SIGNATURE"),
        (429, "RATE_LIMITED", "RATE_LIMITED (per caller, per minute, shared with the station data)"),
    ),
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {"approve": {"type": "boolean", "default": False}},
                        "additionalProperties": False,
                    },
                    "example": {"approve": False},
                }
            },
        }
    },
)
async def device_connect(
    imei: ImeiPath, request: Request, caller: InternalCaller, session: DbSession
) -> Envelope[DeviceStatusView]:
    gate: InternalGate = request.app.state.internal_gate
    gate.check_ip(request)
    # The caller's budget (CORE_INTERNAL__RATE_LIMIT_PER_MINUTE) is shared with its station data; the
    # ingest asks only on a cache miss and keeps cached approvals working through a 429.
    await gate.check_rate(caller)
    body = await request.body()
    gate.verify_signature(body, request.headers)
    check_in = _parse_check_in(body)
    result = await DeviceRegistry(session).check_in(imei, approve=check_in.approve, caller=caller)
    view = DeviceStatusView(imei=imei, status=DeviceStatus(result.device.status), created=result.created)
    return Envelope(message=f"Device {view.status}", data=view)


def _parse_check_in(body: bytes) -> DeviceCheckIn:
    if not body.strip():
        return DeviceCheckIn()
    try:
        return DeviceCheckIn.model_validate_json(body)
    except ValidationError as exc:
        if any(error["type"] == "json_invalid" for error in exc.errors()):
            raise _InvalidJson("Body is not valid JSON") from exc
        raise ValidationFailed(details=validation_details(exc.errors())) from exc
    except (ValueError, RecursionError) as exc:
        raise _InvalidJson("Body is not valid JSON") from exc
