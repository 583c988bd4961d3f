"""Trust boundaries: claimed (HTTP-only, uncorroborated) returns on rentals.

Revision ID: a11c0de0a011
Revises: f15a0c15a015
Create Date: 2026-12-01 22:03:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a11c0de0a011"
down_revision: str | None = "f15a0c15a015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rentals") as batch:
        batch.add_column(sa.Column("return_claimed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("return_claim_station_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("return_claim_slot_number", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_rentals_return_claim_station_id_stations",
            "stations",
            ["return_claim_station_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("rentals") as batch:
        batch.drop_constraint("fk_rentals_return_claim_station_id_stations", type_="foreignkey")
        batch.drop_column("return_claim_slot_number")
        batch.drop_column("return_claim_station_id")
        batch.drop_column("return_claimed_at")
