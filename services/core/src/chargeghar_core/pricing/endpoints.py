"""Public package list and the admin pricing routes."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from chargeghar_core.auth.dependencies import StaffUser
from chargeghar_core.kit.db import DbSession
from chargeghar_core.kit.openapi import errors
from chargeghar_core.kit.schemas import Envelope
from chargeghar_core.pricing.repository import PricingRepository
from chargeghar_core.pricing.schemas import (
    DiscountIn,
    DiscountOut,
    PackageIn,
    PackageOut,
    PackageUpdate,
    PolicyIn,
    PolicyOut,
)
from chargeghar_core.pricing.service import PricingService

router = APIRouter(tags=["pricing"])
admin_router = APIRouter(tags=["pricing admin"])


@router.get(
    "/api/packages",
    response_model=Envelope[list[PackageOut]],
    summary="Rental packages on offer (duration and price)",
)
async def active_packages(session: DbSession) -> Envelope[list[PackageOut]]:
    packages = await PricingRepository(session).packages(active_only=True)
    return Envelope(data=[PackageOut.model_validate(p) for p in packages])


@admin_router.get(
    "/api/admin/packages",
    response_model=Envelope[list[PackageOut]],
    summary="All packages, inactive ones too",
)
async def all_packages(session: DbSession, _staff: StaffUser) -> Envelope[list[PackageOut]]:
    packages = await PricingRepository(session).packages(active_only=False)
    return Envelope(data=[PackageOut.model_validate(p) for p in packages])


@admin_router.post(
    "/api/admin/packages",
    status_code=201,
    response_model=Envelope[PackageOut],
    summary="Create a rental package",
)
async def create_package(body: PackageIn, session: DbSession, staff: StaffUser) -> Envelope[PackageOut]:
    package = await PricingService(PricingRepository(session), actor=staff).create_package(body)
    return Envelope(message="Package created", data=PackageOut.model_validate(package))


@admin_router.patch(
    "/api/admin/packages/{package_id}",
    response_model=Envelope[PackageOut],
    summary="Change a package (price, duration, active); fields left out stay unchanged",
    responses=errors((404, "PACKAGE_NOT_FOUND", "No such package")),
)
async def update_package(
    package_id: uuid.UUID, body: PackageUpdate, session: DbSession, staff: StaffUser
) -> Envelope[PackageOut]:
    package = await PricingService(PricingRepository(session), actor=staff).update_package(package_id, body)
    return Envelope(message="Package updated", data=PackageOut.model_validate(package))


@admin_router.get(
    "/api/admin/late-fee-policies", response_model=Envelope[list[PolicyOut]], summary="Late-fee policies"
)
async def policies(session: DbSession, _staff: StaffUser) -> Envelope[list[PolicyOut]]:
    rows = await PricingRepository(session).policies()
    return Envelope(data=[PolicyOut.model_validate(p) for p in rows])


@admin_router.post(
    "/api/admin/late-fee-policies",
    status_code=201,
    response_model=Envelope[PolicyOut],
    summary="Create a late-fee policy",
)
async def create_policy(body: PolicyIn, session: DbSession, staff: StaffUser) -> Envelope[PolicyOut]:
    policy = await PricingService(PricingRepository(session), actor=staff).create_policy(body)
    return Envelope(message="Late-fee policy created", data=PolicyOut.model_validate(policy))


@admin_router.put(
    "/api/admin/late-fee-policies/{policy_id}",
    response_model=Envelope[PolicyOut],
    summary="Replace a late-fee policy",
    responses=errors((404, "POLICY_NOT_FOUND", "No such late-fee policy")),
)
async def update_policy(
    policy_id: uuid.UUID, body: PolicyIn, session: DbSession, staff: StaffUser
) -> Envelope[PolicyOut]:
    policy = await PricingService(PricingRepository(session), actor=staff).update_policy(policy_id, body)
    return Envelope(message="Late-fee policy updated", data=PolicyOut.model_validate(policy))


@admin_router.put(
    "/api/admin/stations/{station_id}/discount",
    response_model=Envelope[DiscountOut],
    summary="Set (or replace) a station's discount",
    responses=errors((404, "STATION_NOT_FOUND", "No such station")),
)
async def set_discount(
    station_id: uuid.UUID, body: DiscountIn, session: DbSession, staff: StaffUser
) -> Envelope[DiscountOut]:
    discount = await PricingService(PricingRepository(session), actor=staff).set_discount(station_id, body)
    return Envelope(message="Discount saved", data=DiscountOut.model_validate(discount))


@admin_router.delete(
    "/api/admin/stations/{station_id}/discount",
    response_model=Envelope[None],
    summary="Remove a station's discount",
    responses=errors((404, "DISCOUNT_NOT_FOUND", "The station has no discount")),
)
async def remove_discount(station_id: uuid.UUID, session: DbSession, staff: StaffUser) -> Envelope[None]:
    await PricingService(PricingRepository(session), actor=staff).remove_discount(station_id)
    return Envelope(message="Discount removed", data=None)
