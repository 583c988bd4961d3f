"""HTTP endpoints the cabinets call (protocol.md §2.6), answered at once in the vendor envelope.

Each handler validates the parameters, checks the device MD5 sign, commits the resulting event to the
spool and answers — core is never on this path (the legacy bridge made stations wait up to 81 s for it,
protocol.md §10.1). A rejected request gets a 4xx ``code`` with the reason and is kept in the dead-letter
table (a capped prefix of its raw bytes, their length and sha256).

Device input is screened before it can become an event (anyone can compute the device sign):

- a body above ``device.max_body_bytes`` → 413, refused from its Content-Length or after reading just
  past the limit (never buffered whole);
- identity fields (``uuid``, ``rentboxSN``) must be plausible station ids (ASCII letters/digits, ≤ 32),
  else 400 ``implausible_id``: a wrong identity would file the event under another station;
- informational fields (``ssid``, ``signal``, ``hardware``, ``software``) are cleaned after the sign check
  (the sign covers what the device sent): control characters removed, cut to a length cap.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import structlog
from chargeghar_protocol.codec import CabinetSnapshot, FrameError
from chargeghar_protocol.contract import DeviceEnvelope, DeviceInfo, ReturnedEvent, ReturnEventInfo
from chargeghar_protocol.signing import device_sign_string, verify_device_sign
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from chargeghar_ingest.credentials import check_credentials, derive_credentials
from chargeghar_ingest.logs import hex_prefix
from chargeghar_ingest.openapi import DEVICE_ERRORS
from chargeghar_ingest.pipeline import (
    clean_device_text,
    decode_device_frame,
    plausible_station_id,
    snapshot_event,
    utc_now,
)
from chargeghar_ingest.runtime import IngestRuntime

log = structlog.get_logger(__name__)
router = APIRouter()

Endpoint = Callable[[Request], Awaitable[Response]]


def device_route(*paths: str, summary: str) -> Callable[[Endpoint], Endpoint]:
    """Register a handler for GET and POST on every path (the firmware uses both), with one OpenAPI
    operation per method and path so that the operation ids stay unique. Every answer is the vendor
    envelope; the handler's docstring is the operation's description."""

    def register(endpoint: Endpoint) -> Endpoint:
        for path in paths:
            slug = re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_")
            for method in ("GET", "POST"):
                router.add_api_route(
                    path,
                    endpoint,
                    methods=[method],
                    operation_id=f"{slug}_{method.lower()}",
                    summary=summary,
                    responses=DEVICE_ERRORS,
                )
        return endpoint

    return register


CONNECT_SIGNED = ("uuid", "deviceId", "simUUID", "simMobile")
# The MCU POST variant sends "hardware=…&software=…" in the body; signing it broke the legacy bridge
# (protocol.md §10.13), so it is accepted but never part of the sign.
CONNECT_KNOWN = frozenset({*CONNECT_SIGNED, "sign", "hardware", "software"})
UPLOAD_KNOWN = frozenset(
    {
        "rentboxSN",
        "signal",
        "sign",
        "io",
        "ssid",
        "CRC16",
        "IAP16",
        "dRotationEnable",
        "dRotationNumber",
        "dRotationRefer",
        "dMotorEnable",
    }
)
RETURN_KNOWN = frozenset({"rentboxSN", "singleSN", "hole", "sign"})
# Parameters that name the station: refused unless plausible (see plausible_station_id).
IDENTITY_PARAMS = ("uuid", "rentboxSN")
# Informational parameters that reach an event or a log line: cleaned and cut to these lengths. An SSID
# is at most 32 bytes (802.11); "CSQ:31" style signals and version strings are short.
INFORMATIONAL_CAPS = {"ssid": 64, "signal": 32, "hardware": 64, "software": 64}
# What a refusal echoes of the request (envelope message, log line, dead-letter detail).
MESSAGE_MAX_CHARS = 300
QUERY_ECHO_MAX_CHARS = 1024
CONFIG_KNOWN = frozenset(
    {
        "rentboxSN",
        "sign",
        "dRotationRefer",
        "dHeadConfig",
        "dRotationNumber",
        "dRotationEnable",
        "dMotorEnable",
        "dAreaConfig",
        "dReturnLocked",
    }
)


class DeviceRequestError(Exception):
    """A device call we refuse; ``code`` is both the HTTP status and the envelope's ``code``."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        message = message[:MESSAGE_MAX_CHARS]  # names of unknown parameters come from the caller
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class DeviceCall:
    path: str
    method: str
    query: str
    params: dict[str, str]
    body: bytes
    station: str | None = None
    # Set when the body was above the limit: its length (declared, or at least what was read).
    oversized_len: int | None = None


