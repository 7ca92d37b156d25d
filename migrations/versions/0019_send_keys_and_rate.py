"""idempotency keys of sends, and the sends' rate shared by every worker

Written by hand from app.db.tables (issue #34): ``send_keys`` keeps the first answer to a send
made with an Idempotency-Key, ``send_rate`` counts the sends passed to Wavy in each second so
that WAVY_SEND_MAX_RPS holds for every worker and replica together.

Only new tables: the previous release never names them and works as before.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 21:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "send_keys",
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("body_sha256", sa.Text(), nullable=False),
        sa.Column("status", sa.SmallInteger(), nullable=True),
        sa.Column("answer", sa.LargeBinary(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("username", "key", name=op.f("pk_send_keys")),
    )
    op.create_index(
        op.f("ix_send_keys_created_at"), "send_keys", ["created_at"], postgresql_using="brin"
    )
    op.create_table(
        "send_rate",
        sa.Column("slot", sa.SmallInteger(), nullable=False),
        sa.Column("second", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("slot", name=op.f("pk_send_rate")),
    )


def downgrade() -> None:
    op.drop_table("send_rate")
    op.drop_table("send_keys")
