"""the MTs sent through the service's send API

Written by hand from app.db.tables. One row per MT a client sent through us (issue #34): as
its sender asked, what became of it, and the id that ties it to its statuses.

Only a new table: the previous release never names it and works as before.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = sa.Text(collation="C")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "mts",
        sa.Column("id", KEY, nullable=False),
        sa.Column("message_id", KEY, nullable=True),
        sa.Column("sub_account", KEY, nullable=True),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("destination", KEY, nullable=False),
        sa.Column("correlation_id", KEY, nullable=True),
        sa.Column("message_text", sa.Text(), nullable=True),
        sa.Column("outcome", KEY, nullable=False),
        sa.Column("wavy_status", sa.SmallInteger(), nullable=True),
        sa.Column("submitted_at", TS, nullable=False),
        sa.CheckConstraint(
            "outcome IN ('sent', 'refused_optout', 'refused_blacklisted', 'unknown')",
            name=op.f("ck_mts_outcome"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mts")),
    )
    op.create_index(op.f("ix_mts_message_id"), "mts", ["message_id"])
    op.create_index(op.f("ix_mts_correlation_id"), "mts", ["correlation_id"])
    op.create_index(op.f("ix_mts_submitted_at"), "mts", ["submitted_at"], postgresql_using="brin")


def downgrade() -> None:
    op.drop_table("mts")
