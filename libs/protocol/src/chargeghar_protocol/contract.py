"""The ingest → core wire contract (contract.md §2) and core → ingest commands (§3) as pydantic v2 models.

Field names are exactly the legacy ones, so the legacy Java bridge's JSON parses and re-serialises to the
same JSON (``to_wire_json`` omits unset optional fields and prints times like Java's ``ISO_INSTANT``).
Fields marked *extension* are new; legacy callers omit them and legacy cores ignore them.

Tolerance rules for legacy input: unknown keys are ignored, numbers arriving where the contract has text
(``"signal_strength": 31``) become text, and naive datetimes are taken as UTC.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    model_validator,
)

__all__ = [
    "COMMAND_SECRET_FIELDS",
    "ERROR_HTTP_STATUS",
    "EVENT_TYPES",
    "STATION_EVENT_ADAPTER",
    "BatchItemResult",
    "BatchRequest",
    "BatchResponseData",
    "BatteryLevel",
    "CommandAuditEvent",
    "CommandAuditOutcome",
    "CommandOutcome",
    "CommandRequest",
    "CommandResult",
    "CommandResultEvent",
    "ContractModel",
    "DeviceCommandName",
    "DeviceEnvelope",
    "DeviceHardwareInfo",
    "DeviceInfo",
    "ErrorCode",
    "ErrorEnvelope",
    "FullEvent",
    "FullSyncResult",
    "LooseValue",
    "Pinboard",
    "PowerBankHardwareInfo",
    "PowerBankSnapshot",
    "PowerBankStatus",
    "PresenceChannel",
    "ReturnEventInfo",
    "ReturnFailedEvent",
    "ReturnedEvent",
    "SlotEvent",
    "SlotMetadata",
    "SlotSnapshot",
    "SlotStatus",
    "StationEvent",
    "StationInfo",
    "StationStatus",
    "StatusDeviceInfo",
    "StatusEvent",
    "SuccessEnvelope",
    "SwitchFlag",
    "UtcDatetime",
    "error_code_for_validation_error",
    "format_iso_instant",
    "mask_command_secrets",
    "parse_batch_request",
    "parse_station_event",
    "validation_error_details",
]


# --------------------------------------------------------------------------- error codes


class ErrorCode(StrEnum):
    """Every ``error`` value of the envelope, in one place (contract.md §2, §3)."""

    INVALID_JSON = "INVALID_JSON"
    INVALID_TYPE = "INVALID_TYPE"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    IP_NOT_ALLOWED = "IP_NOT_ALLOWED"
    MISSING_HEADERS = "MISSING_HEADERS"
    INVALID_TIMESTAMP = "INVALID_TIMESTAMP"
    INVALID_SIGNATURE = "INVALID_SIGNATURE"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"
    SYNC_ERROR = "SYNC_ERROR"
    RETURN_ERROR = "RETURN_ERROR"
    STATUS_ERROR = "STATUS_ERROR"
    DEVICE_BUSY = "DEVICE_BUSY"
    DEVICE_OFFLINE = "DEVICE_OFFLINE"
    DEVICE_TIMEOUT = "DEVICE_TIMEOUT"
    RATE_LIMITED = "RATE_LIMITED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"


ERROR_HTTP_STATUS: Mapping[ErrorCode, int] = {
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.INVALID_TYPE: 400,
    ErrorCode.VALIDATION_ERROR: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.IP_NOT_ALLOWED: 403,
    ErrorCode.MISSING_HEADERS: 403,
    ErrorCode.INVALID_TIMESTAMP: 400,
    ErrorCode.INVALID_SIGNATURE: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.SYNC_ERROR: 500,
    ErrorCode.RETURN_ERROR: 500,
    ErrorCode.STATUS_ERROR: 500,
    ErrorCode.DEVICE_BUSY: 409,
    ErrorCode.DEVICE_OFFLINE: 409,
    ErrorCode.DEVICE_TIMEOUT: 504,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.SERVICE_UNAVAILABLE: 503,
}
"""The HTTP status each code is answered with (the default; an endpoint may document otherwise)."""


# --------------------------------------------------------------------------- vocabularies


class StationStatus(StrEnum):
    ONLINE = "ONLINE"
    OFFLINE = "OFFLINE"
    MAINTENANCE = "MAINTENANCE"


class SlotStatus(StrEnum):
    AVAILABLE = "AVAILABLE"  # empty and usable for a return
    OCCUPIED = "OCCUPIED"  # holds a bank
    ERROR = "ERROR"  # the device reports a fault
    MAINTENANCE = "MAINTENANCE"  # taken out of service by an operator


class PowerBankStatus(StrEnum):
    AVAILABLE = "AVAILABLE"
    RENTED = "RENTED"
    MAINTENANCE = "MAINTENANCE"
    DAMAGED = "DAMAGED"


CommandOutcome = Literal["ok", "failed", "timeout"]

DeviceCommandName = Literal[
    "check",
    "check_all",
    "upload_all",
    "popup_sn",
    "popup",
    "reboot",
    "load_ad",
    "push_version_publish",
    "check_log",
    "open",
    "close",
    "getWifi",
    "setWifi",
    "setMode",
    "volume",
]
"""The JSON commands a station understands (protocol.md §5)."""


# --------------------------------------------------------------------------- time


def _as_utc(value: datetime) -> datetime:
    # Legacy peers send "...Z"; anything naive is taken as UTC rather than the server's local zone.
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def format_iso_instant(value: datetime) -> str:
    """UTC ``YYYY-MM-DDTHH:MM:SS[.fff|.ffffff]Z`` like Java's ``ISO_INSTANT`` (fraction only as needed)."""
    instant = _as_utc(value)
    text = instant.replace(microsecond=0, tzinfo=None).isoformat()
    micros = instant.microsecond
    if micros == 0:
        return f"{text}Z"
    if micros % 1000 == 0:
        return f"{text}.{micros // 1000:03d}Z"
    return f"{text}.{micros:06d}Z"


