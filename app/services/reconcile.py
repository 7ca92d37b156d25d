"""Reconciliation for the HTTP API and the CLI alike: the overdue listing (scoped like every
read), the counts a dashboard shows, and one pass run now."""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import reconcile as queries
from app.db.writer import BatchWriter
from app.outbound.reconciler import Pass, Reconciler, ages_of
from app.rules.answers import iso, overdue_out
from app.rules.cursors import read_time_cursor_str, time_cursor
from app.rules.reconcile import OverdueKind
from app.rules.scope import Scope
from app.settings import Settings

# "Today" for the counts: the day in UTC, named in every answer that counts by it.
TIME_ZONE = "UTC"


async def overdue(
    engine: AsyncEngine,
    settings: Settings,
    scope: Scope,
    kind: OverdueKind,
    limit: int,
    cursor: str | None,
) -> dict[str, Any]:
    """The messages whose ``kind`` of status is overdue in the scope, longest waiting first;
    raises BadCursor for a cursor this API did not hand out."""
    after = read_time_cursor_str(cursor) if cursor else None
    now = datetime.now(UTC)
    async with engine.connect() as conn:
        total, rows = await queries.overdue_page(
            conn, scope, kind, now, ages_of(settings), after, limit + 1
        )
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if rows else None
    return {
        "total": total,
        "kind": kind,
        "subAccount": scope.sub_account,
        "items": [overdue_out(row) for row in rows],
        "next": time_cursor(last["waiting_since"], last["mt_id"]) if more and last else None,
    }


async def summary(engine: AsyncEngine, settings: Settings, scope: Scope) -> dict[str, Any]:
    """Whether Wavy is asked, what is overdue now, given up, and recovered today."""
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date(), time(0), UTC)
    async with engine.connect() as conn:
        found = await queries.counts(conn, scope, now, ages_of(settings), midnight)
        pace = await queries.state(conn) if scope.everything else {}
    answer: dict[str, Any] = {
        "enabled": settings.reconciles,
        "subAccount": scope.sub_account,
        "timeZone": TIME_ZONE,
        "overdue": {kind: found[kind]["overdue"] for kind in ("callback", "dlr")},
        "givenUp": {kind: found[kind]["givenUp"] for kind in ("callback", "dlr")},
        "recoveredToday": found["recovered"],
        "callbackAfterSeconds": settings.reconcile_callback_after,
        "dlrAfterSeconds": settings.reconcile_dlr_after,
        "window": settings.reconcile_window,
        "noDlrCarriers": list(settings.reconcile_no_dlr_carriers),
        "maxRequestsPerSecond": settings.reconcile_max_rps,
    }
    if pace:  # the pace is the account's, for admins only
        answer["nextAskAt"] = iso(pace["next_ask_at"])
        answer["backoffSeconds"] = pace["backoff_s"]
        answer["lookedUntil"] = {
            "callback": iso(pace["callback_mark_at"]),
            "dlr": iso(pace["dlr_mark_at"]),
        }
    return answer


async def run_now(engine: AsyncEngine, writer: BatchWriter, settings: Settings) -> Pass:
    """One pass now, sharing the pace with the running workers."""
    reconciler = Reconciler(engine, writer, settings)
    try:
        return await reconciler.run_once()
    finally:
        await reconciler.stop()
