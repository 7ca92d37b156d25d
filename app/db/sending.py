"""The send API's rows: each MT as its sender asked (``mts``), and the status row an MT that
went to Wavy starts (``messages``), so that it shows in every read before Wavy calls back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import func, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.tables import CURRENT_TX_ID, messages, messages_change_seq, mts
from app.rules.sending import MtOutcome


@dataclass(frozen=True, slots=True)
class MtRow:
    id: str
    message_id: str | None
    sub_account: str | None
    username: str
    destination: str
    correlation_id: str | None
    message_text: str | None
    outcome: MtOutcome
    wavy_status: int | None
    submitted_at: datetime


async def record_mts(conn: AsyncConnection, rows: Sequence[MtRow]) -> None:
    if rows:
        await conn.execute(insert(mts), [asdict(row) for row in rows])


async def start_statuses(conn: AsyncConnection, rows: Sequence[MtRow]) -> None:
    """The status row of each MT Wavy took, with no status yet. A callback or DLR that came
    first (Wavy may call back before this commits) keeps what it wrote; the MT fills in what
    it lacks, and its sending time counts as first seen."""
    sent = [row for row in rows if row.message_id is not None]
    if not sent:
        return
    statement = pg_insert(messages).values(
        [
            {
                "id": row.message_id,
                "sub_account": row.sub_account,
                "correlation_id": row.correlation_id,
                "destination": row.destination,
                "first_seen_at": row.submitted_at,
                "updated_at": row.submitted_at,
            }
            for row in sent
        ]
    )
    existing, new = messages.c, statement.excluded
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[messages.c.id],
            set_={
                "sub_account": func.coalesce(existing.sub_account, new.sub_account),
                "correlation_id": func.coalesce(existing.correlation_id, new.correlation_id),
                "destination": func.coalesce(existing.destination, new.destination),
                "first_seen_at": func.least(existing.first_seen_at, new.first_seen_at),
                "change_seq": messages_change_seq.next_value(),
                "tx_id": CURRENT_TX_ID,
            },
        )
    )
