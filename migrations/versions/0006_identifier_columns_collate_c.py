"""identifier columns collate C

Written by hand: autogenerate does not see a collation added to a column that had none. The
identifier columns of the big tables (message ids, sub-accounts, campaign ids, the stats'
metric names; see ``KEY`` in app.db.tables) now compare byte by byte. No row is rewritten (text
to text is binary-compatible), but each index on these columns is rebuilt under an exclusive
lock: on a big store, run it in a quiet hour. Orders change only on databases whose default
collation is not code-point order (C.UTF-8 is): there, ids that tie on time now sort byte by
byte ("B" before "a").

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 17:57:56.062955
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY_COLUMNS = {
    "messages": ("id", "sub_account", "correlation_id", "destination", "campaign_id"),
    "events": ("kind", "message_id", "sub_account"),
    "mos": ("id", "sub_account", "mt_id"),
    "stats_rollup": ("sub_account", "campaign_id", "metric"),
}


def _set_collation(collation: str | None) -> None:
    for table, columns in KEY_COLUMNS.items():
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.alter_column(
                    column, existing_type=sa.Text(), type_=sa.Text(collation=collation)
                )


def upgrade() -> None:
    _set_collation("C")


def downgrade() -> None:
    _set_collation("default")
