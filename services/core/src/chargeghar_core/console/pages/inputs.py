"""Reading the console's filter and action inputs (rentals, renters, money, logs, audit).

HTML forms send every field, empty ones as ``""``, so filters arrive as text and are parsed here: an empty
field means "no filter", a malformed one is a :class:`InputError` the page turns into a message. Days and
local times are Nepal time (the console shows every time in it); amounts are typed in rupees and become
integer paisa exactly (no float on the way).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation

from pydantic import ValidationError

from chargeghar_core.console.rendering import CONSOLE_TZ

# Amounts beyond this are typos, not corrections (the API caps a rental's amounts similarly).
MAX_RUPEES = Decimal(10_000_000)


class InputError(ValueError):
    """A filter or form field that cannot be read; ``str(exc)`` is shown to the operator."""


def text(value: str | None) -> str | None:
    """The stripped value, or None when the field was left empty."""
    if value is None:
        return None
    stripped = value.strip()
    return stripped or None


def choice(value: str | None, allowed: list[str], name: str) -> str | None:
    picked = text(value)
    if picked is not None and picked not in allowed:
        raise InputError(f"{name}: unknown value {picked!r}")
    return picked


def day(value: str | None, name: str) -> date | None:
    raw = text(value)
    if raw is None:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError as exc:
        raise InputError(f"{name}: not a date (YYYY-MM-DD)") from exc


def nepal_days(first: date | None, last: date | None) -> tuple[datetime | None, datetime | None]:
    """[first 00:00, the day after last 00:00) in Nepal time: both days included."""
    if first is not None and last is not None and last < first:
        raise InputError("to: must not be before from")
    since = datetime.combine(first, time.min, tzinfo=CONSOLE_TZ) if first is not None else None
    until = (
        datetime.combine(last + timedelta(days=1), time.min, tzinfo=CONSOLE_TZ) if last is not None else None
    )
    return since, until


def identifier(value: str | None) -> uuid.UUID | None:
    """A UUID when the text is one (people paste ids into search boxes), else None."""
    raw = text(value)
    if raw is None:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


def rupees(value: str | None, name: str) -> int | None:
    """``"50"`` / ``"50.5"`` / ``"1,250.25"`` rupees → paisa; empty → None; at most two decimals."""
    raw = text(value)
    if raw is None:
        return None
    try:
        amount = Decimal(raw.replace(",", "").removeprefix("Rs").strip())
    except InvalidOperation as exc:
        raise InputError(f"{name}: not an amount in rupees") from exc
    if not amount.is_finite() or amount < 0 or amount > MAX_RUPEES:
        raise InputError(f"{name}: must be between 0 and {MAX_RUPEES:,} rupees")
    paisa = amount * 100
    if paisa != paisa.to_integral_value():
        raise InputError(f"{name}: at most two decimals (paisa)")
    return int(paisa)


def local_time(value: str | None, name: str) -> datetime | None:
    """A ``datetime-local`` field (no zone) read as Nepal time; an explicit offset is kept."""
    raw = text(value)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise InputError(f"{name}: not a date and time (YYYY-MM-DDTHH:MM)") from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=CONSOLE_TZ)


def first_error(exc: ValidationError) -> str:
    """A pydantic validation error in one line for a flash message."""
    errors = exc.errors()
    if not errors:
        return "Invalid input"
    where = ".".join(str(part) for part in errors[0]["loc"])
    message = errors[0]["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
