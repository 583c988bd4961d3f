"""Station rules for the read and admin API: visibility, distance search, configuration."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from chargeghar_protocol.contract import StationStatus

from chargeghar_core.audit.service import record_staff_action
from chargeghar_core.auth.tokens import TokenClaims
from chargeghar_core.kit.errors import BadRequest, Conflict, NotFound
from chargeghar_core.stations.models import Station, StationStatusHistory
from chargeghar_core.stations.repository import StationRepository
from chargeghar_core.stations.schemas import StationUpdate

EARTH_RADIUS_KM = 6371.0088
# Silence longer than this means offline (uploads every 20 min, heartbeats every 9-10 min; design.md).
OFFLINE_AFTER = timedelta(minutes=25)


def haversine_km(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    d_phi = phi2 - phi1
    d_lambda = math.radians(lng2 - lng1)
    a = math.sin(d_phi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(d_lambda / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def bounding_box(lat: float, lng: float, radius_km: float) -> tuple[float, float, float, float]:
    """A lat/lng box that contains the circle: lets the database discard far stations cheaply."""
    d_lat = math.degrees(radius_km / EARTH_RADIUS_KM)
    cos_lat = max(math.cos(math.radians(lat)), 1e-6)
    d_lng = min(180.0, math.degrees(radius_km / (EARTH_RADIUS_KM * cos_lat)))
    return lat - d_lat, lat + d_lat, lng - d_lng, lng + d_lng


@dataclass(frozen=True, slots=True)
class StationQuery:
    status: str | None = None
    search: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    radius_km: float | None = None
    deployed: bool | None = None  # admin filter; the public list is always deployed-only


@dataclass(frozen=True, slots=True)
class StationHit:
    station: Station
    distance_km: float | None
    rentable_banks: int


class StationService:
    def __init__(self, repository: StationRepository) -> None:
        self.repository = repository

    async def search(
        self, query: StationQuery, *, public: bool, page: int, page_size: int
    ) -> tuple[list[StationHit], int]:
        near = query.latitude is not None and query.longitude is not None
        if (query.latitude is None) != (query.longitude is None):
            raise BadRequest("lat and lng go together", code="VALIDATION_ERROR")
        if query.radius_km is not None and not near:
            raise BadRequest("radius_km needs lat and lng", code="VALIDATION_ERROR")
        box = None
        if near and query.radius_km is not None:
            assert query.latitude is not None and query.longitude is not None
            box = bounding_box(query.latitude, query.longitude, query.radius_km)
        stations = await self.repository.search(
            deployed_only=public,
            status=query.status,
            search=query.search,
            bounding_box=box,
        )
        if not public and query.deployed is not None:
            stations = [station for station in stations if station.is_deployed == query.deployed]

        located: list[tuple[Station, float | None]] = []
        for station in stations:
            distance = None
            if near:
                assert query.latitude is not None and query.longitude is not None
                distance = haversine_km(query.latitude, query.longitude, station.latitude, station.longitude)
                if query.radius_km is not None and distance > query.radius_km:
                    continue
            located.append((station, distance))
        if near:
            located.sort(key=lambda item: (item[1] or 0.0, item[0].name))

        total = len(located)
        window = located[(page - 1) * page_size : page * page_size]
        counts = await self.repository.rentable_counts([station.id for station, _ in window])
        hits = [StationHit(station, distance, _rentable(station, counts)) for station, distance in window]
        return hits, total

    async def public_detail(self, serial_number: str) -> tuple[Station, int]:
        station = await self.repository.get_by_serial(serial_number, with_slots=True)
        if station is None or not station.is_deployed:
            raise NotFound(f"No station {serial_number}")
        counts = await self.repository.rentable_counts([station.id])
        return station, _rentable(station, counts)

    async def admin_detail(self, station_id: uuid.UUID) -> tuple[Station, int]:
        station = await self.repository.get_with_slots(station_id)
        if station is None:
            raise NotFound(f"No station {station_id}")
        counts = await self.repository.rentable_counts([station.id])
        return station, _rentable(station, counts)

    async def configure(self, station_id: uuid.UUID, update: StationUpdate, *, actor: TokenClaims) -> Station:
        """Apply an admin's change and write its staff-audit row (admin API and console alike)."""
        station = await self.repository.get(station_id)
        if station is None:
            raise NotFound(f"No station {station_id}")
        changes = update.model_dump(exclude_unset=True)
        if "serial_number" in changes and changes["serial_number"] != station.serial_number:
            if await self.repository.serial_taken(changes["serial_number"], except_id=station.id):
                raise Conflict(
                    f"Serial {changes['serial_number']} belongs to another station", code="SERIAL_TAKEN"
                )
        for field in ("name", "serial_number", "latitude", "longitude", "address", "landmark"):
            if changes.get(field) is not None:
                setattr(station, field, changes[field])
        if changes.get("is_maintenance") is not None:
            await self._set_maintenance(station, bool(changes["is_maintenance"]))
        if changes.get("is_deployed") is not None:
            if changes["is_deployed"] and not _has_real_location(station):
                raise BadRequest(
                    "Set the station's name and coordinates before deploying it",
                    code="VALIDATION_ERROR",
                    details={
                        "latitude": ["required before deploying"],
                        "longitude": ["required before deploying"],
                    },
                )
            station.is_deployed = bool(changes["is_deployed"])
        await self.repository.session.flush()
        logged = update.model_dump(exclude_unset=True, mode="json")
        await record_staff_action(
            self.repository.session,
            actor=actor,
            action="station.maintenance" if set(logged) == {"is_maintenance"} else "station.configure",
            target_type="station",
            target_id=str(station_id),
            station_id=station_id,
            details={"changes": logged},
            outcome="applied",
        )
        return station

    async def _set_maintenance(self, station: Station, on: bool) -> None:
        if station.is_maintenance == on:
            return
        station.is_maintenance = on
        now = datetime.now(UTC)
        if on:
            new_status = StationStatus.MAINTENANCE.value
        else:
            recent = station.last_heartbeat is not None and now - station.last_heartbeat < OFFLINE_AFTER
            new_status = StationStatus.ONLINE.value if recent else StationStatus.OFFLINE.value
        if new_status != station.status:
            previous = None
            if station.status_changed_at is not None:
                previous = max(0.0, (now - station.status_changed_at).total_seconds())
            await self.repository.add_history(
                StationStatusHistory(
                    id=uuid.uuid4(),
                    station_id=station.id,
                    previous_status=station.status,
                    status=new_status,
                    trigger="admin",
                    changed_at=now,
                    previous_duration_s=previous,
                )
            )
            station.status = new_status
            station.status_changed_at = now


def _rentable(station: Station, counts: dict[uuid.UUID, int]) -> int:
    # A bank in an offline or maintenance station cannot be ejected, so it is not offered.
    if station.status != StationStatus.ONLINE.value or station.is_maintenance:
        return 0
    return counts.get(station.id, 0)


def _has_real_location(station: Station) -> bool:
    # Placeholder stations are created at (0, 0), a point in the Gulf of Guinea no cabinet stands on.
    return bool(station.name.strip()) and not (station.latitude == 0.0 and station.longitude == 0.0)
