"""reply recounts queued in the database

Reviewed by hand; autogenerate gave the table. The messages whose reply counts a writer is to
count again were kept in the worker's memory, so a worker killed between a batch of replies
and its recount left a count one short for good. They are now queued in this table, in the
batch's own transaction, and any worker's sweep takes them (app.db.writer).

Counts already left short that way are set right here, once, from the stored replies: one
statement over every message with replies (only rows whose count changes are written).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25 20:37:34
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reply_recounts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("message_id", sa.Text(collation="C"), nullable=False),
        sa.Column(
            "queued_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reply_recounts")),
    )
    op.execute(
        """
        UPDATE messages AS m SET reply_count = r.n
        FROM (SELECT mt_id, count(*)::int AS n FROM mos WHERE mt_id IS NOT NULL
              GROUP BY mt_id) AS r
        WHERE m.id = r.mt_id AND m.reply_count <> r.n
        """
    )


def downgrade() -> None:
    op.drop_table("reply_recounts")
