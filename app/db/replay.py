"""Replaying dead letters: bodies the webhooks refused, ingested again after a fix (a rule
relaxed, a sender's bug understood). Each body is parsed exactly as its route parsed it, stored
through the writer's own statements with its original receive time, and marked replayed in the
same transaction, so a replay can be repeated safely: stored events count as duplicates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import asyncpg
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import driver_connection
from app.db.ingest import write_records
from app.db.tables import rejected_bodies
from app.db.writer import could_be_poison
from app.rules.records import build_event_records
from app.rules.webhook_body import BodyRejected, parse_stored_body

# On the writer's asyncpg connection, inside its transaction (SQLAlchemy would open its own).
MARK_REPLAYED = "UPDATE rejected_bodies SET replayed_at = now() WHERE id = $1"

Outcome = Literal["stored", "still_refused", "cut_off", "not_found"]


@dataclass(frozen=True, slots=True)
class ReplayResult:
    rejected_id: int
    outcome: Outcome
    stored: int = 0
    duplicates: int = 0
    reason: str | None = None


async def pending_rejected_ids(engine: AsyncEngine) -> list[int]:
    """Every dead letter not replayed yet, oldest first."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(rejected_bodies.c.id)
            .where(rejected_bodies.c.replayed_at.is_(None))
            .order_by(rejected_bodies.c.id)
        )
        return list(rows.scalars())


async def replay_rejected(engine: AsyncEngine, rejected_id: int, *, max_items: int) -> ReplayResult:
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(rejected_bodies).where(rejected_bodies.c.id == rejected_id))
        ).one_or_none()
    if row is None:
        return ReplayResult(rejected_id, "not_found")
    if row.body_truncated:
        # Only the start of the body was kept: whatever it held cannot be recovered here.
        return ReplayResult(rejected_id, "cut_off", reason=row.reason)
    try:
        parsed = parse_stored_body(row.endpoint, row.method, row.body, max_items=max_items)
    except BodyRejected as rejection:
        return ReplayResult(rejected_id, "still_refused", reason=rejection.reason)
    records = build_event_records(
        row.endpoint,
        parsed.payloads,
        parsed.payloads_json,
        sub_account=row.sub_account,
        received_at=row.received_at,
    )
    try:
        async with engine.connect() as conn:
            driver = await driver_connection(conn)
            async with driver.transaction():
                new_positions = await write_records(driver, records)
                await driver.execute(MARK_REPLAYED, rejected_id)
    except asyncpg.PostgresError as error:
        if not could_be_poison(error):
            raise  # the database is away, not refusing this body: the command fails
        return ReplayResult(rejected_id, "still_refused", reason="database_refused")
    return ReplayResult(
        rejected_id,
        "stored",
        stored=len(new_positions),
        duplicates=len(records) - len(new_positions),
    )
