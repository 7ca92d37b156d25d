"""The delivery stats' database side: the stats API's one query (rollup counts in a window,
scoped, summed per group), the fold that keeps the rollup compact, and the operator's check
of the rollup against the stored rows (``stats verify`` / ``stats repair``).

The triggers of migrations 0004, 0005 and 0010 append each statement's contributions to
``stats_deltas``; ``fold_stats_deltas`` moves them into ``stats_rollup`` every few seconds.
Reads add up both tables, never the raw ones, so their cost follows the number of hours,
carriers and campaigns in the window (plus a few seconds of deltas), not of messages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, and_, case, func, insert, select, text, union_all
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app import metrics
from app.db.engine import refused_data, sqlstate
from app.db.tables import (
    messages,
    mos,
    optout_changes,
    reply_answers,
    stats_deltas,
    stats_rollup,
)
from app.errors import UnknownTimeZone
from app.logs import FailureLog
from app.rules.delivery_stats import NO_MESSAGE_KEY, OPTOUTS, GroupBy
from app.rules.scope import Scope

log = logging.getLogger(__name__)

# The rollup as it stands: folded rows and the deltas not folded yet. The window's conditions
# reach into both branches (PostgreSQL pushes them down), so the rollup's indexes still serve.
_COLUMNS = ("sub_account", "hour", "campaign_id", "carrier_name", "metric", "value", "count")
current_rollup = union_all(
    select(*(stats_rollup.c[name] for name in _COLUMNS)),
    select(*(stats_deltas.c[name] for name in _COLUMNS)),
).subquery("current_rollup")

INVALID_PARAMETER_VALUE = "22023"  # PostgreSQL's answer to a time zone it does not know

# Only one fold at a time (workers and replicas alike); one that finds it taken skips a turn.
FOLD_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('wavy-webhooks stats fold'))"
# Moves every committed delta into the rollup in one statement, the rollup's rows in key order.
# Writers never touch stats_rollup, so nothing else waits on these row locks.
_KEY = ", ".join(_COLUMNS[:-1])
FOLD = f"""
    WITH folded AS (DELETE FROM stats_deltas RETURNING {_KEY}, count)
    INSERT INTO stats_rollup AS s ({_KEY}, count)
    SELECT {_KEY}, sum(count) FROM folded GROUP BY {_KEY} HAVING sum(count) <> 0
    ORDER BY {_KEY}
    ON CONFLICT ON CONSTRAINT pk_stats_rollup DO UPDATE SET count = s.count + EXCLUDED.count
"""  # noqa: S608 - constant names only
FOLD_INTERVAL_S = 2.0


def _group_key(group_by: GroupBy, time_zone: str) -> ColumnElement[Any]:
    """What rows are grouped by in SQL: raw values (formatting a time per rollup row costs more
    than the whole aggregation); ``group_label`` turns each group's key into text. A day is
    the caller's: the one its hours start in, in ``time_zone``."""
    if group_by == "hour":
        return current_rollup.c.hour
    if group_by == "day":
        return func.date_trunc("day", func.timezone(time_zone, current_rollup.c.hour))
    if group_by == "carrier":
        return current_rollup.c.carrier_name
    if group_by == "subAccount":
        return current_rollup.c.sub_account
    return current_rollup.c.campaign_id


def group_label(group_by: GroupBy, key: Any, time_zone: str = "UTC") -> str:
    if group_by == "hour" and time_zone == "UTC":
        return f"{key.astimezone(UTC):%Y-%m-%dT%H:00:00Z}"
    if group_by == "hour":
        local: datetime = key.astimezone(ZoneInfo(time_zone))
        return local.isoformat(timespec="seconds")
    if group_by == "day":
        return f"{key:%Y-%m-%d}"
    return str(key)


@dataclass(frozen=True, slots=True)
class StatsWindow:
    first_hour: datetime
    last_hour: datetime
    campaign_id: str | None = None
    # An IANA name (checked by the API): where days begin, and how hours are labelled.
    time_zone: str = "UTC"


