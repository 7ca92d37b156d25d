"""Every query of the opt-out lists: recording changes (from the writer's batches, by hand, from
an import), checking numbers, the listing, a number's history, the keywords and their cache,
and the figures the stats show. The rules are app.rules.optouts'.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from sqlalchemy import and_, delete, func, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db.engine import driver_connection
from app.db.json_batches import Placeholder, dollar, json_columns, rows_from, typed
from app.db.tables import (
    optout_changes,
    optout_keywords,
    optout_transitions,
    optouts,
    table_columns,
)
from app.rules.optouts import (
    ACCOUNT_WIDE,
    DayChanges,
    KeywordAction,
    KeywordBook,
    KeywordRule,
    OptoutChange,
    OptoutMatcher,
)

Row = dict[str, Any]

# ---------------------------------------------------------------------------- recording

# What a change sends (OptoutChange's fields, the history's columns less what PostgreSQL
# fills in), each as one JSON array, as the writer sends its batches (app.db.ingest).
_CHANGE_COLUMNS = table_columns(optout_changes, leaving_out=("id", "recorded_at"))


def _apply_sql(placeholder: Placeholder) -> str:
    """Record a batch of changes in the history, and let each decide its number's place in
    its list when it is later than the change that decided it so far. A retried reply or
    list status is recorded once (the history's unique indexes). The feed's order moves only
    when a number's state changes."""
    typed_changes = ", ".join(
        typed(name, kind, "u") for name, kind in _CHANGE_COLUMNS.items() if name != "sub_account"
    )
    columns = ", ".join(_CHANGE_COLUMNS)
    same = "o.opted_out = EXCLUDED.opted_out"
    kept = {
        name: f"CASE WHEN {same} THEN o.{name} ELSE EXCLUDED.{name} END"
        for name in ("since", "source", "keyword", "reason")
    }
    return (
        # A 204 sent with the account's own key names no list: its message's sub-account's.
        "WITH batch AS (SELECT COALESCE(u.sub_account, "  # noqa: S608 - constant names only
        "(SELECT m.sub_account FROM messages AS m WHERE m.id = u.message_id), '') "
        f"AS sub_account, {typed_changes} FROM {rows_from(_CHANGE_COLUMNS, 'u', 1, placeholder)}), "
        f"recorded AS (INSERT INTO optout_changes ({columns}) SELECT {columns} FROM batch "
        "ON CONFLICT DO NOTHING RETURNING id, sub_account, e164, opted_out, at, source, "
        "keyword, reason), "
        "latest AS (SELECT DISTINCT ON (sub_account, e164) * FROM recorded "
        "ORDER BY sub_account, e164, at DESC, id DESC), "
        "decided AS (INSERT INTO optouts AS o (sub_account, e164, opted_out, since, source, "
        "keyword, reason, decided_at, change_id) "
        "SELECT sub_account, e164, opted_out, at, source, keyword, reason, at, id FROM latest "
        "ORDER BY sub_account, e164 "
        "ON CONFLICT (sub_account, e164) DO UPDATE SET opted_out = EXCLUDED.opted_out, "
        "was_opted_out = o.opted_out, "
        + ", ".join(f"{name} = {value}" for name, value in kept.items())
        + ", decided_at = EXCLUDED.decided_at, change_id = EXCLUDED.change_id, "  # noqa: S608
        f"change_seq = CASE WHEN {same} THEN o.change_seq "
        "ELSE nextval('optouts_change_seq') END, "
        f"tx_id = CASE WHEN {same} THEN o.tx_id "
        "ELSE pg_current_xact_id()::text::bigint END "
        "WHERE (EXCLUDED.decided_at, EXCLUDED.change_id) > (o.decided_at, o.change_id) "
        "RETURNING sub_account, since, opted_out, was_opted_out), "
        # The row lock the upsert took makes was_opted_out the state this change replaced.
        "moved AS (INSERT INTO optout_transitions (sub_account, at, effect) "
        "SELECT sub_account, since, CASE WHEN opted_out THEN 1 ELSE -1 END FROM decided "
        "WHERE opted_out IS DISTINCT FROM COALESCE(was_opted_out, false)) "
        "SELECT (SELECT count(*) FROM recorded) AS recorded, "
        "(SELECT count(*) FROM decided) AS decided, "
        "(SELECT count(*) FROM decided "
        " WHERE opted_out IS DISTINCT FROM COALESCE(was_opted_out, false)) AS changed"
    )


APPLY_CHANGES = _apply_sql(dollar)
_APPLY_CHANGES_BOUND = text(_apply_sql(lambda n: f":c{n}"))


@dataclass(frozen=True, slots=True)
class Applied:
    recorded: int  # new entries in the history (a retry is not one)
    decided: int  # numbers whose place in a list they decided
    changed: int  # of those, the numbers whose state they changed (put on, or taken off)


async def apply_changes_in_batch(
    conn: asyncpg.Connection, changes: Sequence[OptoutChange]
) -> Applied:
    """The writer's way, on its own connection and in its batch's transaction."""
    row = await conn.fetchrow(APPLY_CHANGES, *json_columns(changes, _CHANGE_COLUMNS))
    assert row is not None
    return Applied(row["recorded"], row["decided"], row["changed"])


async def apply_changes(conn: AsyncConnection, changes: Sequence[OptoutChange]) -> Applied:
    arrays = json_columns(changes, _CHANGE_COLUMNS)
    row = (
        await conn.execute(
            _APPLY_CHANGES_BOUND, {f"c{n}": value for n, value in enumerate(arrays, 1)}
        )
    ).one()
    return Applied(row.recorded, row.decided, row.changed)


# ---------------------------------------------------------------------------- keywords

# Keywords in memory are reloaded at least this often, and at once when PostgreSQL notifies
# that they changed (migration 0015).
KEYWORDS_TTL_S = 60.0
_LOAD_RULES = "SELECT sub_account, keyword, action FROM optout_keywords"


class KeywordCache:
    """The keywords in force, for the writer: reloaded on its own connection when they changed
    (a notification) or have aged, so that no reply costs a query."""

    def __init__(self, region: str, *, enabled: bool = True) -> None:
        self._region = region
        # Off (WAVY_OPTOUTS_FROM_TRAFFIC): nothing to load, ever.
        self._off = None if enabled else OptoutMatcher(KeywordBook(), region, enabled=False)
        self._matcher: OptoutMatcher | None = None
        self._loaded_at = float("-inf")
        # Bumped by forget(): a reload that began before a change may have read the old
        # keywords, and must not pass for fresh (as app.db.key_registry's).
        self._generation = 0

    def forget(self) -> None:
        self._generation += 1
        self._loaded_at = float("-inf")

    async def matcher(self, conn: asyncpg.Connection) -> OptoutMatcher:
        if self._off is not None:
            return self._off
        if self._matcher is None or time.monotonic() - self._loaded_at > KEYWORDS_TTL_S:
            generation, loaded_at = self._generation, time.monotonic()
            book = _book_of(await conn.fetch(_LOAD_RULES))
            self._matcher = OptoutMatcher(book, self._region)
            if generation == self._generation:
                self._loaded_at = loaded_at
        return self._matcher


def _book_of(rows: Iterable[Any]) -> KeywordBook:
    return KeywordBook(KeywordRule(r["sub_account"], r["keyword"], r["action"]) for r in rows)


async def keyword_book(conn: AsyncConnection) -> KeywordBook:
    rows = await conn.execute(text(_LOAD_RULES))
    return _book_of(row._mapping for row in rows)


async def set_keyword(
    conn: AsyncConnection, sub_account: str, keyword: str, action: KeywordAction, by: str
) -> None:
    statement = pg_insert(optout_keywords).values(
        sub_account=sub_account, keyword=keyword, action=action, created_by=by
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["sub_account", "keyword"],
            set_={"action": action, "created_by": by, "created_at": func.now()},
        )
    )


