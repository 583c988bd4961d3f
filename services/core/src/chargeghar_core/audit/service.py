"""Record staff actions: :func:`record_staff_action` adds a row in the caller's transaction (flush only)."""

from __future__ import annotations

import math
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from chargeghar_core.audit.models import StaffAuditEntry
from chargeghar_core.auth.tokens import TokenClaims

MASK = "***"
# A key is secret when its lower-cased name contains one of these (password, api_key, wifi_pwd, ...).
SECRET_KEY_PARTS = ("password", "passwd", "secret", "token", "pwd", "key", "signature", "credential")
# Keys that contain a secret part but are not secrets.
NOT_SECRET_KEYS = frozenset({"idempotency_key"})
_MAX_DEPTH = 12
_MAX_STRING = 2000


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    if lowered in NOT_SECRET_KEYS:
        return False
    return any(part in lowered for part in SECRET_KEY_PARTS)


def mask_secrets(value: Any, _depth: int = 0) -> Any:
    """A JSON-storable copy of ``value`` with the values of secret-looking keys replaced, at any depth."""
    if _depth > _MAX_DEPTH:
        return MASK
    if isinstance(value, dict):
        return {
            str(key): MASK if is_secret_key(str(key)) and item is not None else mask_secrets(item, _depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [mask_secrets(item, _depth + 1) for item in value]
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value[:_MAX_STRING]
    return str(value)[:_MAX_STRING]


async def record_staff_action(
    session: AsyncSession,
    *,
    actor: TokenClaims,
    action: str,
    target_type: str,
    target_id: str | None = None,
    station_id: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
    outcome: str | None = None,
    elapsed_ms: float | None = None,
) -> None:
    """Add one audit row to ``session`` (the same transaction as the change it records) and flush it.

    Never commits: the caller's commit makes the change and its audit row durable together."""
    session.add(
        StaffAuditEntry(
            id=uuid.uuid4(),
            actor_id=actor.user_id,
            actor_email=actor.email[:254],
            actor_role=str(actor.role.value if hasattr(actor.role, "value") else actor.role)[:16],
            action=action[:64],
            target_type=target_type[:32],
            target_id=None if target_id is None else str(target_id)[:128],
            station_id=station_id,
            details=mask_secrets(details or {}),
            outcome=None if outcome is None else outcome[:32],
            elapsed_ms=None if elapsed_ms is None else round(float(elapsed_ms), 3),
        )
    )
    await session.flush()
