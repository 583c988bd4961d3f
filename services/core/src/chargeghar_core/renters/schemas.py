"""API models of the renters domain."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from chargeghar_core.auth.models import User
from chargeghar_core.auth.tokens import TokenPair
from chargeghar_core.notifications.models import NotificationPreference
from chargeghar_core.renters.models import AccountStatus, RenterProfile
from chargeghar_core.renters.models import RenterSession as DeviceSession


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


# ------------------------------------------------------------------------------------- login by code


class OtpRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"destination": "+9779812345678", "language": "ne"}]}
    )

    destination: str = Field(
        min_length=3, max_length=254, description="Phone number (SMS) or e-mail address to send the code to"
    )
    language: Literal["en", "ne"] = Field(default="en", description="Language of the message")


class OtpRequested(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"destination": "+977******78", "channel": "sms", "expires_in_s": 300}]
        }
    )

    destination: str = Field(description="The destination, masked")
    channel: Literal["sms", "email"]
    expires_in_s: int


class OtpVerify(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "destination": "+9779812345678",
                    "code": "482913",
                    "device_name": "Sita's Pixel 7",
                    "platform": "android",
                }
            ]
        }
    )

    destination: str = Field(min_length=3, max_length=254)
    code: str = Field(pattern=r"^[0-9]{6}$", description="The 6-digit code received")
    device_name: str = Field(default="", max_length=100)
    platform: Literal["", "android", "ios", "web"] = ""


class OtpSession(RenterSession):
    new_account: bool = Field(description="True when this login created the account")


# ------------------------------------------------------------------------------------- devices


class DeviceOut(BaseModel):
    id: uuid.UUID
    device_name: str
    platform: str
    push_enabled: bool = Field(description="A push token is registered for this device")
    created_at: datetime
    last_seen_at: datetime
    current: bool = Field(description="The device making this request")

    @classmethod
    def of(cls, row: DeviceSession, current_family: str | None) -> DeviceOut:
        return cls(
            id=row.id,
            device_name=row.device_name,
            platform=row.platform,
            push_enabled=row.push_token is not None,
            created_at=row.created_at,
            last_seen_at=row.last_seen_at,
            current=current_family == row.id.hex,
        )


class PushTokenRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "push_token": "fcm-registration-token-from-the-app",
                    "device_name": "Pixel 7",
                    "platform": "android",
                }
            ]
        }
    )

    push_token: str = Field(min_length=10, max_length=512, pattern=r"^[A-Za-z0-9_:\-.]+$")
    device_name: str | None = Field(default=None, max_length=100)
    platform: Literal["android", "ios", "web"] | None = None


# ------------------------------------------------------------------------------------- preferences


class PreferencesOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"language": "ne", "push": True, "sms": True, "email": False}]}
    )

    language: Literal["en", "ne"]
    push: bool
    sms: bool
    email: bool

    @classmethod
    def of(cls, prefs: NotificationPreference) -> PreferencesOut:
        return cls(
            language="ne" if prefs.language == "ne" else "en",
            push=prefs.push_enabled,
            sms=prefs.sms_enabled,
            email=prefs.email_enabled,
        )


class PreferencesUpdate(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"language": "ne", "sms": False}]})

    language: Literal["en", "ne"] | None = None
    push: bool | None = None
    sms: bool | None = None
    email: bool | None = None
