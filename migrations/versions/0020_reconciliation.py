"""reconciliation: what is overdue, what was recovered, how far the passes looked

Written by hand from app.db.tables (issue #35):

- ``overdue``: MTs whose callback, or whose DLR after a successful callback, has not come;
- ``recoveries``: the statuses reconciliation learnt by asking Wavy;
- ``reconcile_state``: one row, the passes' marks and the pace every worker shares;
- ``events.reconciled``: a status asked of Wavy rather than posted by it;
- an index on ``mts (submitted_at, id)``: each pass reads the MTs from its mark in that order.

The previous release never names the new tables, and inserts events without the new column,
which then takes its default (false): a constant default adds no rewrite of ``events``. The
index is on ``mts``, which only the send API (new in the previous release) fills.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = sa.Text(collation="C")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column(
        "events",
        sa.Column("reconciled", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.create_index(op.f("ix_mts_submitted_at_id"), "mts", ["submitted_at", "id"])
    op.create_table(
        "overdue",
        sa.Column("mt_id", KEY, nullable=False),
        sa.Column("kind", KEY, nullable=False),
        sa.Column("message_id", KEY, nullable=True),
        sa.Column("sub_account", KEY, nullable=True),
        sa.Column("sent_at", TS, nullable=False),
        sa.Column("waiting_since", TS, nullable=False),
        sa.Column("checks", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_checked_at", TS, nullable=True),
        sa.Column("next_check_at", TS, nullable=False),
        sa.Column("given_up_at", TS, nullable=True),
        sa.CheckConstraint("kind IN ('callback', 'dlr')", name=op.f("ck_overdue_kind")),
        sa.ForeignKeyConstraint(
            ["mt_id"], ["mts.id"], name=op.f("fk_overdue_mt_id_mts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("mt_id", name=op.f("pk_overdue")),
    )
    op.create_index(
        op.f("ix_overdue_next_check_at"),
        "overdue",
        ["next_check_at"],
        postgresql_where=sa.text("given_up_at IS NULL"),
    )
    op.create_index(
        op.f("ix_overdue_sent_at"),
        "overdue",
        ["sent_at"],
        postgresql_where=sa.text("given_up_at IS NULL"),
    )
    op.create_index(
        op.f("ix_overdue_kind_waiting_since_mt_id"), "overdue", ["kind", "waiting_since", "mt_id"]
    )
    op.create_index(
        op.f("ix_overdue_sub_account_kind_waiting_since_mt_id"),
        "overdue",
        ["sub_account", "kind", "waiting_since", "mt_id"],
    )
    op.create_table(
        "recoveries",
        sa.Column("mt_id", KEY, nullable=False),
        sa.Column("kind", KEY, nullable=False),
        sa.Column("recovered_at", TS, nullable=False),
        sa.CheckConstraint("kind IN ('callback', 'dlr')", name=op.f("ck_recoveries_kind")),
        sa.ForeignKeyConstraint(
            ["mt_id"], ["mts.id"], name=op.f("fk_recoveries_mt_id_mts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("mt_id", "kind", name=op.f("pk_recoveries")),
    )
    op.create_index(op.f("ix_recoveries_recovered_at"), "recoveries", ["recovered_at"])
    op.create_table(
        "reconcile_state",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("callback_mark_at", TS, nullable=True),
        sa.Column("callback_mark_id", KEY, nullable=True),
        sa.Column("dlr_mark_at", TS, nullable=True),
        sa.Column("dlr_mark_id", KEY, nullable=True),
        sa.Column("next_ask_at", TS, server_default=sa.text("now()"), nullable=False),
        sa.Column("backoff_s", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_reconcile_state_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconcile_state")),
    )
    op.execute("INSERT INTO reconcile_state (id) VALUES (1)")


def downgrade() -> None:
    op.drop_table("reconcile_state")
    op.drop_table("recoveries")
    op.drop_table("overdue")
    op.drop_index(op.f("ix_mts_submitted_at_id"), table_name="mts")
    op.drop_column("events", "reconciled")
