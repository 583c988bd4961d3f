"""Renter OTP login, sessions (refresh-token families, push tokens), account deletion and the notification
outbox with per-renter preferences.

Revision ID: f15a0c15a015
Revises: e5a0b16a0016
Create Date: 2026-12-01 22:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "f15a0c15a015"
down_revision: str | None = "e5a0b16a0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("renter_profiles") as batch:
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "renter_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("device_name", sa.String(length=100), nullable=False),
        sa.Column("platform", sa.String(length=16), nullable=False),
        sa.Column("push_token", sa.String(length=512), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_renter_sessions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_renter_sessions")),
    )
    op.create_index(op.f("ix_renter_sessions_user_id"), "renter_sessions", ["user_id"])
    op.create_index(op.f("ix_renter_sessions_push_token"), "renter_sessions", ["push_token"])
    op.create_table(
        "renter_otp_challenges",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("destination_hash", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("consumed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "channel IN ('sms', 'email')", name=op.f("ck_renter_otp_challenges_channel_known")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_renter_otp_challenges")),
    )
    op.create_index(
        "ix_renter_otp_challenges_destination", "renter_otp_challenges", ["destination_hash", "created_at"]
    )
    op.create_table(
        "notification_outbox",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("event", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("destination", sa.String(length=254), nullable=True),
        sa.Column("language", sa.String(length=2), nullable=False),
        sa.Column("payload", JSON_TYPE, nullable=False),
        sa.Column("sealed_secret", sa.String(length=500), nullable=True),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "channel IN ('push', 'sms', 'email')", name=op.f("ck_notification_outbox_channel_known")
        ),
        sa.CheckConstraint(
            "status IN ('PENDING', 'CLAIMED', 'SENDING', 'SENT', 'FAILED', 'SKIPPED', 'UNCERTAIN')",
            name=op.f("ck_notification_outbox_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_notification_outbox_user_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_outbox")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_notification_outbox_idempotency_key")),
    )
    op.create_index(op.f("ix_notification_outbox_user_id"), "notification_outbox", ["user_id"])
    op.create_index(
        "ix_notification_outbox_status_next", "notification_outbox", ["status", "next_attempt_at"]
    )
    op.create_table(
        "notification_preferences",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("language", sa.String(length=2), nullable=False),
        sa.Column("push_enabled", sa.Boolean(), nullable=False),
        sa.Column("sms_enabled", sa.Boolean(), nullable=False),
        sa.Column("email_enabled", sa.Boolean(), nullable=False),
        sa.Column("modified_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "language IN ('en', 'ne')", name=op.f("ck_notification_preferences_language_known")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_notification_preferences_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_notification_preferences")),
    )


def downgrade() -> None:
    op.drop_table("notification_preferences")
    op.drop_index("ix_notification_outbox_status_next", table_name="notification_outbox")
    op.drop_index(op.f("ix_notification_outbox_user_id"), table_name="notification_outbox")
    op.drop_table("notification_outbox")
    op.drop_index("ix_renter_otp_challenges_destination", table_name="renter_otp_challenges")
    op.drop_table("renter_otp_challenges")
    op.drop_index(op.f("ix_renter_sessions_push_token"), table_name="renter_sessions")
    op.drop_index(op.f("ix_renter_sessions_user_id"), table_name="renter_sessions")
    op.drop_table("renter_sessions")
    with op.batch_alter_table("renter_profiles") as batch:
        batch.drop_column("deleted_at")
