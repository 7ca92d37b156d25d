"""What the read routes share about paging: the limit parameter, a window's default start,
cursor errors, and the answer of a safe change feed (long-polled when asked)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api.errors import ApiError, OrjsonResponse
from app.db import reads
from app.rules.cursors import BadCursor, feed_cursor, read_feed_cursor
from app.rules.scope import Scope

Limit = Annotated[int, Query(ge=1, le=1000, description="At most this many items (1-1000)")]

DEFAULT_WINDOW = timedelta(days=5)  # Wavy's default start of a window: five days ago


def default_start(end: datetime) -> datetime:
    """A window's start when none is given; an ``end`` in the first days of year 1 starts at
    year 1 itself."""
    try:
        return end - DEFAULT_WINDOW
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC)


After = Annotated[str | None, Query(description="`next` of the previous page")]

# Under uvicorn's graceful-shutdown timeout (WAVY_WRITER_TIMEOUT_S + 5 s), so a deploy waits
# for a waiting feed reader's answer instead of cutting it off.
MAX_FEED_WAIT_S = 10.0
# How often a waiting feed looks again: the latency of a long poll, against four cheap index
# probes a second per waiting reader (any worker or replica may store what it waits for).
FEED_POLL_S = 0.25
Wait = Annotated[
    float,
    Query(
        ge=0,
        le=MAX_FEED_WAIT_S,
        description="When nothing is new, answer as soon as something is, or after this many "
        "seconds (long polling; 0, the default, answers at once)",
    ),
]


Start = Annotated[
    Literal["earliest", "latest"],
    Query(
        description="Without `after`: `earliest` (the default) reads everything stored, "
        "`latest` skips it and reads only what is stored from now on (a new reader that does "
        "not want the history)"
    ),
]


@dataclass
class FeedQuery:
    """What a safe feed's caller asks: where to start, how many, and how long to wait for
    something new (the request, to notice a caller that went away)."""

    request: Request
    after: After = None
    start: Start = "earliest"
    limit: Limit = 1000
    wait: Wait = 0.0


FeedQueryDep = Annotated[FeedQuery, Depends()]


def bad_cursor() -> ApiError:
    return ApiError(422, "invalid_cursor", "the cursor is not one this API handed out")


async def _starting_position(engine: AsyncEngine, query: FeedQuery) -> reads.FeedPosition:
    if query.after and query.start == "latest":
        raise ApiError(422, "invalid_start", "give a cursor (after) or start=latest, not both")
    if query.after:
        try:
            return reads.FeedPosition(*read_feed_cursor(query.after))
        except BadCursor:
            raise bad_cursor() from None
    if query.start == "latest":
        async with engine.connect() as conn:
            return await reads.feed_end(conn)
    return reads.FeedPosition()


async def feed_response(
    kind: reads.FeedKind,
    scope: Scope,
    engine: AsyncEngine,
    query: FeedQuery,
    render: Callable[[dict[str, Any]], dict[str, Any]],
) -> OrjsonResponse:
    """One page of a safe feed: the items after the cursor and the cursor to pass next. With
    ``wait``, an empty page is held back until something arrives or the time is up; the
    connection goes back to the pool between looks."""
    position = await _starting_position(engine, query)
    deadline = time.monotonic() + query.wait
    while True:
        async with engine.connect() as conn:
            rows, next_position = await reads.feed_page(conn, kind, scope, position, query.limit)
        left = deadline - time.monotonic()
        if rows or left <= 0 or await query.request.is_disconnected():
            break
        await asyncio.sleep(min(FEED_POLL_S, left))
    return OrjsonResponse(
        {
            "items": [render(row) for row in rows],
            "next": feed_cursor(next_position.tx_id, next_position.seq),
        }
    )
