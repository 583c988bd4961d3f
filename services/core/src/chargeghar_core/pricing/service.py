"""Admin rules of pricing: packages, late-fee policies (one default), station discounts.

Every change writes its staff-audit row here, in the caller's transaction, so the admin API and the console
(the two callers) record the same actions.
"""

from __future__ import annotations

import uuid
from typing import Any

from chargeghar_core.audit.service import record_staff_action
from chargeghar_core.auth.tokens import TokenClaims
from chargeghar_core.kit.db import utcnow
from chargeghar_core.kit.errors import NotFound
from chargeghar_core.pricing.models import LateFeePolicy, RentalPackage, StationDiscount
from chargeghar_core.pricing.repository import PricingRepository
from chargeghar_core.pricing.schemas import DiscountIn, PackageIn, PackageUpdate, PolicyIn
from chargeghar_core.stations.models import Station


class PricingService:
    def __init__(self, repository: PricingRepository, *, actor: TokenClaims) -> None:
        self.repository = repository
        self.actor = actor

    async def _audit(
        self,
        action: str,
        target_type: str,
        target_id: uuid.UUID,
        details: dict[str, Any],
        *,
        station_id: uuid.UUID | None = None,
    ) -> None:
        await record_staff_action(
            self.repository.session,
            actor=self.actor,
            action=action,
            target_type=target_type,
            target_id=str(target_id),
            station_id=station_id,
            details=details,
            outcome="applied",
        )

    async def create_package(self, body: PackageIn) -> RentalPackage:
        if body.late_fee_policy_id is not None:
            await self._require_policy(body.late_fee_policy_id)
        package = RentalPackage(id=uuid.uuid4(), created_at=utcnow(), **body.model_dump())
        await self.repository.add(package)
        await self._audit("package.create", "package", package.id, body.model_dump(mode="json"))
        return package

    async def update_package(self, package_id: uuid.UUID, body: PackageUpdate) -> RentalPackage:
        package = await self.repository.package(package_id)
        if package is None:
            raise NotFound("Package not found", code="PACKAGE_NOT_FOUND")
        changes = body.model_dump(exclude_unset=True)
        if changes.get("late_fee_policy_id") is not None:
            await self._require_policy(changes["late_fee_policy_id"])
        for name, value in changes.items():
            setattr(package, name, value)
        await self.repository.session.flush()
        await self._audit(
            "package.update", "package", package.id, body.model_dump(mode="json", exclude_unset=True)
        )
        return package

    async def create_policy(self, body: PolicyIn) -> LateFeePolicy:
        if body.is_default:
            await self.repository.clear_default_policy()
        policy = LateFeePolicy(id=uuid.uuid4(), created_at=utcnow(), **body.model_dump())
        await self.repository.add(policy)
        await self._audit(
            "late_fee_policy.create", "late_fee_policy", policy.id, body.model_dump(mode="json")
        )
        return policy

    async def update_policy(self, policy_id: uuid.UUID, body: PolicyIn) -> LateFeePolicy:
        policy = await self._require_policy(policy_id)
        if body.is_default and not policy.is_default:
            await self.repository.clear_default_policy()
        for name, value in body.model_dump().items():
            setattr(policy, name, value)
        await self.repository.session.flush()
        await self._audit(
            "late_fee_policy.update", "late_fee_policy", policy.id, body.model_dump(mode="json")
        )
        return policy

    async def set_discount(self, station_id: uuid.UUID, body: DiscountIn) -> StationDiscount:
        if await self.repository.session.get(Station, station_id) is None:
            raise NotFound("Station not found", code="STATION_NOT_FOUND")
        discount = await self.repository.station_discount(station_id)
        if discount is None:
            discount = StationDiscount(
                id=uuid.uuid4(), station_id=station_id, created_at=utcnow(), **body.model_dump()
            )
            await self.repository.add(discount)
        else:
            for name, value in body.model_dump().items():
                setattr(discount, name, value)
            await self.repository.session.flush()
        await self._audit(
            "station_discount.set", "station", station_id, body.model_dump(mode="json"), station_id=station_id
        )
        return discount

    async def remove_discount(self, station_id: uuid.UUID) -> None:
        discount = await self.repository.station_discount(station_id)
        if discount is None:
            raise NotFound("No discount for this station", code="DISCOUNT_NOT_FOUND")
        await self.repository.delete(discount)
        await self._audit("station_discount.remove", "station", station_id, {}, station_id=station_id)

    async def _require_policy(self, policy_id: uuid.UUID) -> LateFeePolicy:
        policy = await self.repository.policy(policy_id)
        if policy is None:
            raise NotFound("Late-fee policy not found", code="POLICY_NOT_FOUND")
        return policy
