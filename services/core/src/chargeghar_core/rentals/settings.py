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


# eSewa's published UAT secret key (developer.esewa.com.np, "Epay-V2"): fine for its sandbox, refused in
# production, like the sandbox hosts of both providers.
ESEWA_UAT_SECRET = "8gBm/:&EnhH.1/q"  # noqa: S105 - public UAT key, refused in production
SANDBOX_HOSTS = (
    "rc-epay.esewa.com.np",
    "rc.esewa.com.np",
    "uat.esewa.com.np",
    "dev.khalti.com",
    "a.khalti.com",
)


class PaymentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CORE_PAYMENTS__", env_file=".env", extra="ignore")

    environment: Environment = Field(default="development", validation_alias="CORE_ENVIRONMENT")
    currency: str = Field(default="NPR", min_length=3, max_length=3)
    default_provider: Literal["sandbox", "razorpay", "esewa", "khalti"] = "sandbox"
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
    # Nepal wallets (see docs/operations.md "Payments"). Defaults are the providers' documented sandboxes.
    public_base_url: str = Field(
        default="http://127.0.0.1:8000", description="Core's public URL: eSewa/Khalti send renters back here"
    )
    esewa_enabled: bool = False
    esewa_form_url: str = "https://rc-epay.esewa.com.np/api/epay/main/v2/form"
    esewa_status_url: str = "https://rc.esewa.com.np/api/epay/transaction/status/"
    esewa_product_code: str = Field(default="EPAYTEST", min_length=1, max_length=64)
    esewa_secret_key: SecretStr = SecretStr(ESEWA_UAT_SECRET)
    khalti_enabled: bool = False
    khalti_base_url: str = "https://dev.khalti.com/api/v2"
    khalti_secret_key: SecretStr = SecretStr("")
    provider_timeout_s: float = Field(default=10.0, gt=0, le=60, description="Per call to eSewa/Khalti")
    provider_retries: int = Field(default=2, ge=0, le=5, description="Extra attempts of idempotent calls")
    topup_recheck_after_s: float = Field(
        default=120.0, gt=0, description="The job looks up top-ups still pending after this long"
    )
    topup_expire_after_s: float = Field(
        default=3900.0, gt=0, description="A top-up the provider never completed expires after this long"
    )
    payment_job_interval_s: float = Field(default=60.0, gt=0)
    payment_job_batch_size: int = Field(default=50, ge=1, le=1000)
    payment_jobs_enabled: bool = True

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
        if self.esewa_enabled:
            for url in (self.esewa_form_url, self.esewa_status_url):
                if any(host in url for host in SANDBOX_HOSTS):
                    raise ValueError("CORE_PAYMENTS__ESEWA_* URLs must be eSewa's production URLs")
            key = self.esewa_secret_key.get_secret_value()
            if self.esewa_product_code == "EPAYTEST" or key == ESEWA_UAT_SECRET or _placeholder(key):
                raise ValueError(
                    "CORE_PAYMENTS__ESEWA_PRODUCT_CODE and _SECRET_KEY must be set for production"
                )
        if self.khalti_enabled:
            if any(host in self.khalti_base_url for host in SANDBOX_HOSTS):
                raise ValueError("CORE_PAYMENTS__KHALTI_BASE_URL must be Khalti's production URL")
            if _placeholder(self.khalti_secret_key.get_secret_value()):
                raise ValueError("CORE_PAYMENTS__KHALTI_SECRET_KEY must be set in production")
        if (self.esewa_enabled or self.khalti_enabled) and not self.public_base_url.startswith("https://"):
            raise ValueError("CORE_PAYMENTS__PUBLIC_BASE_URL must be an https URL in production")
        return self


def _placeholder(value: str) -> bool:
    return value.strip().lower() in PLACEHOLDER_SECRETS or len(value) < MIN_PRODUCTION_SECRET_LENGTH // 2
