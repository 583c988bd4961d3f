"""Operations API: indexes for the dashboard, the power-bank detail, dues and the money views.

Revision ID: e13a0d17a014
Revises: d13a0d17a013
Create Date: 2026-12-01 22:40:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e13a0d17a014"
down_revision: str | None = "d13a0d17a013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_rentals_status_ended", "rentals", ["status", "ended_at"])
    op.create_index("ix_rentals_bank_created", "rentals", ["power_bank_id", "created_at"])
    op.create_index(
        "ix_rentals_with_dues",
        "rentals",
        ["user_id"],
        postgresql_where=sa.text("amount_due_paisa > 0"),
        sqlite_where=sa.text("amount_due_paisa > 0"),
    )
    op.create_index("ix_wallet_ledger_created", "wallet_ledger", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_wallet_ledger_created", table_name="wallet_ledger")
    op.drop_index("ix_rentals_with_dues", table_name="rentals")
    op.drop_index("ix_rentals_bank_created", table_name="rentals")
    op.drop_index("ix_rentals_status_ended", table_name="rentals")