def _battery_or_unknown(value: int | None) -> int | None:
    # The device's "unknown" (0xFF) and other out-of-range bytes are unknown (None), never 0: an unknown
    # reading must not overwrite a known one. Rejecting the whole snapshot over one odd slot would lose
    # every other slot's state, so it is not refused either.
    if value is None:
        return None
    return value if 0 <= value <= 100 else None


BatteryLevel = Annotated[int | None, AfterValidator(_battery_or_unknown)]
"""Battery percentage 0-100, or None = unknown (absent, or outside 0-100 such as the device's 0xFF)."""


def _switch_flag(value: Any) -> Any:
    # The legacy core stored these blocks as free JSON: "1"/"0", 1/0 and true/false all arrive.
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return "1" if value else "0"
    text = str(value).strip().lower()
    if text in {"1", "true", "on", "yes"}:
        return "1"
    if text in {"0", "false", "off", "no"}:
        return "0"
    return str(value)


SwitchFlag = Annotated[str | None, BeforeValidator(_switch_flag)]
"""A sensor switch as ``"1"``/``"0"`` (normalised from ``true``/``1``/``"1"``…); other text kept as sent."""

LooseValue = int | float | str | bool | None
"""A free-form ``hardware_info``/``slot_metadata`` value: stored as sent (core computes nothing on it)."""

UtcDatetime = Annotated[
    datetime,
    AfterValidator(_as_utc),
    PlainSerializer(format_iso_instant, return_type=str, when_used="json"),
]
"""A timezone-aware UTC datetime that serialises as ``2025-11-12T06:26:16.509Z``."""


# --------------------------------------------------------------------------- base


