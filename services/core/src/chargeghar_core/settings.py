"""Core settings: environment variables with the ``CORE_`` prefix, nested groups joined by ``__``.

Examples: ``CORE_DB__URL=postgresql+asyncpg://…``, ``CORE_JWT__SECRET=…``,
``CORE_INTERNAL__ALLOWED_CIDRS=10.0.0.0/8,127.0.0.1/32``. A ``.env`` file in the working directory is read
too.
"""

from __future__ import annotations

import ipaddress
import json
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from chargeghar_core.console.settings import ConsoleSettings

Environment = Literal["development", "test", "production"]

# Values that ship in examples and defaults; a production deployment must replace every one of them.
PLACEHOLDER_SECRETS = frozenset({"", "change-me", "changeme", "secret", "dev-secret", "dev-jwt-secret"})
MIN_PRODUCTION_SECRET_LENGTH = 32


class DatabaseSettings(BaseModel):
    url: str = Field(
        # The same file `make dev` uses, so CLI commands run from the checkout find the dev database.
        default="sqlite+aiosqlite:///./var/dev/core.sqlite3",
        description="SQLAlchemy async URL: sqlite+aiosqlite:///path or postgresql+asyncpg://user@host/db",
    )
    # Sized to the concurrency one worker serves: connections are kept open (never opened and closed per
    # burst, which is what overflow connections cost), and a request beyond the pool waits for one.
    pool_size: int = Field(default=16, ge=1, description="Connections one worker keeps open (PostgreSQL)")
    max_overflow: int = Field(
        default=0, ge=0, description="Extra connections opened under a burst and closed after it; 0: queue"
    )
    pool_timeout_s: float = Field(
        default=10.0, gt=0, description="How long a request waits for a free pooled connection"
    )
    echo: bool = False
    auto_migrate: bool | None = Field(
        default=None,
        description="Run `alembic upgrade head` when the app starts; default: only in development",
    )
    connect_timeout_s: float = Field(default=10.0, gt=0)
    wait_timeout_s: float = Field(default=30.0, ge=0, description="How long `migrate` waits for the database")
    alembic_ini: str | None = Field(
        default=None, description="Path of alembic.ini; default: the one at the repository root"
    )

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")


class RedisSettings(BaseModel):
    url: str | None = Field(default=None, description="redis://host:port/db; unset = in-process fallbacks")
    prefix: str = Field(default="chargeghar:core:", description="Prefix of every key core writes")
    socket_timeout_s: float = Field(
        default=0.5, gt=0, description="Connect/read timeout of a Redis call; core falls back after it"
    )
    outage_retry_s: float = Field(
        default=5.0, ge=0, description="After a Redis failure, use the in-process fallback this long"
    )


class JwtSettings(BaseModel):
    secret: SecretStr = SecretStr("dev-jwt-secret")
    algorithm: Literal["HS256"] = "HS256"
    access_ttl_minutes: int = Field(default=60, ge=1)
    refresh_ttl_days: int = Field(default=7, ge=1)
    issuer: str = "chargeghar-core"


class HmacSettings(BaseModel):
    secret: SecretStr = Field(default=SecretStr("dev-secret"), description="Shared secret with the ingest")
    previous_secrets: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Still accepted during a key rotation (comma-separated)"
    )
    window_s: int = Field(default=300, ge=1, description="Allowed |now - X-Timestamp| in seconds")

    @field_validator("previous_secrets", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        return _split_list(value)

    def accepted_secrets(self) -> list[str]:
        return [self.secret.get_secret_value(), *(s.get_secret_value() for s in self.previous_secrets)]


class InternalSettings(BaseModel):
    allowed_cidrs: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Caller IP allow-list for /api/internal (CIDRs, comma-separated); empty = any",
    )
    rate_limit_per_minute: int = Field(
        default=100, ge=0, description="Requests per minute per caller on /api/internal; 0 = unlimited"
    )
    trust_forwarded_for: bool = Field(
        default=False,
        description="Take the caller IP from X-Forwarded-For, read from the right: only hops added by "
        "trusted proxies are skipped, never the client's own leftmost entry",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs of our reverse proxies (comma-separated); empty = the TCP peer is the one "
        "trusted hop. Used with trust_forwarded_for, for /api/internal and login throttling",
    )
    max_future_skew_s: int = Field(
        default=300, ge=0, description="An event observed_at further in the future is refused (400)"
    )

    @field_validator("allowed_cidrs", "trusted_proxies", mode="before")
    @classmethod
    def _split_cidrs(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("allowed_cidrs", "trusted_proxies")
    @classmethod
    def _valid_cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)
        return value


