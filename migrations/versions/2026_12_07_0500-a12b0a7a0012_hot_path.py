"""Hot path: the one-slot-per-bank constraint is checked at the end of each statement (PostgreSQL).

A full snapshot is applied by ONE statement on PostgreSQL (``chargeghar_core.iot.snapshots``): a bank that
moves to another slot is emptied from its old slot and written into its new one by two parts of that
statement, whose order PostgreSQL leaves open. An immediate unique constraint is checked row by row and
would refuse the move whenever the new slot happens to be written first; DEFERRABLE INITIALLY IMMEDIATE
checks it once, at the end of the statement (still within the statement, never at commit). SQLite applies
snapshots step by step and keeps its constraint as it is.

Revision ID: a12b0a7a0012
Revises: e13a0d17a014
Create Date: 2026-12-07 05:00:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "a12b0a7a0012"
down_revision: str | None = "e13a0d17a014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "uq_station_slots_power_bank_id"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_constraint(_NAME, "station_slots", type_="unique")
    op.create_unique_constraint(
        _NAME, "station_slots", ["power_bank_id"], deferrable=True, initially="IMMEDIATE"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_constraint(_NAME, "station_slots", type_="unique")
    op.create_unique_constraint(_NAME, "station_slots", ["power_bank_id"])
