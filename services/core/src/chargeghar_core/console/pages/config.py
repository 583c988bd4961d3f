"""Configuration: rental packages, late-fee policies, station discounts, serial-prefix models and station
provisioning (device registry, deploying a station).

Small Jinja forms over the service functions the /api/admin endpoints call (PricingService,
DeviceRegistry, StationService), not sqladmin: sqladmin writes rows through its own model views, which
would bypass those services' rules (one default late-fee policy, a package's policy must exist, a station
is deployed only with a name and coordinates), and it has neither our session, our CSRF token nor the
staff audit. Every change here writes a staff-audit row with the logged-in account as actor.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, TypeVar

from fastapi import APIRouter, Response
from pydantic import BaseModel, ValidationError
from sqlalchemy import select

from chargeghar_core.console.context import Action, ConsoleContext, Page
from chargeghar_core.devices.models import Device
from chargeghar_core.devices.repository import DeviceRepository
from chargeghar_core.devices.schemas import DeviceRegister
from chargeghar_core.devices.service import DeviceRegistry
from chargeghar_core.kit.errors import CoreError
from chargeghar_core.powerbanks.admin import create_model as create_bank_model
from chargeghar_core.powerbanks.repository import PowerBankRepository
from chargeghar_core.powerbanks.schemas import PowerBankModelCreate
from chargeghar_core.pricing.models import StationDiscount
from chargeghar_core.pricing.repository import PricingRepository
from chargeghar_core.pricing.schemas import DiscountIn, PackageIn, PackageUpdate, PolicyIn
from chargeghar_core.pricing.service import PricingService
from chargeghar_core.stations.models import Station
from chargeghar_core.stations.repository import StationRepository
from chargeghar_core.stations.schemas import StationUpdate
from chargeghar_core.stations.service import StationService

router = APIRouter(prefix="/console", include_in_schema=False)

BACK = "/console/config"
LIST_LIMIT = 100
ModelT = TypeVar("ModelT", bound=BaseModel)


class FormInvalid(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


async def _fields(ctx: ConsoleContext) -> dict[str, str]:
    form = await ctx.request.form()
    return {
        key: value.strip() for key, value in form.items() if isinstance(value, str) and key != "csrf_token"
    }


def _parse(model: type[ModelT], values: Mapping[str, Any]) -> ModelT:
    """The API's own request model validates the form (same bounds as the JSON API)."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'form'}: {error['msg']}"
            for error in exc.errors()
        )
        raise FormInvalid(f"Not saved — {problems}") from exc


def _optional(values: Mapping[str, str], *names: str) -> dict[str, str]:
    """Form fields left empty are "not given" (optional fields of the API models)."""
    return {name: values[name] for name in names if values.get(name)}


def _checkbox(values: Mapping[str, str], name: str) -> bool:
    return values.get(name) in ("on", "true", "1")


def _pricing(ctx: ConsoleContext) -> PricingService:
    return PricingService(PricingRepository(ctx.db), actor=ctx.staff.claims)


async def _apply(ctx: ConsoleContext, change: Any, anchor: str) -> Response:
    """Run ``change`` (a coroutine answering the flash text); typed errors become an error flash."""
    try:
        text = await change
    except FormInvalid as exc:
        return ctx.redirect(f"{BACK}#{anchor}", error=exc.message)
    except CoreError as exc:
        await ctx.db.rollback()
        return ctx.redirect(f"{BACK}#{anchor}", error=f"Not saved — {exc.message}")
    return ctx.redirect(f"{BACK}#{anchor}", ok=text)


@router.get("/config")
async def config(ctx: Page) -> Response:
    pricing = PricingRepository(ctx.db)
    discounts = (
        await ctx.db.execute(
            select(StationDiscount, Station.name, Station.imei)
            .join(Station, Station.id == StationDiscount.station_id)
            .order_by(Station.name)
        )
    ).all()
    devices, device_total = await DeviceRepository(ctx.db).search(status=None, limit=LIST_LIMIT, offset=0)
    undeployed = (
        await ctx.db.scalars(
            select(Station)
            .where(Station.is_deployed.is_(False))
            .order_by(Station.created_at.desc())
            .limit(LIST_LIMIT)
        )
    ).all()
    return ctx.render(
        "pages/config.html",
        {
            "packages": await pricing.packages(active_only=False),
            "policies": await pricing.policies(),
            "discounts": discounts,
            "models": await PowerBankRepository(ctx.db).list_models(),
            "devices": devices,
            "device_total": device_total,
            "undeployed": undeployed,
        },
    )


# --------------------------------------------------------------------------------------------- packages


@router.post("/config/packages")
async def create_package(ctx: Action) -> Response:
    async def change() -> str:
        values = await _fields(ctx)
        body = _parse(
            PackageIn,
            {
                **_optional(
                    values, "name", "description", "duration_minutes", "price_paisa", "payment_model"
                ),
                "is_active": _checkbox(values, "is_active"),
                "late_fee_policy_id": values.get("late_fee_policy_id") or None,
            },
        )
        package = await _pricing(ctx).create_package(body)
        return f"Package {package.name} created"

    return await _apply(ctx, change(), "packages")


