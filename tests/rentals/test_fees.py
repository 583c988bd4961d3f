"""Late-fee and usage arithmetic against worked examples (integer paisa, rounded up once)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from chargeghar_core.pricing.fees import LateFeeTerms, PackageTerms, ceil_div, discounted, started_minutes
from hypothesis import given
from hypothesis import strategies as st

RS_50_PER_HOUR = PackageTerms(price_paisa=5000, duration_minutes=60)  # 83 1/3 paisa a minute
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("seconds", "minutes"),
    [(0, 0), (-5, 0), (1, 1), (59, 1), (60, 1), (61, 2), (3600, 60), (3600.5, 61)],
)
def test_minutes_are_started_minutes(seconds: float, minutes: int) -> None:
    assert started_minutes(T0, T0 + timedelta(seconds=seconds)) == minutes


@pytest.mark.parametrize(
    ("terms", "late_minutes", "fee", "why"),
    [
        # 1.5x the rate, 10 free minutes: 30 charged minutes x 125 paisa = 3750.
        (LateFeeTerms(rate_multiplier_bp=15_000, grace_minutes=10), 40, 3750, "rate x minutes after grace"),
        (LateFeeTerms(rate_multiplier_bp=15_000, grace_minutes=10), 10, 0, "inside the grace period"),
        # 1x: 7 minutes x 83 1/3 = 583 1/3 → rounded up to 584.
        (LateFeeTerms(rate_multiplier_bp=10_000), 7, 584, "rounded up once, at the end"),
        # Flat Rs 20 per started hour: 61 minutes = 2 hours = 4000.
        (LateFeeTerms(rate_multiplier_bp=0, flat_per_hour_paisa=2000), 61, 4000, "flat per started hour"),
        # Both: 90 minutes x 83 1/3 = 7500, plus 2 started hours x 1000 = 9500.
        (LateFeeTerms(rate_multiplier_bp=10_000, flat_per_hour_paisa=1000), 90, 9500, "rate plus flat"),
        # Two days and one hour late at 2x (166 2/3 a minute), capped at Rs 300 a day:
        # day 1: 240000 → 30000, day 2: 30000, the last 60 minutes: 10000 → 70000.
        (LateFeeTerms(rate_multiplier_bp=20_000, daily_cap_paisa=30_000), 2 * 1440 + 60, 70_000, "daily cap"),
        # Grace is taken off before splitting into days: 1440 + 15 late, 15 free = exactly one day, capped.
        (
            LateFeeTerms(rate_multiplier_bp=10_000, grace_minutes=15, daily_cap_paisa=50_000),
            1455,
            50_000,
            "grace",
        ),
        (LateFeeTerms(), 500, 0, "no policy, no fee"),
    ],
)
def test_late_fee_worked_examples(terms: LateFeeTerms, late_minutes: int, fee: int, why: str) -> None:
    assert terms.late_fee(RS_50_PER_HOUR, late_minutes) == fee, why


@pytest.mark.parametrize(
    ("terms", "minutes", "fee"),
    [
        (PackageTerms(6000, 120), 31, 1550),  # 6000 x 31 / 120
        (PackageTerms(5000, 60), 1, 84),  # 83 1/3 rounded up
        (PackageTerms(5000, 60), 500, 5000),  # never more than the package price
        (PackageTerms(5000, 60, discount_bp=1000), 60, 4500),  # 10 % off
        (PackageTerms(5000, 60, discount_bp=1000), 1, 76),  # 84 - floor(8.4) = 76
        (PackageTerms(5000, 60), 0, 0),
    ],
)
def test_usage_fee_worked_examples(terms: PackageTerms, minutes: int, fee: int) -> None:
    assert terms.usage_fee(minutes) == fee


def test_discount_rounds_in_the_renters_favour() -> None:
    assert discounted(999, 1500) == 850  # 149.85 off → 149 off
    assert discounted(5000, 10_000) == 0


@given(
    price=st.integers(0, 10**7),
    duration=st.integers(1, 10_000),
    multiplier=st.integers(0, 50_000),
    flat=st.integers(0, 10**5),
    grace=st.integers(0, 120),
    cap=st.one_of(st.none(), st.integers(0, 10**6)),
    late=st.integers(0, 10 * 1440),
    extra=st.integers(0, 3000),
)
def test_late_fee_is_monotonic_integer_and_capped(
    price: int, duration: int, multiplier: int, flat: int, grace: int, cap: int | None, late: int, extra: int
) -> None:
    package = PackageTerms(price, duration)
    terms = LateFeeTerms(multiplier, flat, grace, cap)
    fee = terms.late_fee(package, late)
    assert isinstance(fee, int) and fee >= 0
    assert terms.late_fee(package, late + extra) >= fee
    if cap is not None:
        assert fee <= cap * ceil_div(max(late - grace, 0), 1440)
