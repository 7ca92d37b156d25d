"""cheaper ingest: json payload, drop unused change_seq index

Reviewed by hand: the type change gets explicit USING casts. It rewrites the events table
(run it in a quiet hour on a big store); payloads already stored as jsonb come back as
normalized text, new ones are kept verbatim. ix_messages_change_seq served nothing since the
feeds read (tx_id, change_seq).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 18:32:33.983499
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column(
        "events",
        "payload",
        existing_type=postgresql.JSONB(astext_type=sa.Text()),
        type_=postgresql.JSON(astext_type=sa.Text()),
        existing_nullable=False,
        postgresql_using="payload::json",
    )
    op.drop_index(op.f("ix_messages_change_seq"), table_name="messages")


def downgrade() -> None:
    op.create_index(op.f("ix_messages_change_seq"), "messages", ["change_seq"], unique=True)
    op.alter_column(
        "events",
        "payload",
        existing_type=postgresql.JSON(astext_type=sa.Text()),
        type_=postgresql.JSONB(astext_type=sa.Text()),
        existing_nullable=False,
        postgresql_using="payload::jsonb",
    )
