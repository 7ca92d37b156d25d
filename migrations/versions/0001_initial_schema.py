"""initial schema: webhook keys, merged messages, event log, MOs, dead letters

Reviewed by hand after autogenerate: autogenerate does not emit the messages_change_seq
sequence, and the events retry constraint needed a name under PostgreSQL's 63-byte limit.

Revision ID: 0001
Revises:
Create Date: 2026-11-24 17:54:43.726139
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(sa.schema.CreateSequence(sa.Sequence("messages_change_seq")))
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("sub_account", sa.Text(), nullable=True),
        sa.Column("sent_status_code", sa.Integer(), nullable=True),
        sa.Column("delivered_status_code", sa.Integer(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.CheckConstraint("kind IN ('callback', 'dlr', 'mo')", name=op.f("ck_events_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint(
            "message_id",
            "kind",
            "sent_status_code",
            "delivered_status_code",
            name=op.f("uq_events_exact_retry"),
            postgresql_nulls_not_distinct=True,
        ),
    )
    op.create_index(op.f("ix_events_received_at"), "events", ["received_at"], unique=False)
    op.create_table(
        "messages",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("sub_account", sa.Text(), nullable=True),
        sa.Column("correlation_id", sa.Text(), nullable=True),
        sa.Column("destination", sa.Text(), nullable=True),
        sa.Column("carrier_id", sa.BigInteger(), nullable=True),
        sa.Column("carrier_name", sa.Text(), nullable=True),
        sa.Column("campaign_id", sa.Text(), nullable=True),
        sa.Column("extra_info", sa.Text(), nullable=True),
        sa.Column("sent_source", sa.SmallInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("sent_status_code", sa.Integer(), nullable=True),
        sa.Column("sent_status", sa.Text(), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_status_code", sa.Integer(), nullable=True),
        sa.Column("delivered_status", sa.Text(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "change_seq",
            sa.BigInteger(),
            server_default=sa.text("nextval('messages_change_seq')"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
    )
    op.create_index(op.f("ix_messages_change_seq"), "messages", ["change_seq"], unique=True)
    op.create_index(
        op.f("ix_messages_correlation_id"), "messages", ["correlation_id"], unique=False
    )
    op.create_index(op.f("ix_messages_destination"), "messages", ["destination"], unique=False)
    op.create_index(
        op.f("ix_messages_sub_account_first_seen_at"),
        "messages",
        ["sub_account", "first_seen_at"],
        unique=False,
    )
    op.create_table(
        "mos",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("sub_account", sa.Text(), nullable=True),
        sa.Column("campaign_alias", sa.Text(), nullable=True),
        sa.Column("carrier_id", sa.BigInteger(), nullable=True),
        sa.Column("carrier_name", sa.Text(), nullable=True),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("short_code", sa.Text(), nullable=True),
        sa.Column("message_text", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mt_id", sa.Text(), nullable=True),
        sa.Column("mt_correlation_id", sa.Text(), nullable=True),
        sa.Column("mt_username", sa.Text(), nullable=True),
        sa.Column("mt_email", sa.Text(), nullable=True),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mos")),
    )
    op.create_index(op.f("ix_mos_mt_id"), "mos", ["mt_id"], unique=False)
    op.create_index(op.f("ix_mos_seq"), "mos", ["seq"], unique=True)
    op.create_index(
        op.f("ix_mos_sub_account_received_at"), "mos", ["sub_account", "received_at"], unique=False
    )
    op.create_table(
        "rejected_bodies",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("method", sa.Text(), nullable=False),
        sa.Column("sub_account", sa.Text(), nullable=True),
        sa.Column("status_code", sa.SmallInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detail", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("content_type", sa.Text(), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("body_truncated", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rejected_bodies")),
    )
    op.create_index(
        op.f("ix_rejected_bodies_received_at"), "rejected_bodies", ["received_at"], unique=False
    )
    op.create_table(
        "webhook_keys",
        sa.Column("id", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("sub_account", sa.Text(), nullable=True),
        sa.Column("key_hash", sa.Text(), nullable=False),
        sa.Column("key_prefix", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_webhook_keys_key_hash")),
    )


def downgrade() -> None:
    op.drop_table("webhook_keys")
    op.drop_index(op.f("ix_rejected_bodies_received_at"), table_name="rejected_bodies")
    op.drop_table("rejected_bodies")
    op.drop_index(op.f("ix_mos_sub_account_received_at"), table_name="mos")
    op.drop_index(op.f("ix_mos_seq"), table_name="mos")
    op.drop_index(op.f("ix_mos_mt_id"), table_name="mos")
    op.drop_table("mos")
    op.drop_index(op.f("ix_messages_sub_account_first_seen_at"), table_name="messages")
    op.drop_index(op.f("ix_messages_destination"), table_name="messages")
    op.drop_index(op.f("ix_messages_correlation_id"), table_name="messages")
    op.drop_index(op.f("ix_messages_change_seq"), table_name="messages")
    op.drop_table("messages")
    op.drop_index(op.f("ix_events_received_at"), table_name="events")
    op.drop_table("events")
    op.execute(sa.schema.DropSequence(sa.Sequence("messages_change_seq")))
