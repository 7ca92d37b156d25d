"""events keyed by received_at and id

Written by hand: autogenerate saw only the dropped index, not the primary key's new columns.
The events' key becomes (received_at, id): one index serves the purge's range and the
history's order, where pk_events (id) and ix_events_received_at cost a right-edge insert each
per event. id stays an identity (unique as generated, no longer enforced alone). Building
the new key scans the table under an exclusive lock: on a big store, run it in a quiet hour.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 18:18:42.809696
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("pk_events", "events", type_="primary")
    op.drop_index(op.f("ix_events_received_at"), table_name="events")
    op.create_primary_key("pk_events", "events", ["received_at", "id"])


def downgrade() -> None:
    op.drop_constraint("pk_events", "events", type_="primary")
    op.create_primary_key("pk_events", "events", ["id"])
    op.create_index(op.f("ix_events_received_at"), "events", ["received_at"], unique=False)
