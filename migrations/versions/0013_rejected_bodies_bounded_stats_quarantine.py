"""rejected bodies bounded, stats quarantine

Written by hand. Two ways a client with one valid key could harm everyone else:

- Rejected bodies grew without bound (1 MiB of junk per request, hundreds of MB in seconds).
  Each row now carries its body's size (``body_bytes``, computed by PostgreSQL, so rows written
  by the previous release count too) and a digest. The same body refused again for the same
  reason is one row whose ``repeats`` grows (the unique index below, on rows not replayed);
  app.db.rejected keeps each key, and all keys together, within a byte budget.
- A value the stats rollup's btree cannot hold stopped every later fold. The fold now moves a
  group it cannot store to ``stats_quarantine`` and goes on.

The previous release keeps working: it inserts rejected bodies without a digest (NULL digests
never collide in a unique index) and never reads the new table.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNER = sa.text("coalesce(sub_account, '')")


def upgrade() -> None:
    op.add_column(
        "rejected_bodies",
        sa.Column("body_bytes", sa.Integer(), sa.Computed("octet_length(body)", persisted=True)),
    )
    op.add_column("rejected_bodies", sa.Column("digest", sa.LargeBinary(), nullable=True))
    op.add_column(
        "rejected_bodies",
        sa.Column("repeats", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column(
        "rejected_bodies",
        sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "uq_rejected_bodies_first_copy",
        "rejected_bodies",
        [OWNER, "endpoint", "method", "reason", "digest"],
        unique=True,
        postgresql_where=sa.text("replayed_at IS NULL"),
    )
    op.create_index(
        "ix_rejected_bodies_owner",
        "rejected_bodies",
        [OWNER],
        postgresql_include=["body_bytes"],
    )
    op.create_table(
        "stats_quarantine",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("sub_account", sa.Text(collation="C"), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("campaign_id", sa.Text(collation="C"), nullable=False),
        sa.Column("carrier_name", sa.Text(), nullable=False),
        sa.Column("metric", sa.Text(collation="C"), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column(
            "quarantined_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stats_quarantine")),
    )


def downgrade() -> None:
    op.drop_table("stats_quarantine")
    op.drop_index("ix_rejected_bodies_owner", table_name="rejected_bodies")
    op.drop_index("uq_rejected_bodies_first_copy", table_name="rejected_bodies")
    for column in ("last_received_at", "repeats", "digest", "body_bytes"):
        op.drop_column("rejected_bodies", column)
