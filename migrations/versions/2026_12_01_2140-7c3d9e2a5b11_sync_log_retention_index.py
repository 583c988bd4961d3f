"""Index on sync_logs.created_at for the retention job (prunes by age; processed_events has one already).

Revision ID: 7c3d9e2a5b11
Revises: 4b2a14218da4
Create Date: 2026-12-01 21:40:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "7c3d9e2a5b11"
down_revision: str | None = "4b2a14218da4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_sync_logs_created_at", "sync_logs", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_sync_logs_created_at", table_name="sync_logs")