class LoginSettings(BaseModel):
    """Throttling of staff and renter logins (per account and per client address)."""

    max_failures_per_account: int = Field(
        default=5, ge=1, description="Failed logins of one account before it is answered 429"
    )
    max_failures_per_address: int = Field(
        default=20, ge=1, description="Failed logins from one client address before it is answered 429"
    )
    window_s: int = Field(default=900, ge=1, description="How long failures are counted (and the lockout)")


class NotificationSettings(BaseModel):
    """Renter notifications (outbox worker, providers) and one-time login codes."""

    worker_enabled: bool = Field(default=True, description="Deliver the notification outbox in the lifespan")
    poll_interval_s: float = Field(default=1.0, gt=0, description="Seconds between two outbox polls")
    batch_size: int = Field(default=50, ge=1, le=1000, description="Outbox rows claimed per poll")
    max_attempts: int = Field(default=5, ge=1, description="Delivery attempts before a row is FAILED")
    retry_base_s: float = Field(default=30.0, gt=0, description="First retry delay; doubles per attempt")
    stale_sending_s: float = Field(
        default=300.0,
        gt=0,
        description="A row claimed longer ago than this (its worker died) is marked UNCERTAIN, never re-sent",
    )
    push_provider: Literal["console", "fcm", "none"] = "console"
    sms_provider: Literal["console", "sparrow", "http", "none"] = "console"
    email_provider: Literal["console", "smtp", "none"] = "console"
    console_output: str | None = Field(
        default=None,
        description="DEV ONLY: file the console provider appends whole messages (login codes included) to; "
        "unset = stdout. Ignored in production, where the console provider shows nothing but masked logs",
    )
    fcm_service_account_file: str | None = Field(default=None, description="Firebase service-account JSON")
    fcm_service_account_json: SecretStr | None = Field(
        default=None, description="The service-account JSON itself (instead of the file)"
    )
    fcm_base_url: str = "https://fcm.googleapis.com"
    sparrow_url: str = "https://api.sparrowsms.com/v2/sms/"
    sparrow_token: SecretStr | None = None
    sparrow_from: str = Field(default="", description="Sender identity given by Sparrow SMS")
    sms_http_url: str | None = Field(default=None, description="Generic SMS gateway: JSON POST endpoint")
    sms_http_token: SecretStr | None = Field(default=None, description="Bearer token of the generic gateway")
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_start_tls: bool = Field(default=True, description="STARTTLS after connecting (port 587)")
    smtp_use_tls: bool = Field(default=False, description="Implicit TLS (port 465)")
    smtp_from: str = "ChargeGhar <no-reply@chargeghar.com>"
    http_timeout_s: float = Field(default=10.0, gt=0, description="Timeout of one provider call")
    otp_secret: SecretStr | None = Field(
        default=None,
        description="Keys the hashes of login codes and destinations and seals codes in the outbox; "
        "unset = derived from CORE_JWT__SECRET",
    )
    otp_ttl_s: int = Field(default=300, ge=30, le=3600, description="Lifetime of a login code")
    otp_max_attempts: int = Field(default=5, ge=1, description="Wrong codes before a code is dead")
    otp_requests_per_destination: int = Field(
        default=3, ge=1, description="Codes sent to one phone/e-mail per window"
    )
    otp_requests_per_client: int = Field(default=10, ge=1, description="Code requests per client per window")
    otp_verifications_per_client: int = Field(
        default=20, ge=1, description="Code checks per client address per window"
    )
    otp_window_s: int = Field(default=900, ge=1, description="Rate-limit window of login codes")
    due_soon_minutes: int = Field(default=15, ge=1, description="'Due soon' reminder this long before due")
    overdue_repeat_hours: float = Field(default=4.0, gt=0, description="Overdue reminder interval")
    overdue_max_reminders: int = Field(default=3, ge=1, description="Overdue reminders per rental, at most")


