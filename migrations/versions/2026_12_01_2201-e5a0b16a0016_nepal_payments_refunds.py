"""Nepal payments (eSewa, Khalti) and refunds (placeholder: filled in by the change that needs it).

Revision ID: e5a0b16a0016
Revises: d1e0c10a0010
Create Date: 2026-12-01 22:00:00+00:00
"""

from collections.abc import Sequence

revision: str = "e5a0b16a0016"
down_revision: str | None = "d1e0c10a0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
