"""The fee arithmetic, pure and in integer paisa (no floats anywhere, every division rounds up to a paisa).

Rules (chosen here, tested against worked examples in tests/rentals/test_fees.py):
- minutes are counted as *started* minutes: 61 seconds is 2 minutes;
- the per-minute rate of a package is ``price / duration`` kept as a fraction, so 5000 paisa for 60 minutes
  is exactly 83 1/3 paisa a minute, and a fee is rounded up once, at the end of its computation;
- a station discount takes ``percent`` off the package price and the usage fee (rounded down in the renter's
  favour), never off a late fee;
- late fee for ``m`` late minutes: the first ``grace_minutes`` are free; the rest, split into 24-hour blocks,
  each cost ``multiplier x rate x minutes`` plus ``flat_per_hour`` per started hour, each block capped at
  ``daily_cap``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

BASIS_POINTS = 10_000
MINUTES_PER_DAY = 24 * 60


def ceil_div(numerator: int, denominator: int) -> int:
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    return -(-numerator // denominator)


def started_minutes(start: datetime, end: datetime) -> int:
    """Whole minutes from ``start`` to ``end``, a started minute counting as one; 0 when end <= start."""
    microseconds = (end - start) // _MICROSECOND
    if microseconds <= 0:
        return 0
    return ceil_div(microseconds, 60_000_000)


def discounted(amount_paisa: int, discount_bp: int) -> int:
    """``amount`` minus the discount, the discount rounded down (the renter never pays more than stated)."""
    return amount_paisa - (amount_paisa * discount_bp) // BASIS_POINTS


@dataclass(frozen=True, slots=True)
class PackageTerms:
    price_paisa: int
    duration_minutes: int
    discount_bp: int = 0

    def usage_fee(self, minutes_used: int) -> int:
        """Postpaid: the package price pro rata for the minutes used, at most the whole (discounted) price."""
        billable = max(0, min(minutes_used, self.duration_minutes))
        gross = ceil_div(self.price_paisa * billable, self.duration_minutes)
        return discounted(gross, self.discount_bp)


@dataclass(frozen=True, slots=True)
class LateFeeTerms:
    rate_multiplier_bp: int = 0
    flat_per_hour_paisa: int = 0
    grace_minutes: int = 0
    daily_cap_paisa: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LateFeeTerms:
        cap = data.get("daily_cap_paisa")
        return cls(
            rate_multiplier_bp=int(data.get("rate_multiplier_bp", 0)),
            flat_per_hour_paisa=int(data.get("flat_per_hour_paisa", 0)),
            grace_minutes=int(data.get("grace_minutes", 0)),
            daily_cap_paisa=None if cap is None else int(cap),
        )

    def late_fee(self, package: PackageTerms, late_minutes: int) -> int:
        chargeable = late_minutes - self.grace_minutes
        if chargeable <= 0:
            return 0
        full_days, rest = divmod(chargeable, MINUTES_PER_DAY)
        fee = full_days * self._block_fee(package, MINUTES_PER_DAY)
        if rest:
            fee += self._block_fee(package, rest)
        return fee

    def _block_fee(self, package: PackageTerms, minutes: int) -> int:
        rate_part = ceil_div(
            package.price_paisa * minutes * self.rate_multiplier_bp, package.duration_minutes * BASIS_POINTS
        )
        flat_part = self.flat_per_hour_paisa * ceil_div(minutes, 60)
        fee = rate_part + flat_part
        if self.daily_cap_paisa is not None:
            fee = min(fee, self.daily_cap_paisa)
        return fee


_MICROSECOND = datetime.resolution
