"""scoped indexes hold only rows with a sub-account

Written by hand: autogenerate does not compare index predicates. The four indexes that serve
scoped reads (sub_account first) become partial, WHERE sub_account IS NOT NULL: a scoped read
always names its sub-account, so rows with none were entries nobody could look up. Each index
is rebuilt under a lock that blocks writes to its table: on a big store, run it in a quiet
hour (or create the new ones CONCURRENTLY by hand first, under the same names).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25 18:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCOPED_INDEXES = {
    "ix_messages_sub_account_first_seen_at_id": (
        "messages",
        ["sub_account", "first_seen_at", "id"],
    ),
    "ix_messages_sub_account_tx_id_change_seq": (
        "messages",
        ["sub_account", "tx_id", "change_seq"],
    ),
    "ix_mos_sub_account_received_at_seq": ("mos", ["sub_account", "received_at", "seq"]),
    "ix_mos_sub_account_tx_id_seq": ("mos", ["sub_account", "tx_id", "seq"]),
}


def _rebuild(where: str | None) -> None:
    for name, (table, columns) in SCOPED_INDEXES.items():
        op.drop_index(name, table_name=table)
        op.create_index(
            name,
            table,
            columns,
            postgresql_where=sa.text(where) if where else None,
        )


def upgrade() -> None:
    _rebuild("sub_account IS NOT NULL")


def downgrade() -> None:
    _rebuild(None)
