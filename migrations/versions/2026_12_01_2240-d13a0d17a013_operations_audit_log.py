"""Operations API: staff audit log, viewer role, power-bank operator statuses (retired, lost).

Revision ID: d13a0d17a013
Revises: b12de71ce012
Create Date: 2026-12-01 22:40:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d13a0d17a013"
down_revision: str | None = "b12de71ce012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "staff_audit_log",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=False),
        sa.Column("actor_email", sa.String(length=254), nullable=False),
        sa.Column("actor_role", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=32), nullable=False),
        sa.Column("target_id", sa.String(length=128), nullable=True),
        sa.Column("station_id", sa.Uuid(), nullable=True),
        sa.Column("details", _JSON, nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("elapsed_ms", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff_audit_log")),
    )
    op.create_index(op.f("ix_staff_audit_log_created_at"), "staff_audit_log", ["created_at"])
    op.create_index("ix_staff_audit_log_actor_created", "staff_audit_log", ["actor_id", "created_at"])
    op.create_index("ix_staff_audit_log_station_created", "staff_audit_log", ["station_id", "created_at"])
    op.create_index("ix_staff_audit_log_action_created", "staff_audit_log", ["action", "created_at"])
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint(op.f("ck_users_role_known"), type_="check")
        batch.create_check_constraint(
            op.f("ck_users_role_known"), "role IN ('admin', 'staff', 'viewer', 'service', 'renter')"
        )
    with op.batch_alter_table("power_banks") as batch:
        batch.drop_constraint(op.f("ck_power_banks_status_known"), type_="check")
        batch.create_check_constraint(
            op.f("ck_power_banks_status_known"),
            "status IN ('AVAILABLE', 'RENTED', 'MAINTENANCE', 'DAMAGED', 'RETIRED', 'LOST')",
        )


def downgrade() -> None:
    op.execute("UPDATE power_banks SET status = 'MAINTENANCE' WHERE status IN ('RETIRED', 'LOST')")
    with op.batch_alter_table("power_banks") as batch:
        batch.drop_constraint(op.f("ck_power_banks_status_known"), type_="check")
        batch.create_check_constraint(
            op.f("ck_power_banks_status_known"), "status IN ('AVAILABLE', 'RENTED', 'MAINTENANCE', 'DAMAGED')"
        )
    op.execute("DELETE FROM users WHERE role = 'viewer'")
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint(op.f("ck_users_role_known"), type_="check")
        batch.create_check_constraint(
            op.f("ck_users_role_known"), "role IN ('admin', 'staff', 'service', 'renter')"
        )
    op.drop_index("ix_staff_audit_log_action_created", table_name="staff_audit_log")
    op.drop_index("ix_staff_audit_log_station_created", table_name="staff_audit_log")
    op.drop_index("ix_staff_audit_log_actor_created", table_name="staff_audit_log")
    op.drop_index(op.f("ix_staff_audit_log_created_at"), table_name="staff_audit_log")
    op.drop_table("staff_audit_log")
