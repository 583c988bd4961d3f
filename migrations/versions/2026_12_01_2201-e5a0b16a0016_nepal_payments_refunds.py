"""Nepal payments (eSewa, Khalti) and refunds: EXPIRED top-ups, their last lookup time, PROVIDER_REFUND
ledger rows and the refund requests table.

Revision ID: e5a0b16a0016
Revises: d1e0c10a0010
Create Date: 2026-12-01 22:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e5a0b16a0016"
down_revision: str | None = "d1e0c10a0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = "kind IN ('TOPUP', 'RENTAL_CHARGE', 'LATE_FEE', 'REFUND', 'ADJUSTMENT')"
NEW_KINDS = "kind IN ('TOPUP', 'RENTAL_CHARGE', 'LATE_FEE', 'REFUND', 'ADJUSTMENT', 'PROVIDER_REFUND')"
OLD_STATUSES = "status IN ('CREATED', 'CAPTURED', 'FAILED')"
NEW_STATUSES = "status IN ('CREATED', 'CAPTURED', 'FAILED', 'EXPIRED')"


def upgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        batch.add_column(sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True))
        batch.drop_constraint(op.f("ck_payments_status_known"), type_="check")
        batch.create_check_constraint(op.f("ck_payments_status_known"), NEW_STATUSES)
    with op.batch_alter_table("wallet_ledger") as batch:
        batch.drop_constraint(op.f("ck_wallet_ledger_kind_known"), type_="check")
        batch.create_check_constraint(op.f("ck_wallet_ledger_kind_known"), NEW_KINDS)
    op.create_table(
        "refund_requests",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("ledger_entry_id", sa.Uuid(), nullable=True),
        sa.Column("payment_id", sa.Uuid(), nullable=True),
        sa.Column("destination", sa.String(length=20), nullable=False),
        sa.Column("amount_requested_paisa", sa.BigInteger(), nullable=False),
        sa.Column("amount_approved_paisa", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("decided_by", sa.Uuid(), nullable=True),
        sa.Column("decided_by_email", sa.String(length=320), nullable=True),
        sa.Column("decision_note", sa.String(length=500), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("provider_refund_ref", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modified_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "amount_requested_paisa > 0", name=op.f("ck_refund_requests_amount_requested_positive")
        ),
        sa.CheckConstraint(
            "amount_approved_paisa IS NULL OR amount_approved_paisa > 0",
            name=op.f("ck_refund_requests_amount_approved_positive"),
        ),
        sa.CheckConstraint(
            "status IN ('REQUESTED', 'APPROVED', 'REJECTED')", name=op.f("ck_refund_requests_status_known")
        ),
        sa.CheckConstraint(
            "destination IN ('WALLET', 'ORIGINAL_PAYMENT')", name=op.f("ck_refund_requests_destination_known")
        ),
        sa.CheckConstraint(
            "(ledger_entry_id IS NULL) <> (payment_id IS NULL)",
            name=op.f("ck_refund_requests_exactly_one_target"),
        ),
        sa.ForeignKeyConstraint(
            ["ledger_entry_id"],
            ["wallet_ledger.id"],
            name=op.f("fk_refund_requests_ledger_entry_id_wallet_ledger"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"],
            ["payments.id"],
            name=op.f("fk_refund_requests_payment_id_payments"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_refund_requests_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refund_requests")),
    )
    op.create_index(
        op.f("ix_refund_requests_ledger_entry_id"), "refund_requests", ["ledger_entry_id"], unique=False
    )
    op.create_index(op.f("ix_refund_requests_payment_id"), "refund_requests", ["payment_id"], unique=False)
    op.create_index(
        "ix_refund_requests_status_created", "refund_requests", ["status", "created_at"], unique=False
    )
    op.create_index(
        "ix_refund_requests_user_created", "refund_requests", ["user_id", "created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_refund_requests_user_created", table_name="refund_requests")
    op.drop_index("ix_refund_requests_status_created", table_name="refund_requests")
    op.drop_index(op.f("ix_refund_requests_payment_id"), table_name="refund_requests")
    op.drop_index(op.f("ix_refund_requests_ledger_entry_id"), table_name="refund_requests")
    op.drop_table("refund_requests")
    op.execute("DELETE FROM wallet_ledger WHERE kind = 'PROVIDER_REFUND'")
    op.execute("UPDATE payments SET status = 'FAILED' WHERE status = 'EXPIRED'")
    with op.batch_alter_table("wallet_ledger") as batch:
        batch.drop_constraint(op.f("ck_wallet_ledger_kind_known"), type_="check")
        batch.create_check_constraint(op.f("ck_wallet_ledger_kind_known"), OLD_KINDS)
    with op.batch_alter_table("payments") as batch:
        batch.drop_constraint(op.f("ck_payments_status_known"), type_="check")
        batch.create_check_constraint(op.f("ck_payments_status_known"), OLD_STATUSES)
        batch.drop_column("checked_at")