class ContractModel(BaseModel):
    """Base of every wire model: tolerant of legacy input, compact legacy-shaped output."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)

    def to_wire(self) -> dict[str, Any]:
        """JSON-ready dict; optional fields left unset (None) are omitted, as the legacy bridge does."""
        return self.model_dump(mode="json", exclude_none=True)

    def to_wire_json(self) -> bytes:
        """Compact JSON bytes (no spaces, declaration order) — sign exactly these bytes."""
        return self.model_dump_json(exclude_none=True).encode("utf-8")


class _FreeFormInfo(ContractModel):
    # hardware_info blocks are merged into core's JSON columns as they come: keep keys we do not model.
    model_config = ConfigDict(extra="allow")


# --------------------------------------------------------------------------- shared blocks


class DeviceHardwareInfo(_FreeFormInfo):
    firmware_version: str | None = None  # only when the device reported it (the legacy "2.1.5" was fake)
    protocol_version: str | None = None  # e.g. "0xA8"
    signal_strength: int | None = None  # CSQ 0-31, 99 = no network (status events, heartbeat)
    backup_power: int | None = None  # heartbeat BP: 0-3 (protocol.md §4.12.5)


class DeviceInfo(ContractModel):
    """The ``device`` block. Station identity = ``imei``, falling back to ``serial_number``."""

    serial_number: str | None = None
    imei: str | None = None
    signal_strength: str | None = None  # a string in the legacy payload ("31")
    wifi_ssid: str | None = None
    last_heartbeat: UtcDatetime | None = None
    status: StationStatus | None = None
    hardware_info: DeviceHardwareInfo | None = None

    @model_validator(mode="after")
    def _require_identity(self) -> DeviceInfo:
        if not (self.imei or self.serial_number):
            raise ValueError("device.imei or device.serial_number is required")
        return self

    @property
    def identity(self) -> str:
        """The station's device identity (IMEI); the model validator guarantees one is present."""
        identity = self.imei or self.serial_number
        if identity is None:  # unreachable after validation; guards model_construct() callers
            raise ValueError("device has neither imei nor serial_number")
        return identity


class StatusDeviceInfo(DeviceInfo):
    """``device`` of a status event: the status is the point of the event, so it is required."""

    status: StationStatus


# --------------------------------------------------------------------------- type = "full"


class Pinboard(ContractModel):
    index: int
    io: int
    temperature: int
    soft_version: int
    hard_version: int


class StationInfo(ContractModel):
    serial_number: str
    total_slots: int = Field(ge=0)
    pinboards: list[Pinboard] = Field(default_factory=list)


class SlotMetadata(_FreeFormInfo):
    micro_switch: SwitchFlag = None  # "1" = empty (sensor bit 7), as the legacy bridge sends it
    solenoid_valve: SwitchFlag = None
    lock_count: LooseValue = 0
    last_updated: UtcDatetime | None = None
    error_code: str | None = None  # only for fault states, e.g. "0x03"
    error_message: str | None = None


class SlotSnapshot(ContractModel):
    slot_number: int = Field(ge=0, le=255)
    status: SlotStatus
    battery_level: BatteryLevel = None  # None/omitted: unknown (core keeps the last known level)
    power_bank_serial: str | None = None  # only when a bank is in the slot
    slot_metadata: SlotMetadata = Field(default_factory=SlotMetadata)


class PowerBankHardwareInfo(_FreeFormInfo):
    # Free-form like the legacy core's JSON column: other bridges send floats, version strings ("1.3.2"),
    # text area codes; they are stored as sent. Only the switches are normalised ("1"/"0").
    temperature: LooseValue = None  # °C
    voltage: LooseValue = None  # charging voltage, raw 0.1 V units (50 = 5.0 V)
    current: LooseValue = None  # charging current, raw 0.1 A units
    soft_version: LooseValue = None
    hard_version: LooseValue = None  # legacy: really the slot's sensor byte (protocol.md §10.16)
    micro_switch: SwitchFlag = None
    solenoid_valve: SwitchFlag = None
    area_code: LooseValue = None


class PowerBankSnapshot(ContractModel):
    serial_number: str
    status: PowerBankStatus  # the device's view: MAINTENANCE/DAMAGED = a fault the cabinet reports
    battery_level: BatteryLevel = None  # None/omitted: unknown
    current_slot: int | None = None
    hardware_info: PowerBankHardwareInfo = Field(default_factory=PowerBankHardwareInfo)


