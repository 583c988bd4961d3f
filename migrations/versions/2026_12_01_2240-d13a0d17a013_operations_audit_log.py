"""Operations API: staff audit log, viewer role, power-bank administration (placeholder: filled in by the change that needs it).

Revision ID: d13a0d17a013
Revises: b12de71ce012
Create Date: 2026-12-01 22:40:00+00:00
"""

from collections.abc import Sequence

revision: str = "d13a0d17a013"
down_revision: str | None = "b12de71ce012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
