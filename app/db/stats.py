"""The stats API's one query: rollup counts in a window, scoped, summed per group. It reads
``stats_rollup`` only (kept by triggers, see migration 0004), never the raw tables, so its cost
follows the number of hours, carriers and campaigns in the window, not of messages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, func, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.tables import stats_rollup
from app.rules.delivery_stats import GroupBy
from app.rules.scope import Scope


def _group_key(group_by: GroupBy) -> ColumnElement[str]:
    utc_hour = func.timezone("UTC", stats_rollup.c.hour)
    if group_by == "hour":
        return func.to_char(utc_hour, literal('YYYY-MM-DD"T"HH24:00:00"Z"'))
    if group_by == "day":
        return func.to_char(utc_hour, literal("YYYY-MM-DD"))
    if group_by == "carrier":
        return stats_rollup.c.carrier_name
    return stats_rollup.c.campaign_id


@dataclass(frozen=True, slots=True)
class StatsWindow:
    first_hour: datetime
    last_hour: datetime
    campaign_id: str | None = None


async def rollup_counts(
    conn: AsyncConnection, scope: Scope, window: StatsWindow, group_by: GroupBy
) -> list[tuple[str, str, int, int]]:
    """(group key, metric, value, count) for every non-zero count in the window."""
    key = _group_key(group_by).label("key")
    conditions = [
        stats_rollup.c.hour >= window.first_hour,
        stats_rollup.c.hour <= window.last_hour,
    ]
    if not scope.everything:
        conditions.append(stats_rollup.c.sub_account == scope.sub_account)
    if window.campaign_id is not None:
        conditions.append(stats_rollup.c.campaign_id == window.campaign_id)
    total = func.sum(stats_rollup.c.count)
    query = (
        select(key, stats_rollup.c.metric, stats_rollup.c.value, total)
        .where(and_(*conditions))
        .group_by(key, stats_rollup.c.metric, stats_rollup.c.value)
        .having(total != 0)
        .order_by(key)
    )
    rows = await conn.execute(query)
    return [(row[0], row[1], row[2], int(row[3])) for row in rows]