class FullEvent(ContractModel):
    """A whole-cabinet snapshot (contract.md §2.1)."""

    type: Literal["full"] = "full"
    timestamp: int
    device: DeviceInfo
    station: StationInfo
    slots: list[SlotSnapshot] = Field(default_factory=list)
    power_banks: list[PowerBankSnapshot] = Field(default_factory=list)
    event_id: str | None = None  # extension
    observed_at: UtcDatetime | None = None  # extension: when the ingest received the frame
    correlation_id: str | None = Field(default=None, max_length=128)  # extension: logged by core


# --------------------------------------------------------------------------- type = "returned"


class ReturnEventInfo(ContractModel):
    power_bank_serial: str = Field(min_length=1)
    slot_number: int = Field(ge=0, le=255)
    battery_level: BatteryLevel | None = None
    returned_at: UtcDatetime | None = None
    condition: str = "NORMAL"
    hardware_info: dict[str, Any] = Field(default_factory=dict)
    # The channel that reported it. "http": the device HTTP call only (its sign is an unkeyed MD5 over
    # public fields, so it proves nothing): a claim that core completes only once a 0x40 over MQTT, a
    # `check` or a snapshot corroborates it. "mqtt" or absent (the legacy bridge sent 0x40 returns only):
    # corroborated, completes at once.
    source: Literal["mqtt", "http"] | None = None


class ReturnedEvent(ContractModel):
    """A bank was inserted (contract.md §2.2)."""

    type: Literal["returned"] = "returned"
    timestamp: int
    device: DeviceInfo
    return_event: ReturnEventInfo
    event_id: str | None = None
    observed_at: UtcDatetime | None = None
    correlation_id: str | None = Field(default=None, max_length=128)


# --------------------------------------------------------------------------- type = "status"


PresenceChannel = Literal["mqtt", "http"]
"""How a station reaches us: MQTT (the only road for commands) or its HTTP calls."""


class StatusEvent(ContractModel):
    """Online/offline transitions and heartbeats (contract.md §2.3).

    ``device.status`` is the station's status as a legacy core understands it: ONLINE while its MQTT link
    is alive (commands can reach it). Extensions: ``channel`` names the channel whose liveness changed and
    ``channels`` gives each channel's state, so HTTP-only life is recorded without claiming ONLINE."""

    type: Literal["status"] = "status"
    timestamp: int
    device: StatusDeviceInfo
    channel: PresenceChannel | None = None  # extension
    channels: dict[PresenceChannel, StationStatus] | None = None  # extension
    reason: str | None = Field(default=None, max_length=200)  # extension: e.g. broker disconnect reason
    event_id: str | None = None
    observed_at: UtcDatetime | None = None
    correlation_id: str | None = Field(default=None, max_length=128)


# --------------------------------------------------------------------------- extensions (contract §2.4)


class CommandResultEvent(ContractModel):
    """A device reply that arrived after its command's waiter gave up (extension)."""

    type: Literal["command_result"] = "command_result"
    timestamp: int
    device: DeviceInfo
    command_id: str | None = None  # None when no command could be matched to the reply
    cmd: str  # the command that was sent, e.g. "popup_sn"
    outcome: CommandOutcome
    reply_cmd: str | None = None  # the reply frame's command byte, e.g. "0x31"
    reply: dict[str, Any] | None = None  # the decoded frame as JSON
    elapsed_ms: int | None = Field(default=None, ge=0)
    event_id: str | None = None
    observed_at: UtcDatetime | None = None
    correlation_id: str | None = Field(default=None, max_length=128)