async def unset_keyword(conn: AsyncConnection, sub_account: str, keyword: str) -> bool:
    result = await conn.execute(
        delete(optout_keywords).where(
            optout_keywords.c.sub_account == sub_account, optout_keywords.c.keyword == keyword
        )
    )
    return bool(result.rowcount)


# ---------------------------------------------------------------------------- reading


def lists_of(sub_account: str | None) -> list[str]:
    """The lists that apply to a sender: its sub-account's and the account-wide one."""
    return [ACCOUNT_WIDE] if not sub_account else [sub_account, ACCOUNT_WIDE]


# The numbers travel as one JSON text: asyncpg's encoding of a 1000-element array checks every
# element against collections.abc, which cost more than the lookup itself. Plain asyncpg SQL: a
# send's check runs it on a lane's own connection (app.db.sending.Batched), past SQLAlchemy's
# per-statement layer.
_OPTED_OUT = (
    "SELECT sub_account, e164, since, keyword, source FROM optouts "
    "WHERE e164 = ANY(ARRAY(SELECT json_array_elements_text(CAST($1 AS json)))) "
    "AND opted_out {lists}"
    "ORDER BY sub_account = '', sub_account"
)
_OPTED_OUT_OF_LISTS = _OPTED_OUT.format(lists="AND sub_account = ANY($2::text[]) ")
_OPTED_OUT_OF_ANY_LIST = _OPTED_OUT.format(lists="")


async def opted_out_entries(
    conn: AsyncConnection, lists: Sequence[str] | None, numbers: Sequence[str]
) -> dict[str, list[Row]]:
    """Each number (E.164) that some of ``lists`` (None: any list) holds opted out, with every
    entry that says so: sub-accounts' lists first, the account-wide one last."""
    return await opted_out_entries_on(await driver_connection(conn), lists, numbers)


async def opted_out_entries_on(
    conn: asyncpg.Connection, lists: Sequence[str] | None, numbers: Sequence[str]
) -> dict[str, list[Row]]:
    """``opted_out_entries`` on asyncpg's own connection."""
    if not numbers:
        return {}
    encoded = orjson.dumps(list(numbers)).decode()
    if lists is None:
        rows = await conn.fetch(_OPTED_OUT_OF_ANY_LIST, encoded)
    else:
        rows = await conn.fetch(_OPTED_OUT_OF_LISTS, encoded, list(lists))
    found: dict[str, list[Row]] = {}
    for row in rows:
        found.setdefault(row["e164"], []).append(dict(row))
    return found


