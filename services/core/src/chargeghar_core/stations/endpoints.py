"""Station read API (public) and station administration (staff)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from chargeghar_core.auth.dependencies import StaffUser
from chargeghar_core.kit.db import DbSession
from chargeghar_core.kit.openapi import errors
from chargeghar_core.kit.schemas import Envelope, Offset, Page, PageNumber
from chargeghar_core.stations.models import Station, SyncOutcome
from chargeghar_core.stations.repository import StationRepository
from chargeghar_core.stations.schemas import (
    AdminStationView,
    SlotView,
    StationDetail,
    StationSummary,
    StationUpdate,
    StatusHistoryView,
    SyncLogView,
)
from chargeghar_core.stations.service import StationHit, StationQuery, StationService

router = APIRouter(prefix="/api/stations", tags=["stations"])
admin_router = APIRouter(prefix="/api/admin/stations", tags=["admin: stations"])

StatusFilter = Annotated[
    str | None, Query(pattern="^(ONLINE|OFFLINE|MAINTENANCE)$", description="Station status")
]
SearchText = Annotated[
    str | None, Query(max_length=100, description="Matches name, address, landmark, serial")
]
Latitude = Annotated[float | None, Query(ge=-90, le=90, description="Your latitude (sorts by distance)")]
Longitude = Annotated[float | None, Query(ge=-180, le=180, description="Your longitude")]
RadiusKm = Annotated[float | None, Query(gt=0, le=500, description="Only stations within this distance")]
PageSize = Annotated[int, Query(ge=1, le=100)]


def _summary(hit: StationHit) -> StationSummary:
    summary = StationSummary.model_validate(hit.station)
    return summary.model_copy(
        update={"distance_km": _rounded(hit.distance_km), "rentable_banks": hit.rentable_banks}
    )


def _rounded(distance: float | None) -> float | None:
    return None if distance is None else round(distance, 3)


def _slots(station: Station) -> list[SlotView]:
    return [SlotView.model_validate(slot) for slot in station.slots]


@router.get(
    "",
    response_model=Envelope[Page[StationSummary]],
    summary="Deployed stations, nearest first",
    description=(
        "The public station map: only deployed stations. With `lat` and `lng` the list is sorted by distance "
        "(`distance_km` is set) and `radius_km` limits it; `rentable_banks` counts charged banks a renter "
        "could take now."
    ),
    responses=errors(
        (400, "VALIDATION_ERROR", "Bad filter: lat without lng, radius_km without both, out of range")
    ),
)
async def list_stations(
    session: DbSession,
    status: StatusFilter = None,
    search: SearchText = None,
    lat: Latitude = None,
    lng: Longitude = None,
    radius_km: RadiusKm = None,
    page: PageNumber = 1,
    page_size: PageSize = 20,
) -> Envelope[Page[StationSummary]]:
    service = StationService(StationRepository(session))
    query = StationQuery(status=status, search=search, latitude=lat, longitude=lng, radius_km=radius_km)
    hits, total = await service.search(query, public=True, page=page, page_size=page_size)
    return Envelope(
        message="Stations",
        data=Page(items=[_summary(hit) for hit in hits], total=total, page=page, page_size=page_size),
    )


@router.get(
    "/{serial_number}",
    response_model=Envelope[StationDetail],
    summary="One deployed station with its slots and the number of rentable banks",
    responses=errors((404, "NOT_FOUND", "No deployed station with this serial")),
)
async def get_station(serial_number: str, session: DbSession) -> Envelope[StationDetail]:
    station, rentable = await StationService(StationRepository(session)).public_detail(serial_number)
    detail = StationDetail.model_validate(
        {
            **StationSummary.model_validate(station).model_dump(),
            "rentable_banks": rentable,
            "slots": _slots(station),
        }
    )
    return Envelope(message="Station", data=detail)


# ---------------------------------------------------------------------------------------------- admin


def _admin_view(station: Station, rentable: int, *, with_slots: bool) -> AdminStationView:
    base = StationSummary.model_validate(station).model_dump()
    return AdminStationView.model_validate(
        {
            **base,
            "rentable_banks": rentable,
            "imei": station.imei,
            "is_deployed": station.is_deployed,
            "hardware_info": station.hardware_info,
            "observed_at": station.observed_at,
            "status_changed_at": station.status_changed_at,
            "created_at": station.created_at,
            "slots": _slots(station) if with_slots else [],
        }
    )


@admin_router.get(
    "",
    response_model=Envelope[Page[AdminStationView]],
    summary="All stations, deployed or not",
    description="`deployed=false` lists the cabinets that reported in but still need a name and location.",
    responses=errors(
        (400, "VALIDATION_ERROR", "Bad filter: lat without lng, radius_km without both, out of range")
    ),
)
async def admin_list_stations(
    _staff: StaffUser,
    session: DbSession,
    status: StatusFilter = None,
    search: SearchText = None,
    deployed: bool | None = None,
    lat: Latitude = None,
    lng: Longitude = None,
    radius_km: RadiusKm = None,
    page: PageNumber = 1,
    page_size: PageSize = 20,
) -> Envelope[Page[AdminStationView]]:
    service = StationService(StationRepository(session))
    query = StationQuery(
        status=status, search=search, latitude=lat, longitude=lng, radius_km=radius_km, deployed=deployed
    )
    hits, total = await service.search(query, public=False, page=page, page_size=page_size)
    items = [
        _admin_view(hit.station, hit.rentable_banks, with_slots=False).model_copy(
            update={"distance_km": _rounded(hit.distance_km)}
        )
        for hit in hits
    ]
    return Envelope(message="Stations", data=Page(items=items, total=total, page=page, page_size=page_size))


@admin_router.get(
    "/{station_id}",
    response_model=Envelope[AdminStationView],
    summary="One station, all details",
    responses=errors((404, "NOT_FOUND", "No such station")),
)
async def admin_get_station(
    station_id: uuid.UUID, _staff: StaffUser, session: DbSession
) -> Envelope[AdminStationView]:
    station, rentable = await StationService(StationRepository(session)).admin_detail(station_id)
    return Envelope(message="Station", data=_admin_view(station, rentable, with_slots=True))


@admin_router.patch(
    "/{station_id}",
    response_model=Envelope[AdminStationView],
    summary="Configure a station: name, location, serial, deploy, maintenance",
    description=(
        "Fields left out stay unchanged. Setting `is_deployed` needs a name and coordinates (given now or "
        "before); the serial is the printed QR code and survives later syncs."
    ),
    responses=errors(
        (400, "VALIDATION_ERROR", "Invalid field, or deploying a station without name and coordinates"),
        (404, "NOT_FOUND", "No such station"),
        (409, "SERIAL_TAKEN", "The serial belongs to another station"),
    ),
)
async def admin_configure_station(
    station_id: uuid.UUID, update: StationUpdate, staff: StaffUser, session: DbSession
) -> Envelope[AdminStationView]:
    service = StationService(StationRepository(session))
    await service.configure(station_id, update, actor=staff)
    station, rentable = await service.admin_detail(station_id)
    return Envelope(message="Station updated", data=_admin_view(station, rentable, with_slots=True))


@admin_router.get(
    "/{station_id}/sync-logs",
    response_model=Envelope[list[SyncLogView]],
    summary="Inbound events of a station, newest first (sync log)",
    description="Every station event core received for this station, applied or failed; filter by `outcome`.",
)
async def admin_station_sync_logs(
    station_id: uuid.UUID,
    _staff: StaffUser,
    session: DbSession,
    outcome: SyncOutcome | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> Envelope[list[SyncLogView]]:
    rows = await StationRepository(session).sync_logs(
        station_id, outcome=outcome.value if outcome else None, limit=limit, offset=offset
    )
    return Envelope(message="Sync log", data=[SyncLogView.model_validate(row) for row in rows])


@admin_router.get(
    "/{station_id}/status-history",
    response_model=Envelope[list[StatusHistoryView]],
    summary="Status changes of a station, newest first",
)
async def admin_station_status_history(
    station_id: uuid.UUID,
    _staff: StaffUser,
    session: DbSession,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> Envelope[list[StatusHistoryView]]:
    rows = await StationRepository(session).history(station_id, limit=limit, offset=offset)
    return Envelope(message="Status history", data=[StatusHistoryView.model_validate(row) for row in rows])