class RetentionSettings(BaseModel):
    enabled: bool = Field(default=True, description="Run the pruning job in the lifespan")
    sync_log_days: int = Field(default=30, ge=1, description="Sync-log rows older than this are deleted")
    processed_event_days: int = Field(
        default=30,
        ge=1,
        description="Idempotency keys older than this are deleted; keep it longer than any sender retries",
    )
    interval_s: float = Field(default=3600.0, gt=0, description="Seconds between two pruning rounds")
    batch_size: int = Field(default=5000, ge=1, le=100_000, description="Rows deleted per statement")


# --------------------------------------------------------------------------------- rentals and payments
# Nested groups of core's settings (``settings.rentals``, ``settings.payments``: ``CORE_RENTALS__*`` and
# ``CORE_PAYMENTS__*``). Each is a settings class of its own too, so it can be read alone (tools, tests).


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
        if self.environment == "production":
            self.check_production()
        return self

    def check_production(self) -> None:
        """Refuse the sandbox, placeholder secrets and the providers' sandbox hosts (production only)."""
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


def _placeholder(value: str) -> bool:
    return value.strip().lower() in PLACEHOLDER_SECRETS or len(value) < MIN_PRODUCTION_SECRET_LENGTH // 2


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CORE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    environment: Environment = "development"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(default=1, ge=1)
    log_level: str = "INFO"
    log_json: bool | None = Field(default=None, description="JSON logs; default: on in production only")
    docs_enabled: bool = True
    gc_tuning: bool | None = Field(
        default=None,
        description=(
            "Freeze what start-up built out of the garbage collector's reach and collect less often "
            "(about a tenth of a worker's CPU under load); default: on in production only"
        ),
    )
    max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Largest JSON/form body of the public API (not /api/internal)",
    )

    db: DatabaseSettings = Field(default_factory=DatabaseSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    jwt: JwtSettings = Field(default_factory=JwtSettings)
    hmac: HmacSettings = Field(default_factory=HmacSettings)
    internal: InternalSettings = Field(default_factory=InternalSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    login: LoginSettings = Field(default_factory=LoginSettings)
    rentals: RentalSettings = Field(default_factory=RentalSettings)
    payments: PaymentSettings = Field(default_factory=PaymentSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)

    @property
    def auto_migrate(self) -> bool:
        return self.environment == "development" if self.db.auto_migrate is None else self.db.auto_migrate

    @property
    def tune_gc(self) -> bool:
        return self.environment == "production" if self.gc_tuning is None else self.gc_tuning

    @property
    def json_logs(self) -> bool:
        return self.environment == "production" if self.log_json is None else self.log_json

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.environment != "production":
            return self
        # Words the shipped examples use ("replace-with-32+-random-characters" is long enough, so the
        # length check alone lets it through); a real random secret contains none of them.
        placeholder_words = ("replace", "placeholder", "example", "changeme", "change-me", "dev-secret")
        secrets = [("CORE_JWT__SECRET", self.jwt.secret), ("CORE_HMAC__SECRET", self.hmac.secret)]
        secrets += [("CORE_HMAC__PREVIOUS_SECRETS", old) for old in self.hmac.previous_secrets]
        if self.notifications.otp_secret is not None:
            secrets.append(("CORE_NOTIFICATIONS__OTP_SECRET", self.notifications.otp_secret))
        for name, secret in secrets:
            value = secret.get_secret_value()
            lowered = value.strip().lower()
            if (
                lowered in PLACEHOLDER_SECRETS
                or any(word in lowered for word in placeholder_words)
                or len(value) < MIN_PRODUCTION_SECRET_LENGTH
            ):
                raise ValueError(
                    f"{name} must be set to a real secret (at least {MIN_PRODUCTION_SECRET_LENGTH} "
                    "characters, not a placeholder) in production"
                )
        # Then the payments group, against core's environment (nested, it does not read its own).
        self.payments.check_production()
        return self


def _split_list(value: object) -> object:
    """Accept a JSON list or a comma-separated string for list settings read from the environment."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        return json.loads(text)
    return [part.strip() for part in text.split(",") if part.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