class SlotEvent(ContractModel):
    """A single-slot change from a 0x28 frame (extension; protocol.md §4.8)."""

    type: Literal["slot_event"] = "slot_event"
    timestamp: int
    device: DeviceInfo
    slot_number: int = Field(ge=0, le=255)
    control_index: int | None = None  # board address
    state_code: int = Field(ge=0, le=255)  # return-state vocabulary (protocol.md §4.12.3)
    state_name: str
    state_description: str | None = None
    slot_status: SlotStatus  # what the ingest derived from the state, so core needs no device codes
    power_bank_serial: str | None = None
    power_bank_status: PowerBankStatus | None = None
    battery_level: BatteryLevel | None = None
    temperature: int | None = None
    voltage: int | None = None  # raw 0.1 V
    current: int | None = None  # raw 0.1 A
    soft_version: int | None = None
    hard_version: int | None = None
    area_code: int | None = None
    event_id: str | None = None
    observed_at: UtcDatetime | None = None
    correlation_id: str | None = Field(default=None, max_length=128)


class ReturnFailedEvent(ContractModel):
    """A 0x40 return report whose state is not 0x01: the insertion failed (extension; protocol.md §4.7).

    Nothing changes hands (no rental is closed); core records it and counts it per state code, so a
    fleet-wide return fault (area-code mismatches, a firmware bug) can be seen and alerted on."""

    type: Literal["return_failed"] = "return_failed"
    timestamp: int
    device: DeviceInfo
    slot_number: int = Field(ge=0, le=255)
    control_index: int | None = None
    state_code: int = Field(ge=0, le=255)  # return-state vocabulary (protocol.md §4.12.3)
    state_name: str = Field(max_length=64)
    state_description: str | None = Field(default=None, max_length=200)
    power_bank_serial: str | None = None  # when the frame named one
    battery_level: BatteryLevel = None
    soft_version: int | None = None
    area_code: int | None = None
    event_id: str | None = None
    observed_at: UtcDatetime | None = None
    correlation_id: str | None = Field(default=None, max_length=128)


CommandAuditOutcome = Literal["ok", "failed", "timeout", "refused"]


class CommandAuditEvent(ContractModel):
    """One command asked of a station, sent or refused, as the ingest's audit trail records it (extension).

    Core only records it (sync log, ``event_type = command_audit``), so every replica's audit is readable in
    one place. ``payload`` is the request with secrets masked (a Wi-Fi password is ``***``)."""

    type: Literal["command_audit"] = "command_audit"
    timestamp: int
    device: DeviceInfo
    command_id: str | None = Field(default=None, max_length=128)  # None when the request carried none
    cmd: str = Field(max_length=64)  # as asked, even an unknown command
    requested_by: str | None = Field(default=None, max_length=128)  # the X-Caller of the request
    outcome: CommandAuditOutcome
    refusal_code: str | None = Field(default=None, max_length=64)  # DEVICE_BUSY, DEVICE_OFFLINE, ...
    refusal_status: int | None = Field(default=None, ge=100, le=599)  # the HTTP status answered
    elapsed_ms: int | None = Field(default=None, ge=0)
    qos: int | None = Field(default=None, ge=0, le=2)
    payload: dict[str, Any] = Field(default_factory=dict)
    reply: dict[str, Any] | None = None  # the decoded reply frame, or the publish error
    replica: str | None = Field(default=None, max_length=128)  # the ingest replica that handled it
    event_id: str | None = None
    observed_at: UtcDatetime | None = None
    correlation_id: str | None = Field(default=None, max_length=128)


StationEvent = Annotated[
    FullEvent
    | ReturnedEvent
    | StatusEvent
    | CommandResultEvent
    | SlotEvent
    | ReturnFailedEvent
    | CommandAuditEvent,
    Field(discriminator="type"),
]
"""Any event accepted by ``POST /api/internal/stations/data``, chosen by its ``type``."""

EVENT_TYPES: tuple[str, ...] = (
    "full",
    "returned",
    "status",
    "command_result",
    "slot_event",
    "return_failed",
    "command_audit",
)

STATION_EVENT_ADAPTER: TypeAdapter[StationEvent] = TypeAdapter(StationEvent)


class BatchRequest(ContractModel):
    """``POST /api/internal/stations/data/batch`` body (extension)."""

    events: list[StationEvent] = Field(min_length=1)


