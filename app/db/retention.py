"""The retention purge: old events, statuses, replies and rejected bodies removed in small batches.

Each batch is its own short transaction that skips rows an ingest batch holds locked, so a
purge of millions of rows never blocks the webhooks for longer than one small DELETE. Only one
purge runs at a time across workers and replicas (an advisory lock).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.logs import FailureLog

log = logging.getLogger(__name__)

# Any constant both sides agree on; hashtext() keeps it readable.
PURGE_LOCK = "SELECT pg_try_advisory_lock(hashtext('wavy-webhooks purge'))"
PURGE_UNLOCK = "SELECT pg_advisory_unlock(hashtext('wavy-webhooks purge'))"

# What is old in each table. A message is old only when it has not changed since the cutoff
# either (a late DLR keeps it).
_OLD_ROWS = {
    "events": "received_at < :cutoff",
    "messages": "first_seen_at < :cutoff AND updated_at < :cutoff",
    "mos": "received_at < :cutoff",
    "mts": "submitted_at < :cutoff",
    "send_keys": "created_at < :cutoff",
    "rejected_bodies": "received_at < :cutoff",
    # Forwarding's history; a delivery still to be sent is never old.
    "deliveries": "created_at < :cutoff AND state <> 'pending'",
    "delivery_attempts": "attempted_at < :cutoff",
}
# The tables WAVY_FORWARD_RETENTION ages (the data's retention, when shorter, too).
_FORWARDING = ("deliveries", "delivery_attempts")


# How a row is found again: its primary key (the events' leads with received_at).
_ROW_KEY = {"events": "received_at, id", "send_keys": "username, key"}


def _purge_batch_statement(table: str, old: str) -> str:
    """At most :batch old rows of one table, skipping rows a writer holds locked."""
    key = _ROW_KEY.get(table, "id")
    return (
        f"DELETE FROM {table} WHERE ({key}) IN ("  # noqa: S608 - constant names and predicates
        f"SELECT {key} FROM {table} WHERE {old} LIMIT :batch FOR UPDATE SKIP LOCKED)"
    )


_PURGE_BATCH = {table: _purge_batch_statement(table, old) for table, old in _OLD_ROWS.items()}


@dataclass
class PurgeReport:
    cutoff: datetime  # the data's (the earliest, when tables have ages of their own)
    ran: bool = True  # False when another purge held the lock
    deleted: dict[str, int] = field(default_factory=dict)


def retention_ages(
    data: timedelta | None, rejected: timedelta | None, forwarding: timedelta | None = None
) -> dict[str, timedelta]:
    """How old each table's rows may grow: the data's age everywhere, rejected bodies no older
    than their own (WAVY_REJECTED_RETENTION) and forwarding's history no older than its own
    (WAVY_FORWARD_RETENTION), whichever is shorter."""
    ages = {table: data for table in _OLD_ROWS} if data is not None else {}
    own = {"rejected_bodies": rejected, **dict.fromkeys(_FORWARDING, forwarding)}
    for table, age in own.items():
        if age is not None:
            ages[table] = min(age, ages.get(table, age))
    return ages


async def purge_older_than(
    engine: AsyncEngine, age: timedelta, *, batch_rows: int = 5000
) -> PurgeReport:
    """Every table's rows older than ``age``."""
    return await purge_tables(engine, dict.fromkeys(_OLD_ROWS, age), batch_rows=batch_rows)


async def purge_tables(
    engine: AsyncEngine, ages: dict[str, timedelta], *, batch_rows: int = 5000
) -> PurgeReport:
    now = datetime.now(UTC)
    report = PurgeReport(cutoff=now - max(ages.values()))
    async with engine.connect() as lock_conn:
        if not await lock_conn.scalar(text(PURGE_LOCK)):
            report.ran = False
            return report
        await lock_conn.commit()
        try:
            for table, statement in _PURGE_BATCH.items():
                if table in ages:
                    report.deleted[table] = await _purge_table(
                        engine, table, statement, now - ages[table], batch_rows
                    )
        finally:
            await lock_conn.execute(text(PURGE_UNLOCK))
            await lock_conn.commit()
    return report


async def _purge_table(
    engine: AsyncEngine, table: str, statement: str, cutoff: datetime, batch_rows: int
) -> int:
    total = 0
    while True:
        async with engine.begin() as conn:
            result = await conn.execute(text(statement), {"cutoff": cutoff, "batch": batch_rows})
        deleted = result.rowcount
        total += deleted
        metrics.PURGED_ROWS.labels(table).inc(deleted)
        if deleted < batch_rows:
            return total
        await asyncio.sleep(0)  # let the webhooks' own work through between batches


async def purge_periodically(
    engine: AsyncEngine, ages: dict[str, timedelta], interval_s: float
) -> None:
    """The service's background purge (retention_ages): runs until cancelled."""
    failures = FailureLog(log, "retention purge")
    while True:
        try:
            report = await purge_tables(engine, ages)
            failures.succeeded()
            metrics.record_success("retention_purge")
            if report.ran and any(report.deleted.values()):
                log.info("purged old rows: %s", report.deleted)
        except Exception as error:  # a failed purge must not end the loop; next round retries
            failures.failed(error)
        await asyncio.sleep(interval_s)