async def rollup_counts(
    conn: AsyncConnection, scope: Scope, window: StatsWindow, group_by: GroupBy
) -> list[tuple[str, str, int, int]]:
    """(group key, metric, value, count) for every non-zero count in the window."""
    rollup = current_rollup.c
    key = _group_key(group_by, window.time_zone).label("key")
    conditions = [rollup.hour >= window.first_hour, rollup.hour <= window.last_hour]
    if not scope.everything:
        conditions.append(rollup.sub_account == scope.sub_account)
    if window.campaign_id is not None:
        conditions.append(rollup.campaign_id == window.campaign_id)
    total = func.sum(rollup.count)
    query = (
        select(key, rollup.metric, rollup.value, total)
        .where(and_(*conditions))
        .group_by(key, rollup.metric, rollup.value)
        .having(total != 0)
        .order_by(key)
    )
    try:
        rows = await conn.execute(query)
    except DBAPIError as error:
        # Python's tz database knew the zone (the API checked), the server's may be older.
        if sqlstate(error) == INVALID_PARAMETER_VALUE:
            raise UnknownTimeZone(window.time_zone) from None
        raise
    return [
        (group_label(group_by, row[0], window.time_zone), row[1], row[2], int(row[3]))
        for row in rows
    ]


async def optout_counts(
    conn: AsyncConnection, scope: Scope, window: StatsWindow, group_by: GroupBy
) -> list[tuple[str, str, int, int]]:
    """The opt-outs replies made in the window, as rollup rows (metric ``optouts``): counted
    in the hour of the reply, for the campaign of the message it answers and its carrier.
    Read from the opt-out history, which holds one row per reply that opted out (few, next
    to the messages): no rollup to keep for them."""
    change, reply, message = optout_changes.c, mos.c, messages.c
    by_campaign = group_by == "campaign" or window.campaign_id is not None
    keys: dict[GroupBy, Any] = {
        "hour": func.date_trunc("hour", change.at, "UTC"),
        "day": func.date_trunc("day", func.timezone(window.time_zone, change.at)),
        "carrier": func.coalesce(reply.carrier_name, ""),
        "campaign": case(
            (message.id.is_(None), NO_MESSAGE_KEY), else_=func.coalesce(message.campaign_id, "")
        ),
        "subAccount": change.sub_account,
    }
    key = keys[group_by].label("key")
    joined: Any = optout_changes
    if group_by == "carrier" or by_campaign:
        joined = joined.outerjoin(mos, reply.id == change.mo_id)
    if by_campaign:
        joined = joined.outerjoin(
            messages,
            and_(
                message.id == reply.mt_id,
                text(reply_answers("mos.sub_account", "messages.sub_account")),
            ),
        )
    conditions = [change.source == "mo", change.opted_out, change.at >= window.first_hour]
    with contextlib.suppress(OverflowError):  # the window's last hour is 9999's last: no end
        conditions.append(change.at < window.last_hour + timedelta(hours=1))
    if not scope.everything:
        conditions.append(change.sub_account == scope.sub_account)
    if window.campaign_id is not None:
        conditions.append(message.campaign_id == window.campaign_id)
    query = select(key, func.count()).select_from(joined).where(and_(*conditions)).group_by(key)
    rows = await conn.execute(query)
    return [
        (group_label(group_by, row[0], window.time_zone), OPTOUTS, 0, int(row[1])) for row in rows
    ]


# One group's deltas, folded alone (the fallback below); the key's parameters are :k0...
_GROUP = " AND ".join(f"{name} = :k{n}" for n, name in enumerate(_COLUMNS[:-1]))
FOLD_GROUP = FOLD.replace(
    "DELETE FROM stats_deltas RETURNING",
    f"DELETE FROM stats_deltas WHERE {_GROUP} RETURNING",  # noqa: S608 - constant names only
)
QUARANTINE_GROUP = f"""
    WITH moved AS (DELETE FROM stats_deltas WHERE {_GROUP} RETURNING {_KEY}, count)
    INSERT INTO stats_quarantine ({_KEY}, count, error)
    SELECT {_KEY}, sum(count), :error FROM moved GROUP BY {_KEY}
"""  # noqa: S608 - constant names only
DELTA_GROUPS = f"SELECT DISTINCT {_KEY} FROM stats_deltas"  # noqa: S608


async def fold_stats_deltas(engine: AsyncEngine) -> int | None:
    """Move the committed deltas into the rollup. Returns how many rollup rows changed, or None
    when another fold was running. When the rollup refuses some group (a value too wide for its
    index, a count past its type), the groups are folded one by one, and those refused move to
    stats_quarantine: one poisoned group never stops the fold for everyone."""
    try:
        async with engine.begin() as conn:
            if not await conn.scalar(text(FOLD_LOCK)):
                return None
            result = await conn.execute(text(FOLD))
        changed: int = result.rowcount
        return changed
    except DBAPIError as error:
        if not refused_data(error):
            raise
    return await _fold_group_by_group(engine)