class BatchItemResult(ContractModel):
    """One entry of a batch answer, in request order; mirrors what the event alone would have answered."""

    index: int = Field(ge=0)
    event_id: str | None = None
    success: bool
    status_code: int
    message: str = ""
    error: str | None = None  # an ErrorCode when success is false
    details: dict[str, Any] | None = None
    data: dict[str, Any] | None = None


class BatchResponseData(ContractModel):
    results: list[BatchItemResult]


class FullSyncResult(ContractModel):
    """``data`` of a processed ``full`` event (contract.md §2.1)."""

    station_id: str
    station_serial: str
    slots_updated: int
    powerbanks_updated: int
    returns_reconciled: int = 0
    applied: bool = True
    timestamp: UtcDatetime
    duplicate: bool | None = None


# --------------------------------------------------------------------------- parsing helpers


def parse_station_event(raw: bytes | str | Mapping[str, Any]) -> StationEvent:
    """Parse one event from raw JSON or a decoded dict; raises pydantic ``ValidationError``.

    Classify the error with :func:`error_code_for_validation_error` (INVALID_JSON / INVALID_TYPE /
    VALIDATION_ERROR) and describe it with :func:`validation_error_details`.
    """
    if isinstance(raw, bytes | str):
        return STATION_EVENT_ADAPTER.validate_json(raw)
    return STATION_EVENT_ADAPTER.validate_python(raw)


def parse_batch_request(raw: bytes | str | Mapping[str, Any]) -> BatchRequest:
    if isinstance(raw, bytes | str):
        return BatchRequest.model_validate_json(raw)
    return BatchRequest.model_validate(raw)


_TAG_ERRORS = frozenset({"union_tag_invalid", "union_tag_not_found"})


def _public_location(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """Drop the discriminator values pydantic inserts into error paths (``("full", "slots", 0)``)."""
    kept: list[int | str] = []
    for position, part in enumerate(loc):
        # Only where an event starts: the document root, or right after ("events", <index>) of a batch.
        # ("status" is both an event type and a field name, so position matters.)
        at_event_root = position == 0 or (
            position >= 2 and loc[position - 2] == "events" and isinstance(loc[position - 1], int)
        )
        if at_event_root and isinstance(part, str) and part in EVENT_TYPES:
            continue
        kept.append(part)
    return tuple(kept)


def validation_error_details(exc: ValidationError) -> dict[str, list[str]]:
    """``{"slots.0.slot_number": ["Field required"], ...}`` — the ``details`` of a VALIDATION_ERROR.

    The root of the document is reported under ``"__root__"``.
    """
    details: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False, include_input=False):
        path = ".".join(str(part) for part in _public_location(tuple(error["loc"]))) or "__root__"
        details.setdefault(path, []).append(str(error["msg"]))
    return details


def error_code_for_validation_error(exc: ValidationError) -> ErrorCode:
    """Which contract error a parse failure is: body not JSON, unknown/missing ``type``, or schema."""
    errors = exc.errors(include_url=False, include_input=False)
    if any(error["type"] == "json_invalid" for error in errors):
        return ErrorCode.INVALID_JSON
    if any(error["type"] in _TAG_ERRORS for error in errors):
        return ErrorCode.INVALID_TYPE
    return ErrorCode.VALIDATION_ERROR


# --------------------------------------------------------------------------- commands (contract §3)

_MASK = "***"  # replaces secrets in the audit log
_DECIMAL_SN = re.compile(r"[1-9][0-9]{0,9}")


def _new_command_id() -> str:
    return str(uuid.uuid4())


