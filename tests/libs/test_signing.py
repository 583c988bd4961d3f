"""Device MD5 sign (protocol.md §2.7, vectors §9 #3/#13/#13b) and the ingest↔core HMAC (contract.md §2)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from chargeghar_protocol.signing import (
    InvalidSignature,
    InvalidTimestamp,
    MissingSignatureHeaders,
    SignatureError,
    device_sign,
    device_sign_string,
    request_signature,
    signed_headers,
    verify_device_sign,
    verify_request_signature,
)

# --------------------------------------------------------------------------- device sign


@pytest.mark.parametrize(
    ("params", "expected_string", "expected_sign"),
    [
        pytest.param(
            {"signal": "CSQ:31", "rentboxSN": "864601069946994"},
            "rentboxSN=864601069946994|signal=CSQ:31",
            "4f8f934042c84159cbfe360ed2c90d89",
            id="vector-3-upload",
        ),
        pytest.param(
            {"uuid": "860602069165357", "deviceId": 0, "simUUID": "89860427092281034392", "simMobile": None},
            "deviceId=0|simMobile=|simUUID=89860427092281034392|uuid=860602069165357",
            "ff46bf468563a48b068d198158a21835",
            id="vector-13-connect-none-value",
        ),
        pytest.param(
            {"deviceUuid": "", "appUuid": "0" * 32},
            "appUuid=00000000000000000000000000000000|deviceUuid=",
            "daf3c2e68f8e2a6c9d7329979a2517ef",
            id="vector-13b-version-empty-value",
        ),
    ],
)
def test_device_sign_published_vectors(
    params: dict[str, object | None], expected_string: str, expected_sign: str
) -> None:
    assert device_sign_string(params) == expected_string
    assert device_sign(params) == expected_sign
    assert verify_device_sign(params, expected_sign)


def test_device_sign_ignores_the_sign_key_itself() -> None:
    params = {"rentboxSN": "864601069946994", "signal": "CSQ:31", "sign": "whatever"}
    assert device_sign(params) == "4f8f934042c84159cbfe360ed2c90d89"


def test_device_sign_sorts_rendered_strings_uppercase_before_lowercase() -> None:
    # Java code-unit order: every uppercase letter (0x41-0x5A) sorts before any lowercase one (0x61-0x7A).
    params = {"zeta": "1", "Zeta": "2", "alpha": "3", "Alpha": "4", "a_b": "5", "a": "6"}
    assert device_sign_string(params) == "Alpha=4|Zeta=2|a=6|a_b=5|alpha=3|zeta=1"
    expected = hashlib.md5(b"Alpha=4|Zeta=2|a=6|a_b=5|alpha=3|zeta=1", usedforsecurity=False).hexdigest()
    assert device_sign(params) == expected


def test_device_sign_sorts_by_rendered_value_when_a_key_is_a_prefix() -> None:
    # Key order would give "id" < "id2"; rendered order compares "id=9" with "id2=1": '2' (0x32) < '=' (0x3D).
    assert device_sign_string({"id": "9", "id2": "1"}) == "id2=1|id=9"


def test_device_sign_renders_none_as_empty_and_numbers_as_text() -> None:
    assert device_sign_string({"hole": 3, "simMobile": None, "flag": True}) == "flag=true|hole=3|simMobile="


def test_verify_device_sign_accepts_uppercase_hex_and_rejects_mismatch() -> None:
    params = {"rentboxSN": "864601069946994", "signal": "CSQ:31"}
    assert verify_device_sign(params, "4F8F934042C84159CBFE360ED2C90D89")
    assert not verify_device_sign(params, "4f8f934042c84159cbfe360ed2c90d8a")
    assert not verify_device_sign({**params, "signal": "CSQ:30"}, "4f8f934042c84159cbfe360ed2c90d89")
    assert not verify_device_sign(params, None)
    assert not verify_device_sign(params, "")


# --------------------------------------------------------------------------- request HMAC

SECRET = "test-shared-secret-ünïcode"
BODY = b'{"type":"status","timestamp":1762928776,"device":{"serial_number":"864601069946994"}}'
TS = 1762928776


def _independent_signature(secret: str, body: bytes, ts: str) -> str:
    mac = hmac.new(secret.encode("utf-8"), body + ts.encode("ascii"), hashlib.sha256).digest()
    return base64.b64encode(mac).decode("ascii")


def test_request_signature_known_answer() -> None:
    expected = _independent_signature(SECRET, BODY, str(TS))
    assert request_signature(SECRET, BODY, TS) == expected
    assert request_signature(SECRET, BODY, str(TS)) == expected
    assert expected.endswith("=")  # 32-byte MAC → 44 base64 chars with one '=' of padding
    assert len(expected) == 44


def test_signed_headers_round_trip() -> None:
    headers = signed_headers(SECRET, BODY, timestamp=TS)
    assert headers == {"X-Timestamp": str(TS), "X-Signature": _independent_signature(SECRET, BODY, str(TS))}
    verify_request_signature(SECRET, BODY, headers["X-Timestamp"], headers["X-Signature"], now=TS)


def test_signed_headers_default_timestamp_is_now() -> None:
    headers = signed_headers(SECRET, BODY)
    verify_request_signature(SECRET, BODY, headers["X-Timestamp"], headers["X-Signature"])


@pytest.mark.parametrize("offset", [-300, -299, 0, 299, 300])
def test_window_edges_inside_are_accepted(offset: int) -> None:
    signature = request_signature(SECRET, BODY, TS)
    verify_request_signature(SECRET, BODY, str(TS), signature, now=TS + offset)


@pytest.mark.parametrize("offset", [-301, 301, 300.5, 10_000])
def test_window_edges_outside_are_invalid_signature(offset: float) -> None:
    signature = request_signature(SECRET, BODY, TS)
    with pytest.raises(InvalidSignature) as caught:
        verify_request_signature(SECRET, BODY, str(TS), signature, now=TS + offset)
    assert (caught.value.code, caught.value.http_status) == ("INVALID_SIGNATURE", 403)


def test_custom_window() -> None:
    signature = request_signature(SECRET, BODY, TS)
    verify_request_signature(SECRET, BODY, str(TS), signature, now=TS + 60, window_s=60)
    with pytest.raises(InvalidSignature):
        verify_request_signature(SECRET, BODY, str(TS), signature, now=TS + 61, window_s=60)


def test_tampered_body_is_rejected() -> None:
    signature = request_signature(SECRET, BODY, TS)
    tampered = BODY.replace(b"1762928776,", b"1762928777,")
    with pytest.raises(InvalidSignature):
        verify_request_signature(SECRET, tampered, str(TS), signature, now=TS)


def test_reserialised_body_is_rejected() -> None:
    # Same JSON value, different bytes (a space): the check is over the raw bytes, by contract.
    signature = request_signature(SECRET, BODY, TS)
    with pytest.raises(InvalidSignature):
        verify_request_signature(SECRET, BODY.replace(b",", b", "), str(TS), signature, now=TS)


def test_tampered_timestamp_is_rejected() -> None:
    signature = request_signature(SECRET, BODY, TS)
    with pytest.raises(InvalidSignature):
        verify_request_signature(SECRET, BODY, str(TS + 1), signature, now=TS)


def test_wrong_secret_is_rejected() -> None:
    signature = request_signature("another-secret", BODY, TS)
    with pytest.raises(InvalidSignature):
        verify_request_signature(SECRET, BODY, str(TS), signature, now=TS)


def test_secret_rotation_accepts_any_configured_secret() -> None:
    old_signature = request_signature("old-secret", BODY, TS)
    new_signature = request_signature("new-secret", BODY, TS)
    for signature in (old_signature, new_signature):
        verify_request_signature(["new-secret", "old-secret"], BODY, str(TS), signature, now=TS)
    with pytest.raises(InvalidSignature):
        verify_request_signature(["new-secret"], BODY, str(TS), old_signature, now=TS)
    with pytest.raises(InvalidSignature):
        verify_request_signature([], BODY, str(TS), new_signature, now=TS)


@pytest.mark.parametrize(
    ("timestamp_header", "signature_header"),
    [(None, "sig"), ("", "sig"), (str(TS), None), (str(TS), ""), (None, None)],
)
def test_missing_headers(timestamp_header: str | None, signature_header: str | None) -> None:
    with pytest.raises(MissingSignatureHeaders) as caught:
        verify_request_signature(SECRET, BODY, timestamp_header, signature_header, now=TS)
    assert (caught.value.code, caught.value.http_status) == ("MISSING_HEADERS", 403)


@pytest.mark.parametrize(
    "bad", ["abc", "1762928776.5", "1e9", "0x10", "1_762_928_776", "-", "+1762928776", "١٢٣"]
)
def test_non_integer_timestamp(bad: str) -> None:
    with pytest.raises(InvalidTimestamp) as caught:
        verify_request_signature(SECRET, BODY, bad, "sig", now=TS)
    assert (caught.value.code, caught.value.http_status) == ("INVALID_TIMESTAMP", 400)


def test_errors_share_one_base_class_with_messages() -> None:
    for error_type in (MissingSignatureHeaders, InvalidTimestamp, InvalidSignature):
        error = error_type()
        assert isinstance(error, SignatureError)
        assert error.message  # a human text for the envelope's "message"
