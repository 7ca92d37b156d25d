"""The stats API's one query: rollup counts in a window, scoped, summed per group. It reads
``stats_rollup`` only (kept by triggers, see migrations 0004 and 0005), never the raw tables,
so its cost follows the number of hours, carriers and campaigns in the window, not of
messages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.tables import stats_rollup
from app.rules.delivery_stats import GroupBy
from app.rules.scope import Scope


def _group_key(group_by: GroupBy) -> ColumnElement[Any]:
    """What rows are grouped by in SQL: raw values (formatting a time per rollup row costs more
    than the whole aggregation); ``group_label`` turns each group's key into text."""
    if group_by == "hour":
        return stats_rollup.c.hour
    if group_by == "day":
        return func.date_trunc("day", func.timezone("UTC", stats_rollup.c.hour))
    if group_by == "carrier":
        return stats_rollup.c.carrier_name
    return stats_rollup.c.campaign_id


def group_label(group_by: GroupBy, key: Any) -> str:
    if group_by == "hour":
        return f"{key.astimezone(UTC):%Y-%m-%dT%H:00:00Z}"
    if group_by == "day":
        return f"{key:%Y-%m-%d}"
    return str(key)


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
    return [(group_label(group_by, row[0]), row[1], row[2], int(row[3])) for row in rows]
