"""Decisions about devices: the ingest's check-in at connect, and the admin's register/approve/revoke.

Every admin decision writes a staff-audit row (``device.register`` / ``device.approve`` /
``device.revoke``, in the caller's transaction, for the admin API and the console alike) and a log line naming
the actor; the row keeps who decided and when.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.audit.service import record_staff_action
from chargeghar_core.auth.tokens import TokenClaims
from chargeghar_core.devices.models import Device, DeviceStatus
from chargeghar_core.devices.repository import DeviceRepository
from chargeghar_core.kit.db import utcnow
from chargeghar_core.kit.errors import Conflict, NotFound

logger = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class CheckIn:
    device: Device
    created: bool


class DeviceRegistry:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.devices = DeviceRepository(session)

    async def check_in(self, imei: str, *, approve: bool, caller: TokenClaims) -> CheckIn:
        """A station asked the ingest for credentials: record it (pending, or approved when the ingest runs
        the `open` policy) and answer its status. A revoked device stays revoked whatever the policy."""
        now = utcnow()
        status = DeviceStatus.APPROVED if approve else DeviceStatus.PENDING
        created = await self.devices.insert_if_absent(imei, status.value, now, seen=True)
        if not created:
            await self.devices.mark_seen(imei, now)
        device = await self.devices.get(imei, for_update=approve and not created)
        assert device is not None
        if approve and device.status == DeviceStatus.PENDING:
            self._approve(device, caller, note=None)
        elif approve and created:
            device.approved_by = caller.user_id
        if created:
            logger.info("device.first_seen", imei=imei, status=device.status, reported_by=caller.email)
        await self.session.flush()
        return CheckIn(device, created)

    async def register(self, imei: str, note: str | None, actor: TokenClaims) -> Device:
        created = await self.devices.insert_if_absent(imei, DeviceStatus.APPROVED.value, utcnow(), seen=False)
        device = await self.devices.get(imei, for_update=True)
        assert device is not None
        if not created:
            raise Conflict(
                f"Device {imei} is registered already ({device.status}); approve or revoke it",
                code="DEVICE_EXISTS",
                details={"status": device.status},
            )
        device.approved_by = actor.user_id
        device.note = note
        await self.session.flush()
        logger.info("device.registered", imei=imei, actor_id=str(actor.user_id), actor=actor.email, note=note)
        await self._audit("device.register", device, note, actor)
        return device

    async def approve(self, imei: str, note: str | None, actor: TokenClaims) -> Device:
        device = await self._existing(imei)
        self._approve(device, actor, note=note)
        await self.session.flush()
        logger.info("device.approved", imei=imei, actor_id=str(actor.user_id), actor=actor.email, note=note)
        await self._audit("device.approve", device, note, actor)
        return device

    async def revoke(self, imei: str, note: str | None, actor: TokenClaims) -> Device:
        device = await self._existing(imei)
        device.status = DeviceStatus.REVOKED.value
        device.revoked_by = actor.user_id
        device.revoked_at = utcnow()
        if note is not None:
            device.note = note
        await self.session.flush()
        logger.warning("device.revoked", imei=imei, actor_id=str(actor.user_id), actor=actor.email, note=note)
        await self._audit("device.revoke", device, note, actor)
        return device

    async def _audit(self, action: str, device: Device, note: str | None, actor: TokenClaims) -> None:
        await record_staff_action(
            self.session,
            actor=actor,
            action=action,
            target_type="device",
            target_id=device.imei,
            details={"note": note, "status": device.status},
            outcome="applied",
        )

    async def _existing(self, imei: str) -> Device:
        device = await self.devices.get(imei, for_update=True)
        if device is None:
            raise NotFound(f"Device {imei} is not registered", code="DEVICE_NOT_FOUND")
        return device

    @staticmethod
    def _approve(device: Device, actor: TokenClaims, *, note: str | None) -> None:
        device.status = DeviceStatus.APPROVED.value
        device.approved_by = actor.user_id
        device.approved_at = utcnow()
        if note is not None:
            device.note = note
