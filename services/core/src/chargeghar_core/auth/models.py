"""Accounts that log in to core's staff API and the refresh tokens already spent."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from chargeghar_core.kit.db import Base, TimestampMixin, utcnow


class Role(StrEnum):
    ADMIN = "admin"
    STAFF = "staff"
    VIEWER = "viewer"  # staff who may read every admin GET and change nothing
    SERVICE = "service"  # machine accounts such as the ingest
    RENTER = "renter"  # app users; cannot log in to the staff API

    @property
    def is_staff(self) -> bool:
        return self is not Role.RENTER


class User(TimestampMixin, Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("role IN ('admin', 'staff', 'viewer', 'service', 'renter')", name="role_known"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    full_name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default=Role.STAFF.value)
    is_active: Mapped[bool] = mapped_column(default=True)
    # Bumped when a refresh token is replayed: every refresh token issued before is refused from then on.
    token_generation: Mapped[int] = mapped_column(default=0)
    last_login_at: Mapped[datetime | None] = mapped_column(default=None)

    @property
    def role_enum(self) -> Role:
        return Role(self.role)


class UsedRefreshToken(Base):
    """A refresh token's ``jti`` once it has been exchanged; the primary key makes a second use fail."""

    __tablename__ = "used_refresh_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    used_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
