"""Operations API: rental administration, money views, fleet sync log (placeholder: filled in by the change that needs it).

Revision ID: e13a0d17a014
Revises: d13a0d17a013
Create Date: 2026-12-01 22:40:00+00:00
"""

from collections.abc import Sequence

revision: str = "e13a0d17a014"
down_revision: str | None = "d13a0d17a013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
