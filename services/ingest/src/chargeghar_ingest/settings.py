"""Ingest settings (pydantic-settings): env prefix ``INGEST_``, nested groups with ``__``.

Example: ``INGEST_MQTT__HOST=emqx``, ``INGEST_CORE__BASE_URL=https://core.internal``,
``INGEST_REDIS__URL=redis://redis:6379/0``. In ``environment=production`` the service refuses to start while
any secret still has its development placeholder value.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Development-only values; production refuses them (see IngestSettings.refuse_placeholder_secrets).
PLACEHOLDER_SECRET = "change-me"  # noqa: S105 - this *is* the marker of an unset secret


class MqttSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: SecretStr | None = None
    # Stable and unique per replica: the broker keeps the session (subscriptions, queued QoS 1 messages)
    # under this id, so a restarted ingest must come back with the same one. The host name is the pod name
    # of a StatefulSet; two replicas on one host need distinct ids (two clients with one id kick each other
    # off the broker).
    client_id: str = Field(default_factory=lambda: f"ingest-{socket.gethostname()}")
    # "" in production (device topics start with "/powerbank"); tests isolate themselves with "/t<random>".
    topic_prefix: str = ""
    # When set, subscribe as "$share/<group>/<topic>" so several replicas split the stations.
    shared_group: str | None = None
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    # Keep the broker session across ingest restarts and reconnects so QoS 1 messages sent meanwhile are
    # queued by the broker, not lost (MQTT 3.1.1: clean_session=0; MQTT 5: clean_start=0 + session expiry).
    # Needs the stable client_id above. Off only for throwaway consumers (e.g. a one-off debugging run).
    persistent_session: bool = True
    # How long the broker keeps the session of a disconnected ingest (MQTT 5; for 3.1.1 the broker's own
    # setting, e.g. Mosquitto's persistent_client_expiration, decides).
    session_expiry_s: int = Field(default=86400, ge=0)
    keepalive_s: int = 60
    subscribe_qos: int = 1
    # Messages handled at once. One station's messages always go to the same worker (hash of the
    # topic), so they are handled in arrival order; a message is acknowledged after it is spooled.
    handler_workers: int = Field(default=32, ge=1)
    # Messages waiting per worker before the consumer stops reading from the broker (back-pressure).
    handler_queue_size: int = Field(default=64, ge=1)
    # Reconnect backoff, jittered: short, so after a broker restart the ingest is back no later than the
    # stations (what arrives before it resubscribes is queued only in a persistent session).
    reconnect_initial_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=5.0, gt=0)
    # Host/port handed to the stations in the connect answer (the broker as the devices see it).
    public_host: str = "127.0.0.1"
    public_port: int = 1883


class CoreSettings(BaseModel):
    base_url: str = "http://127.0.0.1:8000"
    # Service account used with POST /api/admin/login (contract.md §1).
    email: str = "ingest@chargeghar.local"
    password: SecretStr = SecretStr(PLACEHOLDER_SECRET)
    # Shared HMAC secret of contract.md §2 (outgoing) and §3 (incoming commands).
    hmac_secret: SecretStr = SecretStr(PLACEHOLDER_SECRET)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0
    # Refresh the bearer token this long before its expiry claim (or the assumed lifetime below).
    token_refresh_margin_s: float = 120.0
    token_assumed_lifetime_s: float = 3300.0
    batch_size: int = 100
    # Events of one station in one batch, in spool order. Safe because this project's core holds back a
    # station's later events after one of its events fails with a 5xx (503 PRECEDING_EVENT_FAILED); set 1
    # for a core without that extension (e.g. the legacy one), or a retried event could be overtaken.
    # batches_in_flight: requests to core at once, always for disjoint sets of stations.
    batch_events_per_station: int = Field(default=16, ge=1)
    batches_in_flight: int = Field(default=2, ge=1)
    retry_initial_s: float = 1.0
    retry_max_s: float = 30.0
    # Alert (error log) once an event has failed this many times; it is still retried.
    alert_after_attempts: int = 10
    # Park an event (dead letter "parked", alert, re-drivable) after this many *strikes*: answers in which
    # core itself failed this very event (5xx other than 502/503/504) while it accepted other events since
    # the previous try. Outages (refused connections, timeouts, 502/503/504, everything failing) never
    # strike, so they never park. 12 strikes ride out ~3-5 minutes of a core bug with the 30 s backoff cap.
    max_attempts: int = Field(default=12, ge=1)


class RedisSettings(BaseModel):
    # None = single replica: presence, locks and command replies stay in process.
    url: str | None = None
    key_prefix: str = "ingest:"
    socket_timeout_s: float = 2.0


class SpoolSettings(BaseModel):
    path: Path = Path("var/ingest-spool.sqlite3")
    # FULL (default): every commit is fsynced, so an event acknowledged to a device or to the broker
    # survives a power cut. NORMAL: in WAL mode a commit survives a crash of the ingest process but the
    # last commits can be lost when the machine itself loses power; choose it only where the volume or
    # the host makes that acceptable. Group commit already amortises the fsync under load.
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    # Upper bound of write jobs (events, acks, …) sharing one transaction and one fsync.
    max_jobs_per_commit: int = Field(default=512, ge=1)
    # A dead letter keeps at most this many bytes of a bad body (plus its full length and sha256).
    dead_letter_raw_max_bytes: int = Field(default=4096, ge=0)
    # Retention (a background job prunes older rows every retention_interval_s): device refusals and
    # refused events; parked events (kept longer: real events an operator may still re-drive); the
    # command audit log.
    dead_letter_retention_days: float = Field(default=30.0, gt=0)
    parked_retention_days: float = Field(default=90.0, gt=0)
    command_audit_retention_days: float = Field(default=90.0, gt=0)
    retention_interval_s: float = Field(default=3600.0, gt=0)


class PresenceSettings(BaseModel):
    # Uploads come every 20 min and heartbeats every 9–10 min, so 25 min of silence means offline.
    offline_after_s: float = 25 * 60
    sweep_interval_s: float = 30.0


class StationConfig(BaseModel):
    """What /api/rentbox/config/data hands a station (all values are strings on the wire)."""

    dRotationRefer: str = "15"
    dReturnLocked: str = "0"
    dHeadConfig: str = "43"
    dRotationNumber: str = "5"
    dRotationEnable: str = "1"
    dMotorEnable: str = "1"
    # protocol.md §10.25: the legacy 357 does not match the area (73) the ChargeGhar banks report and may
    # make the cabinet refuse returns with "region code error"; "0" is the vendor default of "no area".
    dAreaConfig: str = "0"


class DeviceSettings(BaseModel):
    sign_policy: Literal["enforce", "log_only"] = "enforce"
    # HMAC key for the per-device MQTT password (derived, never stored).
    credential_secret: SecretStr = SecretStr(PLACEHOLDER_SECRET)
    mqtt_username_prefix: str = "device_"
    product_key: str = "powerbank"
    # Bearer token EMQX presents on POST /api/emqx/webhook (client connected/disconnected); unset = the
    # webhook is refused (anyone could otherwise mark stations offline).
    broker_webhook_token: SecretStr | None = None
    station_config: StationConfig = StationConfig()
    # Per-station overrides keyed by IMEI, e.g.
    # INGEST_DEVICE__STATION_OVERRIDES='{"864601069946994":{"dAreaConfig":"73"}}'
    station_overrides: dict[str, dict[str, str]] = Field(default_factory=dict)
    # The same return reported over MQTT (0x40) and HTTP within this window is one event.
    return_dedupe_window_s: float = 90.0
    # The legacy bridge ignored checksums; a frame that fails it is garbled, so it is refused by default.
    accept_bad_checksum: bool = False
    # Device HTTP bodies above this answer 413 without being read (a real upload frame is < 2 KB).
    max_body_bytes: int = Field(default=16 * 1024, ge=256)
    # Who gets MQTT credentials at connect (docs/operations.md "Security model"): "open" = any station
    # with a valid sign (auto-approved in core's registry); "registry" = only IMEIs core lists as approved
    # (unknown ones are recorded as pending for an admin). Unset: "registry" in production, else "open".
    provisioning: Literal["open", "registry"] | None = None
    # How long core's answer about an IMEI is trusted (a revocation takes effect within this time).
    registry_cache_ttl_s: float = Field(default=300.0, ge=0)
    # While core is unreachable, an IMEI cached as approved keeps working this long; others get nothing.
    registry_stale_max_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    # Connect and broker login wait at most this long for core's registry answer.
    registry_timeout_s: float = Field(default=2.0, gt=0)
    # A device login within this many seconds of the previous login of the same client id is counted as
    # a takeover (emqx_client_takeovers_total): a steady rate means two sessions fight over one id.
    takeover_window_s: float = Field(default=10.0, ge=0)


class CommandSettings(BaseModel):
    # Upper bound on a request's timeout_s (the lock is held that long; core asks 15 s by default).
    max_timeout_s: float = 60.0
    # Optional static token (header X-Service-Token) required in addition to the HMAC when set.
    service_token: SecretStr | None = None
    # A reply arriving this long after its waiter gave up is still reported as that command's result.
    late_reply_window_s: float = 300.0
    # Forward every command audit record (sent and refused commands) to core as a `command_audit` event.
    # Off for a legacy core, which answers 400 INVALID_TYPE (the forwarder would dead-letter each one).
    forward_audit: bool = True


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="INGEST_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    environment: Literal["development", "test", "production"] = "development"
    host: str = "127.0.0.1"
    http_port: int = 8100
    log_json: bool = False
    log_level: str = "INFO"
    # Run the MQTT consumer inside the app (tests of the HTTP side alone switch it off).
    mqtt_enabled: bool = True
    forwarder_enabled: bool = True

    mqtt: MqttSettings = MqttSettings()
    core: CoreSettings = CoreSettings()
    redis: RedisSettings = RedisSettings()
    spool: SpoolSettings = SpoolSettings()
    presence: PresenceSettings = PresenceSettings()
    device: DeviceSettings = DeviceSettings()
    commands: CommandSettings = CommandSettings()

    @model_validator(mode="after")
    def default_provisioning(self) -> IngestSettings:
        if self.device.provisioning is None:
            self.device.provisioning = "registry" if self.environment == "production" else "open"
        return self

    @model_validator(mode="after")
    def refuse_placeholder_secrets(self) -> IngestSettings:
        if self.environment != "production":
            return self
        # Words the shipped examples use; a real random secret contains none of them. Long ones only:
        # these keys guard the event stream and every device login.
        placeholder_words = ("replace", "placeholder", "example", "changeme", "change-me", "dev-secret")
        min_length = 32
        secrets: list[tuple[str, SecretStr | None]] = [
            ("core.password", self.core.password),
            ("core.hmac_secret", self.core.hmac_secret),
            ("device.credential_secret", self.device.credential_secret),
            ("mqtt.password", self.mqtt.password),
            ("commands.service_token", self.commands.service_token),
        ]
        placeholders = []
        for name, secret in secrets:
            if secret is None and name in ("mqtt.password", "commands.service_token"):
                continue  # optional: a broker without passwords, no extra token
            value = secret.get_secret_value() if secret is not None else ""
            lowered = value.strip().lower()
            if (
                lowered == PLACEHOLDER_SECRET
                or any(word in lowered for word in placeholder_words)
                or len(value) < min_length
            ):
                placeholders.append(name)
        if placeholders:
            raise ValueError(
                f"production refuses placeholder secrets (and any shorter than {min_length} characters): "
                f"{', '.join(placeholders)}"
            )
        return self
