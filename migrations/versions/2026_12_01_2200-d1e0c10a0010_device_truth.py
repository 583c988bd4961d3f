"""Device truth: bank condition apart from operator status, presence channels, command audit (placeholder: filled in by the change that needs it).

Revision ID: d1e0c10a0010
Revises: 7c3d9e2a5b11
Create Date: 2026-12-01 22:00:00+00:00
"""

from collections.abc import Sequence

revision: str = "d1e0c10a0010"
down_revision: str | None = "7c3d9e2a5b11"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
