"""The text of every notification, in English and Nepali; the renter's language picks one.

Payload values are filled in with ``str.format``; amounts arrive in paisa and are shown in rupees, times
arrive as ISO-8601 UTC and are shown in Nepal time (UTC+05:45, no daylight saving).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

from chargeghar_core.notifications.models import Channel, Language

NEPAL_TIME = timezone(timedelta(hours=5, minutes=45), "NPT")


class Event(StrEnum):
    OTP_CODE = "otp_code"
    RENTAL_STARTED = "rental_started"
    RENTAL_DUE_SOON = "rental_due_soon"
    RENTAL_OVERDUE = "rental_overdue"
    RENTAL_RETURNED = "rental_returned"
    EJECT_FAILED = "eject_failed"
    REFUND_ISSUED = "refund_issued"
    DUE_CREATED = "due_created"
    TOPUP_CAPTURED = "topup_captured"
    ACCOUNT_CREATED = "account_created"
    ACCOUNT_CHANGED = "account_changed"
    ACCOUNT_DELETED = "account_deleted"


# The channels each event goes to (before the renter's preferences). Login codes choose their channel.
EVENT_CHANNELS: dict[Event, tuple[Channel, ...]] = {
    Event.RENTAL_STARTED: (Channel.PUSH,),
    Event.RENTAL_DUE_SOON: (Channel.PUSH, Channel.SMS),
    Event.RENTAL_OVERDUE: (Channel.PUSH, Channel.SMS),
    Event.RENTAL_RETURNED: (Channel.PUSH, Channel.EMAIL),
    Event.EJECT_FAILED: (Channel.PUSH, Channel.SMS),
    Event.REFUND_ISSUED: (Channel.PUSH,),
    Event.DUE_CREATED: (Channel.PUSH, Channel.SMS, Channel.EMAIL),
    Event.TOPUP_CAPTURED: (Channel.PUSH, Channel.EMAIL),
    Event.ACCOUNT_CREATED: (Channel.EMAIL, Channel.SMS),
    Event.ACCOUNT_CHANGED: (Channel.EMAIL, Channel.SMS),
    Event.ACCOUNT_DELETED: (Channel.EMAIL, Channel.SMS),
}

# Security and legal notices reach the renter whatever the preferences say.
MANDATORY_EVENTS = frozenset({Event.OTP_CODE, Event.ACCOUNT_CHANGED, Event.ACCOUNT_DELETED})

_TEMPLATES: dict[Event, dict[Language, tuple[str, str]]] = {
    Event.OTP_CODE: {
        Language.ENGLISH: (
            "Your ChargeGhar code",
            "Your ChargeGhar login code is {code}. It expires in {minutes} minutes. Never share it.",
        ),
        Language.NEPALI: (
            "तपाईंको ChargeGhar कोड",
            "तपाईंको ChargeGhar लगइन कोड {code} हो। यो {minutes} मिनेटमा सकिन्छ। कसैलाई नदिनुहोस्।",
        ),
    },
    Event.RENTAL_STARTED: {
        Language.ENGLISH: ("Rental started", "Rental {rental_code} started. Please return it by {due_time}."),
        Language.NEPALI: (
            "भाडा सुरु भयो",
            "भाडा {rental_code} सुरु भयो। कृपया {due_time} भित्र फिर्ता गर्नुहोस्।",
        ),
    },
    Event.RENTAL_DUE_SOON: {
        Language.ENGLISH: (
            "Return soon",
            "Rental {rental_code} is due at {due_time}. Return the power bank to avoid a late fee.",
        ),
        Language.NEPALI: (
            "चाँडै फिर्ता गर्नुहोस्",
            "भाडा {rental_code} को समय {due_time} मा सकिन्छ। ढिला शुल्कबाट बच्न पावर बैंक फिर्ता गर्नुहोस्।",
        ),
    },
    Event.RENTAL_OVERDUE: {
        Language.ENGLISH: (
            "Rental overdue",
            "Rental {rental_code} was due at {due_time}. A late fee applies until you return the power bank.",
        ),
        Language.NEPALI: (
            "भाडाको समय नाघ्यो",
            "भाडा {rental_code} {due_time} मा फिर्ता गर्नुपर्थ्यो। पावर बैंक फिर्ता नगरेसम्म ढिला शुल्क लाग्छ।",
        ),
    },
    Event.RENTAL_RETURNED: {
        Language.ENGLISH: (
            "Receipt: rental {rental_code}",
            "Rental {rental_code} returned at {ended_time}. Charged Rs {charged}, refunded Rs {refunded}, "
            "still due Rs {due}. Thank you!",
        ),
        Language.NEPALI: (
            "रसिद: भाडा {rental_code}",
            "भाडा {rental_code} {ended_time} मा फिर्ता भयो। शुल्क रु {charged}, फिर्ता रु {refunded}, "
            "बाँकी रु {due}। धन्यवाद!",
        ),
    },
    Event.EJECT_FAILED: {
        Language.ENGLISH: (
            "Power bank not released",
            "The power bank of rental {rental_code} did not come out. Rs {refunded} has been refunded "
            "to your wallet.",
        ),
        Language.NEPALI: (
            "पावर बैंक निस्केन",
            "भाडा {rental_code} को पावर बैंक निस्केन। रु {refunded} तपाईंको वालेटमा फिर्ता गरिएको छ।",
        ),
    },
    Event.REFUND_ISSUED: {
        Language.ENGLISH: ("Refund", "Rs {amount} for rental {rental_code} was refunded to your wallet."),
        Language.NEPALI: ("रकम फिर्ता", "भाडा {rental_code} को रु {amount} तपाईंको वालेटमा फिर्ता भयो।"),
    },
    Event.DUE_CREATED: {
        Language.ENGLISH: (
            "Payment due",
            "Rental {rental_code} left Rs {due} unpaid. Top up your wallet to settle it.",
        ),
        Language.NEPALI: (
            "भुक्तानी बाँकी",
            "भाडा {rental_code} को रु {due} तिर्न बाँकी छ। वालेट रिचार्ज गरेर तिर्नुहोस्।",
        ),
    },
    Event.TOPUP_CAPTURED: {
        Language.ENGLISH: ("Wallet topped up", "Rs {amount} was added to your wallet via {provider}."),
        Language.NEPALI: ("वालेट रिचार्ज भयो", "{provider} मार्फत रु {amount} तपाईंको वालेटमा थपियो।"),
    },
    Event.ACCOUNT_CREATED: {
        Language.ENGLISH: ("Welcome to ChargeGhar", "Your ChargeGhar account is ready."),
        Language.NEPALI: ("ChargeGhar मा स्वागत छ", "तपाईंको ChargeGhar खाता तयार छ।"),
    },
    Event.ACCOUNT_CHANGED: {
        Language.ENGLISH: (
            "Account changed",
            "Your ChargeGhar account changed: {change}. If this was not you, contact support.",
        ),
        Language.NEPALI: (
            "खाता परिवर्तन",
            "तपाईंको ChargeGhar खातामा परिवर्तन भयो: {change}। यो तपाईं होइन भने सहायतामा सम्पर्क गर्नुहोस्।",
        ),
    },
    Event.ACCOUNT_DELETED: {
        Language.ENGLISH: (
            "Account deleted",
            "Your ChargeGhar account was deleted. Rental and payment records are kept as the law requires.",
        ),
        Language.NEPALI: (
            "खाता मेटियो",
            "तपाईंको ChargeGhar खाता मेटियो। भाडा र भुक्तानीका अभिलेख कानुनअनुसार राखिन्छन्।",
        ),
    },
}

_CHANGES = {
    "phone": {Language.ENGLISH: "phone number", Language.NEPALI: "फोन नम्बर"},
    "status": {Language.ENGLISH: "account status", Language.NEPALI: "खाताको स्थिति"},
    "new_login": {Language.ENGLISH: "new login", Language.NEPALI: "नयाँ लगइन"},
}


@dataclass(frozen=True, slots=True)
class Rendered:
    title: str
    body: str


def rupees(paisa: Any) -> str:
    value = int(paisa or 0)
    sign = "-" if value < 0 else ""
    whole, cents = divmod(abs(value), 100)
    return f"{sign}{whole}" if cents == 0 else f"{sign}{whole}.{cents:02d}"


def nepal_time(iso: Any) -> str:
    if not iso:
        return "-"
    moment = datetime.fromisoformat(str(iso)).astimezone(NEPAL_TIME)
    return moment.strftime("%Y-%m-%d %H:%M")


def render(event: str, language: str, payload: dict[str, Any], *, code: str | None = None) -> Rendered:
    """The title and body of ``event`` in ``language`` (English when unknown)."""
    lang = Language(language) if language in Language._value2member_map_ else Language.ENGLISH
    title, body = _TEMPLATES[Event(event)][lang]
    values: dict[str, Any] = {key: value for key, value in payload.items() if isinstance(value, str | int)}
    for key in ("amount", "charged", "refunded", "due"):
        values[key] = rupees(payload.get(f"{key}_paisa", 0))
    values["due_time"] = nepal_time(payload.get("due_at"))
    values["ended_time"] = nepal_time(payload.get("ended_at"))
    values["change"] = _CHANGES.get(str(payload.get("change", "")), {}).get(
        lang, str(payload.get("change", ""))
    )
    values.setdefault("rental_code", "")
    values.setdefault("provider", "")
    values.setdefault("minutes", "")
    values["code"] = code or ""
    return Rendered(title.format(**values), body.format(**values))


def languages() -> tuple[str, ...]:
    return tuple(language.value for language in Language)


def all_events() -> tuple[Event, ...]:
    return tuple(_TEMPLATES)
