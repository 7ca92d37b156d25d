"""Every query of the read API, always filtered by the caller's scope.

Feeds (``*_changes``) serve only rows written by transactions that have finished
(``tx_id < xmin`` of the current snapshot) in ``(tx_id, seq)`` order: a transaction still
running can only ever commit rows *after* any cursor handed out, so paging from the start sees
every item exactly once, however commits interleave.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Select,
    delete,
    func,
    select,
    text,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db.tables import events, messages, mos, optouts, read_cursors
from app.rules.optouts import ACCOUNT_WIDE
from app.rules.scope import Reader, Scope

Row = dict[str, Any]
# The feeds: statuses (MT messages), replies (also read_cursors.feed's values) and the opt-out
# lists' numbers.
FeedKind = Literal["status", "mo", "optout"]

FINISHED_TX_HORIZON = text("pg_snapshot_xmin(pg_current_snapshot())::text::bigint")


def _in_scope(table: Any, scope: Scope) -> list[ColumnElement[bool]]:
    # Equality also keeps rows without a sub-account away from everyone but admins.
    return [] if scope.everything else [table.c.sub_account == scope.sub_account]


async def _rows(conn: AsyncConnection, statement: Select[Any]) -> list[Row]:
    return [dict(row._mapping) for row in await conn.execute(statement)]


async def find_statuses(
    conn: AsyncConnection, scope: Scope, ids: Sequence[str], correlation_ids: Sequence[str]
) -> list[Row]:
    conditions = []
    if ids:
        conditions.append(messages.c.id == func.any(list(ids)))
    if correlation_ids:
        conditions.append(messages.c.correlation_id == func.any(list(correlation_ids)))
    if not conditions:
        return []
    statement = (
        select(messages)
        .where(conditions[0] if len(conditions) == 1 else conditions[0] | conditions[1])
        .where(*_in_scope(messages, scope))
        .order_by(messages.c.first_seen_at, messages.c.id)
    )
    return await _rows(conn, statement)


async def get_status(conn: AsyncConnection, scope: Scope, message_id: str) -> Row | None:
    rows = await _rows(
        conn, select(messages).where(messages.c.id == message_id, *_in_scope(messages, scope))
    )
    return rows[0] if rows else None


async def status_history(conn: AsyncConnection, message_id: str, owner: str | None) -> list[Row]:
    """The message's callbacks and DLRs, as stored: its owner's and the account key's only
    (what another sub-account's key sends is refused, and this holds even where two first
    writes of one id raced)."""
    statement = (
        select(events)
        .where(
            events.c.message_id == message_id,
            events.c.kind != "mo",
            events.c.sub_account.is_(None) | (events.c.sub_account == owner),
        )
        .order_by(events.c.received_at, events.c.id)
    )
    return await _rows(conn, statement)


async def replies_to(
    conn: AsyncConnection, scope: Scope, message_id: str, owner: str | None
) -> list[Row]:
    """The replies that answer the message (its owner's, or of no sub-account: as counted in
    its reply count), as the caller may see them."""
    owned = [] if owner is None else [mos.c.sub_account.is_(None) | (mos.c.sub_account == owner)]
    statement = (
        select(mos)
        .where(mos.c.mt_id == message_id, *owned, *_in_scope(mos, scope))
        .order_by(mos.c.received_at, mos.c.seq)
    )
    return await _rows(conn, statement)


@dataclass(frozen=True, slots=True)
class FeedPosition:
    tx_id: int = 0
    seq: int = 0


# The largest sequence a cursor holds (app.rules.cursors): with it, a position stands after
# every item of its transaction.
_LAST_SEQ = 2**63 - 1


async def feed_end(conn: AsyncConnection) -> FeedPosition:
    """The position after everything a feed serves now, and before everything it will serve
    later: what feeds serve is written by transactions below the horizon, and every later one
    is at or above it. A new reader starts here to skip what is already stored."""
    horizon = (await conn.execute(select(FINISHED_TX_HORIZON))).scalar_one()
    return FeedPosition(int(horizon) - 1, _LAST_SEQ)


def _feed(kind: FeedKind) -> tuple[Any, Any]:
    if kind == "optout":
        return optouts, optouts.c.change_seq
    return (messages, messages.c.change_seq) if kind == "status" else (mos, mos.c.seq)


def _feed_lists(kind: FeedKind, scope: Scope) -> list[str | None]:
    """The sub-accounts whose rows a scope's feed holds, each read as its own index range; None:
    every row. A sub-account's opt-out feed also holds the account-wide list, which applies
    to it."""
    if scope.everything:
        return [None]
    if kind == "optout":
        return [scope.sub_account, ACCOUNT_WIDE]
    return [scope.sub_account]


def _feed_range(
    table: Any, seq: Any, sub_account: str | None, after: FeedPosition, limit: int
) -> Select[Any]:
    statement = select(table).where(
        tuple_(table.c.tx_id, seq) > tuple_(after.tx_id, after.seq),
        table.c.tx_id < FINISHED_TX_HORIZON,
    )
    if sub_account is not None:
        statement = statement.where(table.c.sub_account == sub_account)
    return statement.order_by(table.c.tx_id, seq).limit(limit)


def feed_statement(kind: FeedKind, scope: Scope, after: FeedPosition, limit: int) -> Select[Any]:
    """The query of one page of a feed: each list the scope reads by its own index range."""
    table, seq = _feed(kind)
    ranges = [_feed_range(table, seq, list_, after, limit) for list_ in _feed_lists(kind, scope)]
    if len(ranges) == 1:
        return ranges[0]
    # Each list's first ``limit`` items, then merged: one range over every list, filtered,
    # would read every other sub-account's changes since the position, on each read of a
    # reader that has nothing new.
    merged = union_all(*ranges).subquery()
    return select(merged).order_by(merged.c.tx_id, merged.c[seq.name]).limit(limit)


async def feed_page(
    conn: AsyncConnection, kind: FeedKind, scope: Scope, after: FeedPosition, limit: int
) -> tuple[list[Row], FeedPosition]:
    """Up to ``limit`` items after ``after``, and the position after the last one."""
    rows = await _rows(conn, feed_statement(kind, scope, after, limit))
    if not rows:
        return rows, after
    last = rows[-1]
    return rows, FeedPosition(last["tx_id"], last[_feed(kind)[1].name])


@dataclass(frozen=True, slots=True)
class ChangeWindow:
    """Statuses whose last change (``updated_at``) falls in ``[start, end]``."""

    start: datetime
    end: datetime

    def cursor_key(self) -> str:
        """Part of the list's position key: each window is read once, apart from the others."""
        return f"{WINDOW_MARK}{self.start.isoformat()}/{self.end.isoformat()}"


