"""API models of the renters domain."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field

from chargeghar_core.auth.models import User
from chargeghar_core.auth.tokens import TokenPair
from chargeghar_core.renters.models import AccountStatus, RenterProfile


class RegisterRequest(BaseModel):
    email: str | None = Field(default=None, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    phone: str | None = Field(default=None, max_length=20)
    password: str = Field(min_length=8, max_length=200)
    display_name: str = Field(default="", max_length=200)


class RenterLoginRequest(BaseModel):
    login: str = Field(min_length=3, max_length=254, description="E-mail address or phone number")
    password: str = Field(min_length=1, max_length=200)


class RenterRefreshRequest(BaseModel):
    refresh: str = Field(min_length=10)


class ProfileUpdate(BaseModel):
    display_name: str | None = Field(default=None, max_length=200)
    phone: str | None = Field(default=None, max_length=20)


class StatusUpdate(BaseModel):
    status: AccountStatus
    reason: str | None = Field(default=None, max_length=500)


class RenterOut(BaseModel):
    id: uuid.UUID
    email: str | None
    phone: str | None
    display_name: str
    status: str

    @classmethod
    def of(cls, user: User, profile: RenterProfile) -> RenterOut:
        email = None if user.email.endswith(".invalid") else user.email
        return cls(
            id=user.id,
            email=email,
            phone=profile.phone,
            display_name=profile.display_name,
            status=profile.status,
        )


class RenterSession(BaseModel):
    access_token: str
    refresh_token: str
    renter: RenterOut

    @classmethod
    def of(cls, user: User, profile: RenterProfile, pair: TokenPair) -> RenterSession:
        return cls(
            access_token=pair.access_token,
            refresh_token=pair.refresh_token,
            renter=RenterOut.of(user, profile),
        )
