"""Renter OTP login, sessions and the notification outbox (placeholder: filled in by the change that needs it).

Revision ID: f15a0c15a015
Revises: e5a0b16a0016
Create Date: 2026-12-01 22:00:00+00:00
"""

from collections.abc import Sequence

revision: str = "f15a0c15a015"
down_revision: str | None = "e5a0b16a0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