# What sets a window's position apart in read_cursors.scope (after the scope's own key).
WINDOW_MARK = " @window "
# A window's position, unused this long, is forgotten (a client that moves its window each
# call would otherwise leave a row per call behind).
WINDOW_CURSORS_KEPT = text("now() - interval '7 days'")


async def _windowed_page(
    conn: AsyncConnection, scope: Scope, after: FeedPosition, limit: int, window: ChangeWindow
) -> tuple[list[Row], FeedPosition]:
    """The status feed's next ``limit`` items whose change falls in the window. Fewer than
    ``limit`` means every finished item after ``after`` was looked at: the position moves to
    the feed's end, so the next call does not look at them again."""
    horizon = int((await conn.execute(select(FINISHED_TX_HORIZON))).scalar_one())
    statement = (
        select(messages)
        .where(
            tuple_(messages.c.tx_id, messages.c.change_seq) > tuple_(after.tx_id, after.seq),
            messages.c.tx_id < horizon,
            messages.c.updated_at.between(window.start, window.end),
            *_in_scope(messages, scope),
        )
        .order_by(messages.c.tx_id, messages.c.change_seq)
        .limit(limit)
    )
    rows = await _rows(conn, statement)
    if len(rows) < limit:
        return rows, FeedPosition(horizon - 1, _LAST_SEQ)
    return rows, FeedPosition(rows[-1]["tx_id"], rows[-1]["change_seq"])


@dataclass(frozen=True, slots=True)
class ConsumedPage:
    rows: list[Row]
    previous_read_at: datetime | None
    read_at: datetime


async def consume_feed(
    conn: AsyncConnection,
    reader: Reader,
    kind: FeedKind,
    scope: Scope,
    limit: int,
    window: ChangeWindow | None = None,
) -> ConsumedPage:
    """Consume-on-read (Wavy's ``list`` endpoints): the next page after this user's stored
    cursor, which moves past it in the same transaction. The cursor row is locked, so two
    concurrent callers get disjoint pages and nothing is skipped. With a window (statuses
    only), the page holds only changes in it, and the window has a cursor of its own."""
    key = {
        "user_id": reader.id,
        "feed": kind,
        "scope": scope.cursor_key + (window.cursor_key() if window else ""),
    }
    created = await conn.scalar(
        pg_insert(read_cursors)
        .values(**key)
        .on_conflict_do_nothing()
        .returning(read_cursors.c.user_id)
    )
    if window is not None and created is not None:  # a new window: forget the stale ones
        await conn.execute(
            delete(read_cursors).where(
                read_cursors.c.user_id == reader.id,
                read_cursors.c.feed == kind,
                read_cursors.c.scope.contains(WINDOW_MARK, autoescape=True),
                read_cursors.c.updated_at < WINDOW_CURSORS_KEPT,
            )
        )
    cursor = (
        await conn.execute(
            select(read_cursors.c.tx_id, read_cursors.c.seq, read_cursors.c.updated_at)
            .where(*(read_cursors.c[name] == value for name, value in key.items()))
            .with_for_update()
        )
    ).one()
    after = FeedPosition(cursor.tx_id, cursor.seq)
    if window is None:
        rows, position = await feed_page(conn, kind, scope, after, limit)
    else:
        rows, position = await _windowed_page(conn, scope, after, limit, window)
    read_at = (
        await conn.execute(
            update(read_cursors)
            .where(*(read_cursors.c[name] == value for name, value in key.items()))
            .values(tx_id=position.tx_id, seq=position.seq, updated_at=func.now())
            .returning(read_cursors.c.updated_at)
        )
    ).scalar_one()
    return ConsumedPage(rows=rows, previous_read_at=cursor.updated_at, read_at=read_at)


