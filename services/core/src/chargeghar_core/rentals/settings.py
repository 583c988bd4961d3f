"""Settings of the rentals and payments domains: ``CORE_RENTALS__*`` and ``CORE_PAYMENTS__*``.

Kept beside the domain (not in core's ``Settings``) so that they can be read on their own; the names are the
ones a nested ``rentals`` / ``payments`` group of core's settings would have.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from chargeghar_core.settings import MIN_PRODUCTION_SECRET_LENGTH, PLACEHOLDER_SECRETS, Environment


class RentalSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CORE_RENTALS__", env_file=".env", extra="ignore")

    ingest_url: str = Field(default="http://127.0.0.1:8100", description="Base URL of the ingest command API")
    ingest_service_token: SecretStr | None = Field(default=None, description="Optional X-Service-Token")
    popup_timeout_s: float = Field(default=15.0, gt=0, le=120, description="Device wait for an eject")
    check_timeout_s: float = Field(default=15.0, gt=0, le=120, description="Device wait for a `check`")
    http_margin_s: float = Field(default=5.0, ge=0, description="Added to a command's timeout for HTTP")
    busy_retry_s: float = Field(default=10.0, ge=0, description="How long DEVICE_BUSY answers are retried")
    start_wait_s: float = Field(
        default=25.0, gt=0, description="POST /api/rentals waits this long for the outcome, then answers 202"
    )
    min_battery_level: int = Field(default=20, ge=0, le=100, description="Banks below this are not offered")
    postpaid_min_balance_paisa: int = Field(default=5000, ge=0, description="Wallet needed for postpaid")
    max_extensions: int = Field(default=2, ge=0)
    free_cancel_minutes: int = Field(
        default=5, ge=0, description="A bank back in its own slot within this time ends the rental for free"
    )
    overdue_job_interval_s: float = Field(default=60.0, gt=0)
    pending_recheck_after_s: float = Field(
        default=120.0, gt=0, description="The job re-checks rentals pending longer than this"
    )
    job_batch_size: int = Field(default=100, ge=1)
    lost_after_hours: int = Field(default=72, ge=1, description="Overdue this long = the bank is lost")
    lost_policy: Literal["charge_fee", "mark_only"] = "charge_fee"
    lost_bank_fee_paisa: int = Field(default=150_000, ge=0)
    jobs_enabled: bool = True


class PaymentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CORE_PAYMENTS__", env_file=".env", extra="ignore")

    environment: Environment = Field(default="development", validation_alias="CORE_ENVIRONMENT")
    currency: str = Field(default="NPR", min_length=3, max_length=3)
    default_provider: Literal["sandbox", "razorpay"] = "sandbox"
    sandbox_enabled: bool = True
    sandbox_secret: SecretStr = SecretStr("sandbox-secret")
    min_topup_paisa: int = Field(default=1000, ge=1)
    max_topup_paisa: int = Field(default=5_000_000, ge=1)
    razorpay_base_url: str = "https://api.razorpay.com/v1"
    razorpay_key_id: str = ""
    razorpay_key_secret: SecretStr = SecretStr("")
    razorpay_webhook_secret: SecretStr = SecretStr("")
    razorpay_currency: str = "INR"
    razorpay_timeout_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _refuse_sandbox_and_placeholders_in_production(self) -> PaymentSettings:
        if self.environment != "production":
            return self
        if self.sandbox_enabled:
            raise ValueError("CORE_PAYMENTS__SANDBOX_ENABLED must be false in production")
        if self.default_provider == "razorpay":
            for name, secret in (
                ("CORE_PAYMENTS__RAZORPAY_KEY_SECRET", self.razorpay_key_secret),
                ("CORE_PAYMENTS__RAZORPAY_WEBHOOK_SECRET", self.razorpay_webhook_secret),
            ):
                value = secret.get_secret_value()
                if (
                    value.strip().lower() in PLACEHOLDER_SECRETS
                    or len(value) < MIN_PRODUCTION_SECRET_LENGTH // 2
                ):
                    raise ValueError(f"{name} must be set in production")
        return self