@router.post("/config/packages/{package_id}")
async def update_package(ctx: Action, package_id: uuid.UUID) -> Response:
    async def change() -> str:
        values = await _fields(ctx)
        body = _parse(
            PackageUpdate,
            {
                **_optional(values, "name", "price_paisa"),
                "is_active": _checkbox(values, "is_active"),
                "late_fee_policy_id": values.get("late_fee_policy_id") or None,
            },
        )
        package = await _pricing(ctx).update_package(package_id, body)
        return f"Package {package.name} saved"

    return await _apply(ctx, change(), "packages")


# --------------------------------------------------------------------------------------------- policies


def _policy_body(values: Mapping[str, str]) -> PolicyIn:
    return _parse(
        PolicyIn,
        {
            **_optional(
                values,
                "name",
                "rate_multiplier_bp",
                "flat_per_hour_paisa",
                "grace_minutes",
                "daily_cap_paisa",
            ),
            "is_default": _checkbox(values, "is_default"),
        },
    )


@router.post("/config/policies")
async def create_policy(ctx: Action) -> Response:
    async def change() -> str:
        body = _policy_body(await _fields(ctx))
        policy = await _pricing(ctx).create_policy(body)
        return f"Late-fee policy {policy.name} created"

    return await _apply(ctx, change(), "policies")


@router.post("/config/policies/{policy_id}")
async def update_policy(ctx: Action, policy_id: uuid.UUID) -> Response:
    async def change() -> str:
        body = _policy_body(await _fields(ctx))
        policy = await _pricing(ctx).update_policy(policy_id, body)
        return f"Late-fee policy {policy.name} saved"

    return await _apply(ctx, change(), "policies")


# --------------------------------------------------------------------------------------------- discounts


async def _station_by_imei(ctx: ConsoleContext, imei: str) -> Station:
    station = await ctx.db.scalar(select(Station).where(Station.imei == imei))
    if station is None:
        raise FormInvalid(f"Not saved — no station with IMEI {imei or '(empty)'}")
    return station


@router.post("/config/discounts")
async def set_discount(ctx: Action) -> Response:
    async def change() -> str:
        values = await _fields(ctx)
        station = await _station_by_imei(ctx, values.get("imei", ""))
        body = _parse(
            DiscountIn,
            {**_optional(values, "percent_bp", "valid_until"), "is_active": _checkbox(values, "is_active")},
        )
        await _pricing(ctx).set_discount(station.id, body)
        return f"Discount of {body.percent_bp / 100:g} % set for {station.name}"

    return await _apply(ctx, change(), "discounts")


@router.post("/config/discounts/{station_id}/delete")
async def remove_discount(ctx: Action, station_id: uuid.UUID) -> Response:
    async def change() -> str:
        await _pricing(ctx).remove_discount(station_id)
        return "Discount removed"

    return await _apply(ctx, change(), "discounts")


# --------------------------------------------------------------------------------------------- models


@router.post("/config/models")
async def create_model(ctx: Action) -> Response:
    async def change() -> str:
        body = _parse(
            PowerBankModelCreate, _optional(await _fields(ctx), "serial_prefix", "model", "capacity_mah")
        )
        await create_bank_model(ctx.db, ctx.request.app.state.model_catalog, body, ctx.staff.claims)
        return f"Prefix {body.serial_prefix} → {body.model} ({body.capacity_mah} mAh)"

    return await _apply(ctx, change(), "models")


# --------------------------------------------------------------------------------------------- provisioning


@router.post("/config/devices")
async def register_device(ctx: Action) -> Response:
    async def change() -> str:
        body = _parse(DeviceRegister, _optional(await _fields(ctx), "imei", "note"))
        device = await DeviceRegistry(ctx.db).register(body.imei, body.note, ctx.staff.claims)
        return f"Device {device.imei} registered ({device.status})"

    return await _apply(ctx, change(), "devices")


@router.post("/config/devices/{imei}/{decision}")
async def decide_device(ctx: Action, imei: str, decision: str) -> Response:
    async def change() -> str:
        if decision not in ("approve", "revoke"):
            raise FormInvalid("Unknown decision")
        note = (await _fields(ctx)).get("note") or None
        registry = DeviceRegistry(ctx.db)
        device: Device = await (registry.approve if decision == "approve" else registry.revoke)(
            imei, note, ctx.staff.claims
        )
        return f"Device {device.imei}: {device.status}"

    return await _apply(ctx, change(), "devices")


@router.post("/config/stations/{station_id}/deploy")
async def deploy_station(ctx: Action, station_id: uuid.UUID) -> Response:
    async def change() -> str:
        values = await _fields(ctx)
        update = _parse(
            StationUpdate,
            {
                **_optional(values, "name", "serial_number", "latitude", "longitude", "address", "landmark"),
                "is_deployed": True,
            },
        )
        station = await StationService(StationRepository(ctx.db)).configure(
            station_id, update, actor=ctx.staff.claims
        )
        return f"Station {station.name} deployed"

    return await _apply(ctx, change(), "stations")