@dataclass(frozen=True, slots=True)
class MoWindow:
    """Replies with ``start <= received_at <= end``, and, with ``text``, only those whose
    message text contains it in any case (a keyword such as SAIR, Portuguese for STOP)."""

    start: datetime
    end: datetime
    text: str | None = None


async def mos_in_window(
    conn: AsyncConnection,
    scope: Scope,
    window: MoWindow,
    after: tuple[datetime, int] | None,
    limit: int,
) -> list[Row]:
    """The window's MOs, oldest first, ``limit`` at most."""
    conditions = [
        mos.c.received_at >= window.start,
        mos.c.received_at <= window.end,
        *_in_scope(mos, scope),
    ]
    if window.text is not None:
        # autoescape: the text's own % and _ match only themselves.
        conditions.append(mos.c.message_text.icontains(window.text, autoescape=True))
    if after is not None:
        conditions.append(tuple_(mos.c.received_at, mos.c.seq) > tuple_(*after))
    statement = select(mos).where(*conditions).order_by(mos.c.received_at, mos.c.seq).limit(limit)
    return await _rows(conn, statement)


async def mo_pages(
    engine: AsyncEngine, scope: Scope, window: MoWindow, page_rows: int
) -> AsyncIterator[list[Row]]:
    """Every MO of the window, oldest first, ``page_rows`` at a time (the first page may be
    empty), each page read on a connection checked out for it."""
    after: tuple[datetime, int] | None = None
    while True:
        async with engine.connect() as conn:
            rows = await mos_in_window(conn, scope, window, after, page_rows)
        yield rows
        if len(rows) < page_rows:
            return
        after = (rows[-1]["received_at"], rows[-1]["seq"])


@dataclass(frozen=True, slots=True)
class StatusFilters:
    correlation_id: str | None = None
    destination: str | None = None
    carrier_name: str | None = None
    campaign_id: str | None = None
    sent_status_code: int | None = None
    delivered_status_code: int | None = None
    first_seen_from: datetime | None = None
    first_seen_to: datetime | None = None


async def list_statuses(
    conn: AsyncConnection,
    scope: Scope,
    filters: StatusFilters,
    before: tuple[datetime, str] | None,
    limit: int,
) -> list[Row]:
    """Newest first (by first-seen time, then id), filtered, ``limit`` at most."""
    conditions: list[ColumnElement[bool]] = list(_in_scope(messages, scope))
    for name in (
        "correlation_id",
        "destination",
        "carrier_name",
        "campaign_id",
        "sent_status_code",
        "delivered_status_code",
    ):
        value = getattr(filters, name)
        if value is not None:
            conditions.append(messages.c[name] == value)
    if filters.first_seen_from is not None:
        conditions.append(messages.c.first_seen_at >= filters.first_seen_from)
    if filters.first_seen_to is not None:
        conditions.append(messages.c.first_seen_at <= filters.first_seen_to)
    if before is not None:
        conditions.append(tuple_(messages.c.first_seen_at, messages.c.id) < tuple_(*before))
    statement = (
        select(messages)
        .where(*conditions)
        .order_by(messages.c.first_seen_at.desc(), messages.c.id.desc())
        .limit(limit)
    )
    return await _rows(conn, statement)


async def status_pages(
    engine: AsyncEngine, scope: Scope, filters: StatusFilters, page_rows: int
) -> AsyncIterator[list[Row]]:
    """Every status of the listing, newest first, ``page_rows`` at a time (the first page may
    be empty). Each page is read on a connection checked out for it: a slow consumer holds
    no connection and no snapshot between pages."""
    before: tuple[datetime, str] | None = None
    while True:
        async with engine.connect() as conn:
            rows = await list_statuses(conn, scope, filters, before, page_rows)
        yield rows
        if len(rows) < page_rows:
            return
        before = (rows[-1]["first_seen_at"], rows[-1]["id"])
