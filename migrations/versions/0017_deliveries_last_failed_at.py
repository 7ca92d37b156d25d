"""when a delivery still waiting last failed

Written by hand. An endpoint shows how many of its deliveries wait for a retry and when the
next one is due, and stays "failing" while any does: one success among them no longer hides
the failures still queued (issue #33). A delivery that failed and waits to be retried is
pending with ``last_failed_at`` set.

Only a nullable column without a default is added: no table rewrite, and the previous release
(which never names it) reads and writes as before; its retries leave it empty, which shows
them as not retrying until their next failure.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 20:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("last_failed_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("deliveries", "last_failed_at")
