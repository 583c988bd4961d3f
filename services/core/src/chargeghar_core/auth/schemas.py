"""API models of the auth endpoints (contract.md §1)."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field


class LoginRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"email": "ingest@chargeghar.example", "password": "s3cret-pass"}]}
    )

    email: str = Field(min_length=3, max_length=254)
    password: str = Field(min_length=1, max_length=1024)


class RefreshRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"refresh": "<refresh jwt>"}]})

    refresh: str = Field(min_length=1)


class UserSummary(BaseModel):
    id: uuid.UUID
    email: str
    is_staff: bool
    role: str


class TokenData(BaseModel):
    user_id: uuid.UUID
    access_token: str
    refresh_token: str
    user: UserSummary


class TokenEnvelope(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "success": True,
                    "message": "Admin login successful",
                    "data": {
                        "user_id": "7a0c3c1e-2f8e-4d55-9a43-3f1f6f5f9a10",
                        "access_token": "<jwt>",
                        "refresh_token": "<jwt>",
                        "user": {
                            "id": "7a0c3c1e-2f8e-4d55-9a43-3f1f6f5f9a10",
                            "email": "ingest@chargeghar.example",
                            "is_staff": True,
                            "role": "service",
                        },
                    },
                }
            ]
        }
    )

    success: bool = True
    message: str
    data: TokenData
