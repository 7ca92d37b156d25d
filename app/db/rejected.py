"""Rejected bodies: every body the webhooks refused, kept for an operator within bounds, and
replayed after a fix (a rule relaxed, a sender's bug understood).

Bounds, so that one key sending junk cannot fill the disk:

- the same body refused again for the same reason is counted on its first copy (``repeats``);
- each key (its sub-account) and all keys together have a byte budget; past it, only the first
  copy of each kind of refusal (endpoint, reason) is kept, cut to its first bytes, and later
  ones are counted on it;
- old ones are purged (WAVY_REJECTED_RETENTION, app.db.retention).

A replayed body is parsed exactly as its route parsed it, stored through the writer's own
statements with its original receive time, and marked replayed in the same transaction, so a
replay can be repeated safely: stored events count as duplicates.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db.engine import driver_connection
from app.db.ingest import write_records
from app.db.optouts import KeywordCache
from app.db.tables import REJECTED_OWNER, rejected_bodies
from app.db.writer import could_be_poison
from app.errors import Refused, Unavailable
from app.payloads import as_event_kind
from app.rules.records import build_event_records
from app.rules.webhook_body import parse_stored_body

# What is kept of a body past its budget: enough for an operator to see what was sent.
KEPT_PAST_BUDGET_BYTES = 1024


@dataclass(frozen=True, slots=True)
class RejectedBody:
    endpoint: str
    method: str
    sub_account: str | None
    status_code: int
    reason: str
    detail: Any
    content_type: str | None
    body: bytes
    body_truncated: bool


@dataclass(frozen=True, slots=True)
class RejectedBudget:
    per_key_bytes: int
    total_bytes: int


def _owner_is(rejected: RejectedBody) -> Any:
    return func.coalesce(rejected_bodies.c.sub_account, "") == (rejected.sub_account or "")


def _same_refusal(rejected: RejectedBody) -> list[Any]:
    return [
        _owner_is(rejected),
        rejected_bodies.c.endpoint == rejected.endpoint,
        rejected_bodies.c.method == rejected.method,
        rejected_bodies.c.reason == rejected.reason,
        rejected_bodies.c.replayed_at.is_(None),
    ]


async def _count_again(conn: AsyncConnection, *conditions: Any) -> int | None:
    """Count a refusal on the newest kept row that matches: the id, or None if there is none."""
    newest = select(func.max(rejected_bodies.c.id)).where(*conditions).scalar_subquery()
    found: int | None = await conn.scalar(
        update(rejected_bodies)
        .where(rejected_bodies.c.id == newest)
        .values(repeats=rejected_bodies.c.repeats + 1, last_received_at=func.now())
        .returning(rejected_bodies.c.id)
    )
    return found


async def _within_budget(
    conn: AsyncConnection, rejected: RejectedBody, budget: RejectedBudget
) -> bool:
    """The key's kept bytes by the index that holds them; all keys' by the table's size on disk
    (what the total budget is for, and read without a scan)."""
    used_by_key = await conn.scalar(
        select(func.coalesce(func.sum(rejected_bodies.c.body_bytes), 0)).where(_owner_is(rejected))
    )
    used_in_all = await conn.scalar(text("SELECT pg_total_relation_size('rejected_bodies')"))
    size = len(rejected.body)
    return int(used_by_key or 0) + size <= budget.per_key_bytes and (
        int(used_in_all or 0) + size <= budget.total_bytes
    )


async def store_rejected_body(
    engine: AsyncEngine, rejected: RejectedBody, budget: RejectedBudget
) -> int:
    """Keep a refused body within the bounds (see the module's docstring), in a transaction of
    its own; returns the id of the row that holds it or counts it. Raises Unavailable when the
    database cannot take it."""
    try:
        async with engine.begin() as conn:
            return await _store(conn, rejected, budget)
    except (SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as error:
        raise Unavailable(f"the rejected body could not be stored: {error}") from error


async def _store(conn: AsyncConnection, rejected: RejectedBody, budget: RejectedBudget) -> int:
    digest = hashlib.sha256(rejected.body).digest()
    same_body = await _count_again(
        conn, *_same_refusal(rejected), rejected_bodies.c.digest == digest
    )
    if same_body is not None:
        return same_body
    body, truncated = rejected.body, rejected.body_truncated
    if not await _within_budget(conn, rejected, budget):
        counted = await _count_again(conn, *_same_refusal(rejected))
        if counted is not None:
            return counted
        body, truncated = (
            body[:KEPT_PAST_BUDGET_BYTES],
            truncated or len(body) > len(body[:KEPT_PAST_BUDGET_BYTES]),
        )
    statement = pg_insert(rejected_bodies).values(
        endpoint=rejected.endpoint,
        method=rejected.method,
        sub_account=rejected.sub_account,
        status_code=rejected.status_code,
        reason=rejected.reason,
        detail=rejected.detail,
        content_type=rejected.content_type,
        body=body,
        body_truncated=truncated,
        digest=digest,
    )
    # The same body refused twice at once: both count on one row.
    rejected_id = await conn.scalar(
        statement.on_conflict_do_update(
            index_elements=[REJECTED_OWNER, "endpoint", "method", "reason", "digest"],
            index_where=rejected_bodies.c.replayed_at.is_(None),
            set_={"repeats": rejected_bodies.c.repeats + 1, "last_received_at": func.now()},
        ).returning(rejected_bodies.c.id)
    )
    assert rejected_id is not None
    return int(rejected_id)


@dataclass(frozen=True, slots=True)
class RejectedRow:
    id: int
    received_at: datetime
    endpoint: str
    method: str
    sub_account: str | None
    status_code: int
    reason: str
    body: bytes
    body_truncated: bool
    replayed_at: datetime | None
    repeats: int


async def list_rejected_bodies(conn: AsyncConnection, *, limit: int) -> list[RejectedRow]:
    columns = [rejected_bodies.c[name] for name in RejectedRow.__dataclass_fields__]
    rows = await conn.execute(select(*columns).order_by(rejected_bodies.c.id.desc()).limit(limit))
    return [RejectedRow(*row) for row in rows]


async def get_rejected_body(conn: AsyncConnection, rejected_id: int) -> bytes | None:
    body: bytes | None = await conn.scalar(
        select(rejected_bodies.c.body).where(rejected_bodies.c.id == rejected_id)
    )
    return body


# --- replay ----------------------------------------------------------------------------------

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


class ForeignWrite(Exception):
    """A replayed body still names messages of another sub-account than its key's."""


async def pending_rejected_ids(engine: AsyncEngine) -> list[int]:
    """Every rejected body not replayed yet, oldest first."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(rejected_bodies.c.id)
            .where(rejected_bodies.c.replayed_at.is_(None))
            .order_by(rejected_bodies.c.id)
        )
        return list(rows.scalars())


async def replay_rejected(
    engine: AsyncEngine, rejected_id: int, *, max_items: int, region: str
) -> ReplayResult:
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
        kind = as_event_kind(row.endpoint)
        parsed = parse_stored_body(kind, row.method, row.body, max_items=max_items)
        records = build_event_records(
            kind,
            parsed.payloads,
            parsed.payloads_json,
            sub_account=row.sub_account,
            received_at=row.received_at,
        )
    except Refused as rejection:
        return ReplayResult(rejected_id, "still_refused", reason=rejection.reason)
    try:
        async with engine.connect() as conn:
            driver = await driver_connection(conn)
            matcher = await KeywordCache(region).matcher(driver)
            async with driver.transaction():
                outcome = await write_records(driver, records, matcher)
                if outcome.refused:
                    # Still another sub-account's: undone, and left for the operator.
                    raise ForeignWrite
                await driver.execute(MARK_REPLAYED, rejected_id)
    except ForeignWrite:
        return ReplayResult(rejected_id, "still_refused", reason="foreign_message")
    except asyncpg.PostgresError as error:
        if not could_be_poison(error):
            raise  # the database is away, not refusing this body: the command fails
        return ReplayResult(rejected_id, "still_refused", reason="database_refused")
    return ReplayResult(
        rejected_id,
        "stored",
        stored=len(outcome.new),
        duplicates=len(records) - len(outcome.new),
    )