def envelope(data: Any = None, *, code: int = 200, message: str = "ok") -> Response:
    body = DeviceEnvelope(code=code, data=data, msg=message).to_wire_json()
    return Response(content=body, status_code=code, media_type="application/json")


async def read_limited_body(request: Request, limit: int) -> tuple[bytes, int | None]:
    """``(body, None)``, or ``(prefix, length)`` when the body is larger than ``limit`` bytes.

    A declared Content-Length above the limit is refused without reading; otherwise the stream is counted
    and reading stops just past the limit (the server then closes the connection), so a 10 MB body costs
    at most ``limit`` bytes of memory."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return b"", int(declared)
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > limit:
            length = max(int(declared), len(received)) if declared.isdigit() else len(received)
            return bytes(received[:limit]), length
    return bytes(received), None


async def read_call(request: Request, *, body_is_frame: bool, station_param: str) -> DeviceCall:
    """Parameters from the query string, plus form fields from the body (devices use either)."""
    limit = runtime_of(request).settings.device.max_body_bytes
    body, oversized_len = await read_limited_body(request, limit)
    params: dict[str, str] = dict(request.query_params)
    if not body_is_frame and body and oversized_len is None:
        # Form-encoded or the MCU's "text/plain" k=v body; a body that is not k=v text is ignored.
        try:
            text = body.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        for key, value in parse_qsl(text, keep_blank_values=True):
            params.setdefault(key, value)
    return DeviceCall(
        path=request.url.path,
        method=request.method,
        query=request.url.query,
        params=params,
        body=body,
        station=params.get(station_param) or None,
        oversized_len=oversized_len,
    )


def screen(call: DeviceCall, known: frozenset[str], runtime: IngestRuntime) -> None:
    """The checks before anything else: body size, parameter names, plausible identity fields."""
    if call.oversized_len is not None:
        runtime.metrics.inc("http_device_too_large_total")
        limit = runtime.settings.device.max_body_bytes
        raise DeviceRequestError(413, "body_too_large", f"body larger than {limit} bytes")
    note_unknown(call, known, runtime)
    for name in IDENTITY_PARAMS:
        value = call.params.get(name)
        if value and not plausible_station_id(value):
            raise DeviceRequestError(400, "implausible_id", f"{name} must be 1-32 ASCII letters or digits")


def informational(runtime: IngestRuntime, call: DeviceCall, name: str) -> str | None:
    """A cleaned informational parameter (control characters removed, cut to its cap); logged if changed."""
    raw = call.params.get(name)
    cleaned, changed = clean_device_text(raw, INFORMATIONAL_CAPS[name])
    if changed and raw is not None:
        runtime.metrics.inc("device_strings_cleaned_total")
        log.warning(
            "device.param_cleaned",
            path=call.path,
            station_id=call.station,
            param=name,
            length=len(raw),
            value_hex=hex_prefix(raw.encode("utf-8", "surrogateescape")),
        )
    return cleaned


def require(call: DeviceCall, names: Iterable[str]) -> None:
    missing = [n for n in names if not call.params.get(n)]
    if missing:
        raise DeviceRequestError(400, "missing_params", f"missing parameter(s): {', '.join(missing)}")


# Extra parameters kept with an event: at most this many, names and values cut to these lengths.
EXTRA_PARAMS_MAX = 16
EXTRA_PARAM_MAX_CHARS = 64


def note_unknown(call: DeviceCall, known: frozenset[str], runtime: IngestRuntime) -> None:
    """Parameters the vendor lists do not name are logged, never a reason to refuse: the lists are
    incomplete, and a firmware update that adds a field must not lock the fleet out. The sign is checked
    over every parameter the device sent (see :func:`sign_candidates`)."""
    unknown = sorted(set(call.params) - known)
    if unknown:
        runtime.metrics.inc("http_device_extra_params_total")
        log.info(
            "device.extra_params", path=call.path, station_id=call.station, params=unknown[:EXTRA_PARAMS_MAX]
        )


def extra_params(call: DeviceCall, known: frozenset[str]) -> dict[str, str]:
    """The extra parameters as kept with the event (control characters removed, capped)."""
    kept: dict[str, str] = {}
    for name in sorted(set(call.params) - known)[:EXTRA_PARAMS_MAX]:
        key, _ = clean_device_text(name, EXTRA_PARAM_MAX_CHARS)
        value, _ = clean_device_text(call.params[name], EXTRA_PARAM_MAX_CHARS)
        if key:
            kept[key] = value or ""
    return kept


def sign_candidates(
    call: DeviceCall, variants: Iterable[Mapping[str, str | None]]
) -> list[dict[str, str | None]]:
    """What the device may have signed: exactly what it sent (minus ``sign``), then legacy variants."""
    sent: dict[str, str | None] = {k: v for k, v in call.params.items() if k != "sign"}
    candidates = [sent]
    for variant in variants:
        candidate = dict(variant)
        if candidate not in candidates:
            candidates.append(candidate)
    return candidates


async def check_sign(
    runtime: IngestRuntime, call: DeviceCall, variants: Iterable[Mapping[str, str | None]] = ()
) -> None:
    sign = call.params.get("sign")
    candidates = sign_candidates(call, variants)
    if any(verify_device_sign(c, sign) for c in candidates):
        return
    detail = f"sign {sign!r} does not match {device_sign_string(candidates[0])!r}"
    if runtime.settings.device.sign_policy == "log_only":
        log.warning("device.sign_mismatch_ignored", path=call.path, station_id=call.station, detail=detail)
        return
    raise DeviceRequestError(403, "bad_sign", "ERROR SIGN")


async def reject(runtime: IngestRuntime, call: DeviceCall, error: DeviceRequestError) -> Response:
    # The body is the evidence (only its prefix when it was too large); else the query that carried it.
    raw = call.body if call.oversized_len is not None else call.body or call.query.encode()
    # An implausible identity is evidence, not a station: it goes to the log and detail, not the column.
    station = call.station if plausible_station_id(call.station) else None
    query = call.query[:QUERY_ECHO_MAX_CHARS]
    log.warning(
        "device.request_rejected",
        path=call.path,
        method=call.method,
        station_id=station,
        reason=error.reason,
        message=error.message,
        query=query,
        body_len=call.oversized_len if call.oversized_len is not None else len(call.body),
        body_hex=hex_prefix(call.body),
    )
    await runtime.spool.add_dead_letter(
        source="http",
        reason=error.reason,
        station=station,
        detail=json.dumps(
            {"path": call.path, "method": call.method, "query": query, "message": error.message}
        ),
        raw=raw,
        raw_len=call.oversized_len,
    )
    runtime.metrics.inc("dead_letters_total")
    runtime.metrics.inc("http_device_rejected_total")
    return envelope(code=error.code, message=error.message)


def correlation_of(request: Request) -> str | None:
    value = getattr(request.state, "correlation_id", None)
    return str(value) if value else None


def runtime_of(request: Request) -> IngestRuntime:
    runtime: IngestRuntime = request.app.state.runtime
    return runtime


# ------------------------------------------------------------------------------------------------ connect


@device_route(
    "/api/iot/client/con", "/api/rentbox/client/connect", summary="Station start-up: get MQTT credentials"
)
async def connect(request: Request) -> Response:
    """Hand the station its MQTT connection: ``clientId,productKey,host,port,user,password,timestampMs``."""
    runtime = runtime_of(request)
    call = await read_call(request, body_is_frame=False, station_param="uuid")
    try:
        screen(call, CONNECT_KNOWN, runtime)
        require(call, ["uuid", "sign"])
        # The legacy bean always signs all four fields (missing text → "", deviceId → 0).
        bean = {
            "uuid": call.params.get("uuid", ""),
            "deviceId": call.params.get("deviceId") or "0",
            "simUUID": call.params.get("simUUID", ""),
            "simMobile": call.params.get("simMobile", ""),
        }
        signed_only = {k: v for k, v in call.params.items() if k in CONNECT_SIGNED}
        await check_sign(runtime, call, [signed_only, bean])
    except DeviceRequestError as error:
        return await reject(runtime, call, error)

    imei = call.params["uuid"]
    # Known devices only (provisioning policy): no credentials for an IMEI the registry has not approved.
    verdict = await runtime.devices.admit_connect(imei)
    if not verdict.allowed:
        runtime.metrics.inc("device_connect_refused_total")
        log.warning("device.connect_refused", station_id=imei, status=verdict.status, source=verdict.source)
        message = "device not registered" if verdict.status is not None else "device registry unavailable"
        return envelope(code=403, message=message)
    device = runtime.settings.device
    mqtt = runtime.settings.mqtt
    credentials = derive_credentials(
        device.credential_secret.get_secret_value(), imei, username_prefix=device.mqtt_username_prefix
    )
    now_ms = int(utc_now().timestamp() * 1000)
    data = ",".join(
        [
            imei,
            device.product_key,
            mqtt.public_host,
            str(mqtt.public_port),
            credentials.username,
            credentials.password,
            str(now_ms),
        ]
    )
    await runtime.recorder.seen(imei, channel="http")
    runtime.metrics.inc("http_device_requests_total")
    log.info(
        "device.connect",
        station_id=imei,
        hardware=informational(runtime, call, "hardware"),
        software=informational(runtime, call, "software"),
    )
    return envelope(data)


class BrokerAuthRequest(BaseModel):
    clientid: str = ""
    username: str = ""
    password: str = ""


@router.post(
    "/api/emqx/auth",
    summary="EMQX HTTP authentication of an MQTT login",
    responses={400: {"description": "The body cannot be read (not UTF-8 JSON)"}},
)
async def broker_auth(request: Request, body: BrokerAuthRequest) -> dict[str, str]:
    """EMQX HTTP authentication: allow a station that presents its derived credentials, and the ingest
    itself with its own ``INGEST_MQTT__USERNAME`` / ``INGEST_MQTT__PASSWORD``.

    Other usernames answer ``ignore`` so EMQX falls through to its next authenticator (operator
    accounts, when the deployment adds one); with none, EMQX refuses them.
    """
    runtime = runtime_of(request)
    device = runtime.settings.device
    mqtt = runtime.settings.mqtt
    if mqtt.username and mqtt.password is not None and body.username == mqtt.username:
        # The ingest's login must not depend on a second EMQX user store being seeded by hand.
        own = hmac.compare_digest(body.password.encode(), mqtt.password.get_secret_value().encode())
        if not own:
            log.warning("broker_auth.denied", client_id=body.clientid, username=body.username)
        return {"result": "allow" if own else "deny"}
    if not body.username.startswith(device.mqtt_username_prefix):
        return {"result": "ignore"}
    allowed = check_credentials(
        device.credential_secret.get_secret_value(),
        client_id=body.clientid,
        username=body.username,
        password=body.password,
        username_prefix=device.mqtt_username_prefix,
    )
    if not allowed:
        log.warning("broker_auth.denied", client_id=body.clientid, username=body.username)
        return {"result": "deny"}
    # Valid derived credentials, but a revoked (or never approved) station is refused too (registry).
    verdict = await runtime.devices.admit_login(body.clientid)
    if not verdict.allowed:
        runtime.metrics.inc("broker_auth_unregistered_total")
        log.warning(
            "broker_auth.unregistered", station_id=body.clientid, status=verdict.status, source=verdict.source
        )
        return {"result": "deny"}
    runtime.devices.note_login(body.clientid)
    return {"result": "allow"}


class BrokerAclRequest(BaseModel):
    clientid: str = ""
    username: str = ""
    topic: str = ""
    action: str = ""  # "publish" | "subscribe" (EMQX's ${action})


def device_may(topic: str, action: str, imei: str, prefix: str) -> bool:
    """A station publishes only its own update/heart topics and subscribes only to its own command topic."""
    own = f"{prefix}/powerbank/{imei}/user/"
    if action == "publish":
        return topic in (own + "update", own + "heart")
    if action == "subscribe":
        return topic == own + "get"
    return False


@router.post(
    "/api/emqx/acl",
    summary="EMQX HTTP authorization of a publish or subscribe",
    responses={400: {"description": "The body cannot be read (not UTF-8 JSON)"}},
)
async def broker_acl(request: Request, body: BrokerAclRequest) -> dict[str, str]:
    """EMQX HTTP authorization: a station (``device_<imei>``, client id = IMEI) may publish only to its own
    ``/powerbank/<imei>/user/update`` and ``/user/heart`` and subscribe only to its own ``/user/get``; the
    ingest's own account keeps its access. Other usernames answer ``ignore`` (EMQX's next source decides).
    """
    runtime = runtime_of(request)
    device = runtime.settings.device
    mqtt = runtime.settings.mqtt
    if mqtt.username and body.username == mqtt.username:
        return {"result": "allow"}
    if not body.username.startswith(device.mqtt_username_prefix):
        return {"result": "ignore"}
    imei = body.username[len(device.mqtt_username_prefix) :]
    allowed = (
        bool(imei) and body.clientid == imei and device_may(body.topic, body.action, imei, mqtt.topic_prefix)
    )
    if not allowed:
        runtime.metrics.inc("broker_acl_denied_total")
        log.warning(
            "broker_acl.denied",
            client_id=body.clientid,
            username=body.username,
            topic=body.topic,
            action=body.action,
        )
    return {"result": "allow" if allowed else "deny"}


class BrokerClientEvent(BaseModel):
    """EMQX rule-engine / webhook body of ``client.connected`` and ``client.disconnected``."""

    event: str = ""
    clientid: str = ""
    username: str = ""
    reason: str | None = None
    connected_at: int | None = None  # ms
    disconnected_at: int | None = None  # ms
    timestamp: int | None = None  # ms


# A disconnect that only replaced the session (the station reconnected elsewhere) is not silence.
_TAKEOVER_REASONS = frozenset({"takenover", "takeovered", "discarded"})


@router.post(
    "/api/emqx/webhook",
    summary="EMQX client connected/disconnected events (MQTT presence)",
    responses={
        401: {"description": "Missing or wrong bearer token (or no token configured)"},
        400: {"description": "Not a client event of a plausible station id"},
    },
)
async def broker_webhook(request: Request, body: BrokerClientEvent) -> Response:
    """The broker tells us at once when a station's MQTT link comes up or goes down (instead of waiting for
    the silence threshold). Authenticated by ``Authorization: Bearer <INGEST_DEVICE__BROKER_WEBHOOK_TOKEN>``.
    """
    runtime = runtime_of(request)
    token = runtime.settings.device.broker_webhook_token
    presented = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if token is None or not hmac.compare_digest(presented.encode(), token.get_secret_value().encode()):
        log.warning("broker_webhook.denied", client_id=body.clientid[:64])
        return Response(status_code=401, content=b'{"result":"deny"}', media_type="application/json")
    kind = body.event.removeprefix("client.")
    if kind not in {"connected", "disconnected"} or not plausible_station_id(body.clientid):
        return Response(status_code=400, content=b'{"result":"ignored"}', media_type="application/json")
    millis = body.disconnected_at if kind == "disconnected" else body.connected_at
    millis = millis or body.timestamp
    at = datetime.fromtimestamp(millis / 1000, UTC) if millis else utc_now()
    changed = False
    if kind == "connected":
        changed = await runtime.recorder.broker_event(body.clientid, connected=True, at=at, reason=None)
    elif (body.reason or "").lower() not in _TAKEOVER_REASONS:
        changed = await runtime.recorder.broker_event(
            body.clientid, connected=False, at=at, reason=body.reason
        )
    runtime.metrics.inc("broker_webhook_events_total")
    log.info("broker_webhook.event", station_id=body.clientid, kind=kind, reason=body.reason, changed=changed)
    return Response(content=b'{"result":"ok"}', media_type="application/json")


# ------------------------------------------------------------------------------------------------ upload


@device_route(
    "/api/rentbox/upload/data", "/api/rentbox/client/upload", summary="Station upload of a full snapshot"
)
async def upload(request: Request) -> Response:
    """Periodic full-cabinet upload: raw 0x10 frame body → ``full`` event."""
    runtime = runtime_of(request)
    received_at = utc_now()
    call = await read_call(request, body_is_frame=True, station_param="rentboxSN")
    station = call.station
    try:
        screen(call, UPLOAD_KNOWN, runtime)
        require(call, ["rentboxSN"])
        sent = {k: v for k, v in call.params.items() if k != "sign"}
        # Legacy variants (protocol.md §10.13): only {rentboxSN, signal} (VOL), signal defaulted to "0".
        vol = {"rentboxSN": call.params["rentboxSN"], "signal": call.params.get("signal", "0")}
        await check_sign(runtime, call, [vol, {**sent, "signal": call.params.get("signal", "0")}])
        try:
            accept_bad_checksum = runtime.settings.device.accept_bad_checksum
            frame = decode_device_frame(call.body, accept_bad_checksum=accept_bad_checksum)
        except FrameError as exc:
            raise DeviceRequestError(400, "bad_frame", f"bad frame: {exc}") from exc
        except Exception as exc:
            # A decoder defect: refuse like a bad frame (the raw body is kept) rather than a bare 500.
            log.exception("device.decoder_failed", body_hex=hex_prefix(call.body))
            raise DeviceRequestError(400, "decoder_error", "frame could not be decoded") from exc
        if not isinstance(frame, CabinetSnapshot):
            raise DeviceRequestError(400, "bad_frame", f"expected a 0x10 frame, got 0x{frame.cmd:02X}")
    except DeviceRequestError as error:
        return await reject(runtime, call, error)

    assert station is not None
    with structlog.contextvars.bound_contextvars(station_id=station, path=call.path):
        if frame.unconsumed_bytes:
            log.warning(
                "device.upload_unconsumed_bytes", count=frame.unconsumed_bytes, body_hex=hex_prefix(call.body)
            )
        event = snapshot_event(
            frame,
            station=station,
            received_at=received_at,
            channel="http",  # the station's status is left to presence (see snapshot_event)
            signal=informational(runtime, call, "signal"),
            wifi_ssid=informational(runtime, call, "ssid"),
        )
        extra = extra_params(call, UPLOAD_KNOWN)
        if extra and event.device.hardware_info is not None:
            event.device.hardware_info = event.device.hardware_info.model_copy(
                update={"device_params": extra}
            )
        await runtime.recorder.seen(station, observed_at=received_at, channel="http")
        await runtime.recorder.record(event, station=station, correlation_id=correlation_of(request))
    runtime.metrics.inc("http_device_requests_total")
    return envelope(None)


# ------------------------------------------------------------------------------------------------ return


@device_route("/api/rentbox/order/return", summary="Station report of a returned power bank")
async def order_return(request: Request) -> Response:
    """Successful return notice → ``returned`` event (deduplicated against the MQTT 0x40 report)."""
    runtime = runtime_of(request)
    received_at = utc_now()
    call = await read_call(request, body_is_frame=False, station_param="rentboxSN")
    station = call.station
    try:
        screen(call, RETURN_KNOWN, runtime)
        require(call, ["rentboxSN", "singleSN", "hole"])
        single_sn = call.params["singleSN"]
        hole_text = call.params["hole"]
        if not (single_sn.isascii() and single_sn.isdigit() and 0 < int(single_sn) <= 0xFFFFFFFF):
            raise DeviceRequestError(400, "bad_params", "singleSN must be the bank's decimal serial number")
        if not (hole_text.isascii() and hole_text.isdigit() and 0 <= int(hole_text) <= 255):
            raise DeviceRequestError(400, "bad_params", "hole must be a slot number 0-255")
        await check_sign(runtime, call)
    except DeviceRequestError as error:
        return await reject(runtime, call, error)

    assert station is not None
    event = ReturnedEvent(
        timestamp=int(received_at.timestamp()),
        device=DeviceInfo(serial_number=station, imei=station, last_heartbeat=received_at),
        return_event=ReturnEventInfo(
            power_bank_serial=str(int(single_sn)),
            slot_number=int(hole_text),
            battery_level=None,  # the HTTP call carries none; the MQTT 0x40 report has the real SOC
            returned_at=received_at,
            hardware_info={"source": "http", **_extra_info(call, RETURN_KNOWN)},
            source="http",  # a claim only: core waits for a 0x40, a `check` or a snapshot to confirm it
        ),
    )
    with structlog.contextvars.bound_contextvars(station_id=station, path=call.path):
        await runtime.recorder.seen(station, observed_at=received_at, channel="http")
        await runtime.recorder.record_return(
            event, station=station, observed_at=received_at, correlation_id=correlation_of(request)
        )
    runtime.metrics.inc("http_device_requests_total")
    return envelope(None)


def _extra_info(call: DeviceCall, known: frozenset[str]) -> dict[str, Any]:
    extra = extra_params(call, known)
    return {"device_params": extra} if extra else {}


# ------------------------------------------------------------------------------------------------ config


@device_route("/api/rentbox/config/data", summary="Station parameters (JSON string in `data`)")
async def config_data(request: Request) -> Response:
    """Station parameters as a JSON *string* (the firmware expects it string-encoded)."""
    runtime = runtime_of(request)
    call = await read_call(request, body_is_frame=False, station_param="rentboxSN")
    station = call.station
    try:
        screen(call, CONFIG_KNOWN, runtime)
        # Legacy stations call this without parameters; a station that identifies itself must sign.
        if call.params:
            require(call, ["rentboxSN"])
            await check_sign(runtime, call)
    except DeviceRequestError as error:
        return await reject(runtime, call, error)

    device = runtime.settings.device
    config = device.station_config.model_dump()
    if station and station in device.station_overrides:
        config.update(device.station_overrides[station])
    if station:
        await runtime.recorder.seen(station, channel="http")
    runtime.metrics.inc("http_device_requests_total")
    return envelope(json.dumps(config, separators=(",", ":")))
