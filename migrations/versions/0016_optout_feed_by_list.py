"""the opt-out feed indexed by list

Written by hand (autogenerate gave the same index). A sub-account reads its own opt-out list's
changes and the account-wide list's, in feed order (tx_id, change_seq). With only the feed's
index over every list, each such read walked every other sub-account's changes since the
reader's position, and a reader with nothing new keeps its position: an endpoint of a quiet
sub-account paid for all the others' changes on every dispatch (82 ms a read with 500,000 of
them, docs/scaling.md). The new index lets app.db.reads.feed_page read each list by its own
range.

Only an index is added: the previous release reads and writes as before. It is built under a
lock that blocks writes to ``optouts`` (one row per number and list, far smaller than
``messages``); on a big list, create it CONCURRENTLY by hand first, under the same name.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04 05:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_optouts_sub_account_tx_id_change_seq"


def upgrade() -> None:
    op.create_index(INDEX, "optouts", ["sub_account", "tx_id", "change_seq"], unique=False)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="optouts")