async def entries_of(conn: AsyncConnection, lists: Sequence[str] | None, e164: str) -> list[Row]:
    """Where the number stands in each list (``None``: every list)."""
    statement = select(optouts).where(optouts.c.e164 == e164)
    if lists is not None:
        statement = statement.where(optouts.c.sub_account == func.any(list(lists)))
    rows = await conn.execute(statement.order_by(optouts.c.sub_account))
    return [dict(row._mapping) for row in rows]


async def history_of(conn: AsyncConnection, lists: Sequence[str] | None, e164: str) -> list[Row]:
    """Every change to the number in these lists, oldest first."""
    statement = select(optout_changes).where(optout_changes.c.e164 == e164)
    if lists is not None:
        statement = statement.where(optout_changes.c.sub_account == func.any(list(lists)))
    rows = await conn.execute(statement.order_by(optout_changes.c.at, optout_changes.c.id))
    return [dict(row._mapping) for row in rows]


@dataclass(frozen=True, slots=True)
class ListCursor:
    """Where a listing page ends: the last entry's (since, list, number)."""

    since: datetime
    sub_account: str
    e164: str


_LISTED = (
    optouts.c.sub_account,
    optouts.c.e164,
    optouts.c.since,
    optouts.c.source,
    optouts.c.keyword,
    optouts.c.reason,
)


async def list_opted_out(
    conn: AsyncConnection, lists: Sequence[str] | None, before: ListCursor | None, limit: int
) -> list[Row]:
    """The numbers opted out, newest first: of ``lists``, or of every list (``None``)."""
    order = (optouts.c.since.desc(), optouts.c.sub_account.desc(), optouts.c.e164.desc())
    if lists is None:
        statement = select(*_LISTED).where(optouts.c.opted_out)
        if before is not None:
            statement = statement.where(
                tuple_(optouts.c.since, optouts.c.sub_account, optouts.c.e164)
                < tuple_(before.since, before.sub_account, before.e164)
            )
        rows = await conn.execute(statement.order_by(*order).limit(limit))
        return [dict(row._mapping) for row in rows]
    # One ordered index range per list, merged: each uses (sub_account, since, e164).
    found: list[Row] = []
    for sub_account in lists:
        statement = select(*_LISTED).where(
            optouts.c.opted_out, optouts.c.sub_account == sub_account
        )
        if before is not None:
            statement = statement.where(_before_in_list(sub_account, before))
        rows = await conn.execute(statement.order_by(*order).limit(limit))
        found.extend(dict(row._mapping) for row in rows)
    found.sort(key=lambda row: (row["since"], row["sub_account"], row["e164"]), reverse=True)
    return found[:limit]


def _before_in_list(sub_account: str, before: ListCursor) -> Any:
    """(since, sub_account, e164) < the cursor's, for rows of one list."""
    if sub_account < before.sub_account:
        return optouts.c.since <= before.since
    if sub_account > before.sub_account:
        return optouts.c.since < before.since
    return tuple_(optouts.c.since, optouts.c.e164) < tuple_(before.since, before.e164)


async def opted_out_pages(
    engine: AsyncEngine, lists: Sequence[str] | None, page_rows: int
) -> AsyncIterator[list[Row]]:
    """The whole listing, page by page (the CSV export; the first page may be empty), a
    connection per page."""
    before: ListCursor | None = None
    while True:
        async with engine.connect() as conn:
            rows = await list_opted_out(conn, lists, before, page_rows)
        yield rows
        if len(rows) < page_rows:
            return
        last = rows[-1]
        before = ListCursor(last["since"], last["sub_account"], last["e164"])


# ---------------------------------------------------------------------------- figures

# Opt-outs counted by the stats: people's replies that put their number on a list.
_COUNTED = and_(optout_changes.c.source == "mo", optout_changes.c.opted_out)


async def daily_figures(
    conn: AsyncConnection, lists: Sequence[str] | None, start: datetime, end: datetime, tz: str
) -> tuple[int, list[DayChanges]]:
    """The lists' size at ``start``, and per day (in ``tz``) of [start, end] that saw a
    change: the numbers that opted out, and back in (from the transitions, not the history:
    no replay of each number's changes)."""
    moved = optout_transitions.c
    scope = [] if lists is None else [moved.sub_account == func.any(list(lists))]
    before = await conn.execute(
        select(func.coalesce(func.sum(moved.effect), 0)).where(moved.at < start, *scope)
    )
    day = func.date_trunc("day", func.timezone(tz, moved.at)).label("day")
    rows = await conn.execute(
        select(
            day,
            func.count().filter(moved.effect > 0),
            func.count().filter(moved.effect < 0),
        )
        .where(moved.at >= start, moved.at <= end, *scope)
        .group_by(day)
        .order_by(day)
    )
    changes = [DayChanges(row[0].date(), int(row[1]), int(row[2])) for row in rows]
    return int(before.scalar_one()), changes
