"""read api: users, read cursors, feed order

Reviewed by hand: tx_id is added with a constant default (metadata-only, no table rewrite, and
existing rows are long committed, so 0 orders them first), then switched to the current
transaction id for new rows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 18:12:37.249324
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

CURRENT_TX_ID = sa.text("(pg_current_xact_id()::text::bigint)")

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("sub_account", sa.Text(), nullable=True),
        sa.Column("token_hash", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "role = 'admin' OR sub_account IS NOT NULL", name=op.f("ck_users_user_has_sub_account")
        ),
        sa.CheckConstraint("role IN ('admin', 'user')", name=op.f("ck_users_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_index(
        "uq_users_lower_email", "users", [sa.literal_column("lower(email)")], unique=True
    )
    op.create_table(
        "read_cursors",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("feed", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("tx_id", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("feed IN ('status', 'mo')", name=op.f("ck_read_cursors_feed")),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_read_cursors_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "feed", "scope", name=op.f("pk_read_cursors")),
    )
    op.add_column(
        "messages", sa.Column("tx_id", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
    )
    op.alter_column("messages", "tx_id", server_default=CURRENT_TX_ID)
    # Listing and window indexes gain their tie-breaker, so pages are index range scans.
    op.drop_index(op.f("ix_messages_sub_account_first_seen_at"), table_name="messages")
    op.create_index(
        op.f("ix_messages_sub_account_first_seen_at_id"),
        "messages",
        ["sub_account", "first_seen_at", "id"],
    )
    op.create_index(op.f("ix_messages_first_seen_at_id"), "messages", ["first_seen_at", "id"])
    op.create_index(
        op.f("ix_messages_sub_account_tx_id_change_seq"),
        "messages",
        ["sub_account", "tx_id", "change_seq"],
        unique=False,
    )
    op.create_index(
        op.f("ix_messages_tx_id_change_seq"), "messages", ["tx_id", "change_seq"], unique=False
    )
    op.add_column(
        "mos", sa.Column("tx_id", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
    )
    op.alter_column("mos", "tx_id", server_default=CURRENT_TX_ID)
    op.drop_index(op.f("ix_mos_sub_account_received_at"), table_name="mos")
    op.create_index(
        op.f("ix_mos_sub_account_received_at_seq"), "mos", ["sub_account", "received_at", "seq"]
    )
    op.create_index(op.f("ix_mos_received_at_seq"), "mos", ["received_at", "seq"])
    op.create_index(
        op.f("ix_mos_sub_account_tx_id_seq"), "mos", ["sub_account", "tx_id", "seq"], unique=False
    )
    op.create_index(op.f("ix_mos_tx_id_seq"), "mos", ["tx_id", "seq"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_mos_tx_id_seq"), table_name="mos")
    op.drop_index(op.f("ix_mos_sub_account_tx_id_seq"), table_name="mos")
    op.drop_index(op.f("ix_mos_received_at_seq"), table_name="mos")
    op.drop_index(op.f("ix_mos_sub_account_received_at_seq"), table_name="mos")
    op.create_index(op.f("ix_mos_sub_account_received_at"), "mos", ["sub_account", "received_at"])
    op.drop_column("mos", "tx_id")
    op.drop_index(op.f("ix_messages_tx_id_change_seq"), table_name="messages")
    op.drop_index(op.f("ix_messages_sub_account_tx_id_change_seq"), table_name="messages")
    op.drop_index(op.f("ix_messages_first_seen_at_id"), table_name="messages")
    op.drop_index(op.f("ix_messages_sub_account_first_seen_at_id"), table_name="messages")
    op.create_index(
        op.f("ix_messages_sub_account_first_seen_at"), "messages", ["sub_account", "first_seen_at"]
    )
    op.drop_column("messages", "tx_id")
    op.drop_table("read_cursors")
    op.drop_index("uq_users_lower_email", table_name="users")
    op.drop_table("users")