class CommandRequest(ContractModel):
    """``POST /internal/devices/{imei}/commands`` body."""

    cmd: DeviceCommandName
    data: str = ""
    io: str | None = None
    username: str | None = None  # setWifi: SSID
    password: str | None = Field(default=None, repr=False)  # setWifi: masked in audit logs
    command_id: str = Field(default_factory=_new_command_id, min_length=1, max_length=64)
    timeout_s: float = Field(default=15.0, gt=0, le=120)

    @model_validator(mode="after")
    def _check_arguments(self) -> CommandRequest:
        # Refuse malformed ejects here: a popup with a bad argument must never reach a cabinet.
        if self.cmd == "popup_sn" and not (_DECIMAL_SN.fullmatch(self.data) and int(self.data) <= 0xFFFFFFFF):
            raise ValueError("popup_sn needs data = the power bank's decimal serial number")
        if self.cmd == "popup" and not (
            self.data.isascii() and self.data.isdigit() and 1 <= int(self.data) <= 255
        ):
            raise ValueError("popup needs data = the slot number (1-255)")
        if self.io is not None and self.io not in {"0", "1"}:
            raise ValueError('io must be "0" or "1"')
        if self.cmd == "setWifi" and not self.username:
            raise ValueError("setWifi needs username (the SSID)")
        if self.cmd == "setMode" and self.data not in {"wifi", "4g"}:
            raise ValueError('setMode needs data = "wifi" or "4g"')
        if self.cmd == "volume" and not (
            self.data.isascii() and self.data.isdigit() and int(self.data) <= 100
        ):
            raise ValueError("volume needs data = 0-100")
        return self

    def device_payload(self) -> dict[str, str]:
        """The JSON object published to ``/powerbank/{imei}/user/get`` (all values strings, §5)."""
        payload: dict[str, str] = {"cmd": self.cmd}
        if self.data:
            payload["data"] = self.data
        if self.cmd == "popup":
            payload["io"] = self.io or "0"
        elif self.io is not None:
            payload["io"] = self.io
        if self.cmd == "setWifi":
            payload["username"] = self.username or ""
            payload["password"] = self.password or ""
        return payload

    def audit_payload(self) -> dict[str, Any]:
        """The request as stored in the audit log, secrets masked."""
        return mask_command_secrets(self.model_dump(mode="json", exclude_none=True))


# Request fields that are secrets: masked wherever a command is recorded.
COMMAND_SECRET_FIELDS = frozenset({"password"})


def mask_command_secrets(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A command request (even one that failed validation) with its secrets masked, for the audit log."""
    return {key: (_MASK if key in COMMAND_SECRET_FIELDS else value) for key, value in payload.items()}


class CommandResult(ContractModel):
    """``data`` of a command answer."""

    command_id: str
    outcome: CommandOutcome
    reply: dict[str, Any] | None = None
    elapsed_ms: int = Field(ge=0)


# --------------------------------------------------------------------------- envelopes

DataT = TypeVar("DataT")


class SuccessEnvelope(BaseModel, Generic[DataT]):
    """``{"success": true, "message": "...", "data": {...}}``."""

    success: Literal[True] = True
    message: str = "OK"
    data: DataT


class ErrorEnvelope(BaseModel):
    """``{"success": false, "message": "...", "error": "<CODE>", "details": {...}?}``."""

    success: Literal[False] = False
    message: str
    error: str
    details: dict[str, Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class DeviceEnvelope(BaseModel):
    """The vendor ``HttpResult`` answered to stations: keys code, type, data, msg, time, in that order."""

    code: int = 200
    type: int = 0
    data: Any = None
    msg: str = "ok"
    time: int = Field(default_factory=lambda: int(datetime.now(UTC).timestamp() * 1000))

    @classmethod
    def ok(cls, data: Any = None, *, time_ms: int | None = None) -> DeviceEnvelope:
        if time_ms is None:
            return cls(data=data)
        return cls(data=data, time=time_ms)

    @classmethod
    def failure(cls, message: str, *, code: int = 500, time_ms: int | None = None) -> DeviceEnvelope:
        if time_ms is None:
            return cls(code=code, msg=message)
        return cls(code=code, msg=message, time=time_ms)

    def to_wire_json(self) -> bytes:
        # data stays in the output even when null: the vendor firmware expects all five keys.
        return self.model_dump_json().encode("utf-8")
