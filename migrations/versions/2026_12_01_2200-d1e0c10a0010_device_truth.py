"""Device truth: bank condition apart from operator status, presence channels, device fault counters.

Revision ID: d1e0c10a0010
Revises: 7c3d9e2a5b11
Create Date: 2026-12-01 22:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d1e0c10a0010"
down_revision: str | None = "7c3d9e2a5b11"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "power_banks", sa.Column("condition", sa.String(16), nullable=False, server_default="HEALTHY")
    )
    op.add_column("power_banks", sa.Column("condition_code", sa.String(16), nullable=True))
    op.add_column("power_banks", sa.Column("condition_changed_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("power_banks") as batch:
        batch.create_check_constraint(
            op.f("ck_power_banks_condition_known"), "condition IN ('HEALTHY', 'FAULT')"
        )
    op.create_table(
        "power_bank_condition_history",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("power_bank_id", sa.Uuid(), nullable=False),
        sa.Column("previous_condition", sa.String(16), nullable=True),
        sa.Column("previous_code", sa.String(16), nullable=True),
        sa.Column("condition", sa.String(16), nullable=False),
        sa.Column("condition_code", sa.String(16), nullable=True),
        sa.Column("station_id", sa.Uuid(), nullable=True),
        sa.Column("slot_number", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["power_bank_id"],
            ["power_banks.id"],
            name=op.f("fk_power_bank_condition_history_power_bank_id_power_banks"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["station_id"],
            ["stations.id"],
            name=op.f("fk_power_bank_condition_history_station_id_stations"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_power_bank_condition_history")),
    )
    op.create_index(
        "ix_power_bank_condition_history_bank_changed",
        "power_bank_condition_history",
        ["power_bank_id", "changed_at"],
    )
    op.add_column("station_status_history", sa.Column("channel", sa.String(16), nullable=True))
    op.create_table(
        "device_fault_counters",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("station_id", sa.Uuid(), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("code", sa.String(16), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["station_id"],
            ["stations.id"],
            name=op.f("fk_device_fault_counters_station_id_stations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_fault_counters")),
        sa.UniqueConstraint(
            "station_id", "source", "code", name=op.f("uq_device_fault_counters_station_id_source_code")
        ),
    )


def downgrade() -> None:
    op.drop_table("device_fault_counters")
    op.drop_column("station_status_history", "channel")
    op.drop_index("ix_power_bank_condition_history_bank_changed", table_name="power_bank_condition_history")
    op.drop_table("power_bank_condition_history")
    with op.batch_alter_table("power_banks") as batch:
        batch.drop_constraint(op.f("ck_power_banks_condition_known"), type_="check")
    op.drop_column("power_banks", "condition_changed_at")
    op.drop_column("power_banks", "condition_code")
    op.drop_column("power_banks", "condition")