async def _fold_group_by_group(engine: AsyncEngine) -> int | None:
    changed = 0
    async with engine.begin() as conn:
        if not await conn.scalar(text(FOLD_LOCK)):
            return None
        for group in (await conn.execute(text(DELTA_GROUPS))).all():
            key = {f"k{n}": value for n, value in enumerate(group)}
            try:
                async with conn.begin_nested():
                    changed += (await conn.execute(text(FOLD_GROUP), key)).rowcount
            except DBAPIError as error:
                if not refused_data(error):
                    raise
                log.error("stats fold: a group the rollup cannot store was quarantined: %s", error)
                metrics.STATS_QUARANTINED.inc()
                await conn.execute(text(QUARANTINE_GROUP), {**key, "error": str(error.orig)})
    return changed


async def fold_stats_periodically(engine: AsyncEngine, interval_s: float = FOLD_INTERVAL_S) -> None:
    """The service's background fold: runs until cancelled."""
    failures = FailureLog(log, "stats fold")
    while True:
        try:
            await fold_stats_deltas(engine)
            failures.succeeded()
            metrics.record_success("stats_fold")
        except Exception as error:  # a failed fold must not end the loop; deltas wait for the next
            failures.failed(error)
        await asyncio.sleep(interval_s)


# The rollup as kept (folded rows plus deltas) against the same figures counted from the
# stored messages and replies by the triggers' own functions, in one statement: one snapshot,
# in which every committed change is in the tables and its delta alike, so the two agree
# exactly even while the service writes.
ROLLUP_DIFFERENCES = f"""
    WITH kept AS (
        SELECT {_KEY}, sum(count) AS count
        FROM (SELECT {_KEY}, count FROM stats_rollup
              UNION ALL SELECT {_KEY}, count FROM stats_deltas) AS r
        GROUP BY {_KEY}),
    counted AS (
        SELECT {_KEY}, sum(weight) AS count
        FROM (SELECT c.* FROM messages AS m, LATERAL stats_message_contributions(m) AS c
              UNION ALL
              SELECT c.* FROM mos AS r, LATERAL stats_mo_contributions(r) AS c) AS d
        GROUP BY {_KEY})
    SELECT {_KEY}, COALESCE(kept.count, 0) AS kept, COALESCE(counted.count, 0) AS counted
    FROM kept FULL JOIN counted USING ({_KEY})
    WHERE COALESCE(kept.count, 0) <> COALESCE(counted.count, 0)
    ORDER BY {_KEY}
"""  # noqa: S608 - constant names only
REPAIR_LOCK = "SELECT pg_advisory_xact_lock(hashtext('wavy-webhooks stats repair'))"


@dataclass(frozen=True, slots=True)
class RollupDifference:
    """A rollup count that is not what the stored rows add up to."""

    sub_account: str
    hour: datetime
    campaign_id: str
    carrier_name: str
    metric: str
    value: int
    kept: int
    counted: int


async def rollup_differences(conn: AsyncConnection) -> list[RollupDifference]:
    """Every rollup count that differs from a count of the stored rows (none, normally). Reads
    every message and reply: an operator's check, not a request's."""
    rows = await conn.execute(text(ROLLUP_DIFFERENCES))
    return [RollupDifference(*row) for row in rows]


async def repair_rollup(conn: AsyncConnection) -> int:
    """Correct every count ``rollup_differences`` would list, as deltas; returns how many.

    Safe while the service runs, and exact: whatever writers commit after the differences'
    snapshot adds to the rows and to the rollup alike, so each difference still holds when
    its correction lands. The long read writes nothing, so only the short insert holds the
    safe feeds back (they wait for older write transactions), and no writer waits at all."""
    # Two repairs at once would each add the same corrections: the second waits, then sees
    # the first's (its statement's snapshot is taken after the lock).
    await conn.execute(text(REPAIR_LOCK))
    wrong = await rollup_differences(conn)
    if wrong:
        await conn.execute(
            insert(stats_deltas),
            [
                {name: getattr(d, name) for name in _COLUMNS[:-1]} | {"count": d.counted - d.kept}
                for d in wrong
            ],
        )
    return len(wrong)
