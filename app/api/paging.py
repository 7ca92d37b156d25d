"""What the read routes share about paging: the limit parameter, times without offset, cursor
errors, and the answer of a safe change feed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Query
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api.errors import ApiError, OrjsonResponse
from app.db import reads
from app.rules.cursors import BadCursor, feed_cursor, read_feed_cursor
from app.rules.scope import Scope

Limit = Annotated[int, Query(ge=1, le=1000, description="At most this many items (1-1000)")]
After = Annotated[str | None, Query(description="`next` of the previous page")]


def bad_cursor() -> ApiError:
    return ApiError(422, "invalid_cursor", "the cursor is not one this API handed out")


async def feed_response(
    kind: str,
    scope: Scope,
    engine: AsyncEngine,
    after: str | None,
    limit: int,
    render: Callable[[dict[str, Any]], dict[str, Any]],
) -> OrjsonResponse:
    """One page of a safe feed: the items after the cursor and the cursor to pass next."""
    try:
        position = reads.FeedPosition(*read_feed_cursor(after)) if after else reads.FeedPosition()
    except BadCursor:
        raise bad_cursor() from None
    async with engine.connect() as conn:
        rows, next_position = await reads.feed_page(conn, kind, scope, position, limit)
    return OrjsonResponse(
        {
            "items": [render(row) for row in rows],
            "next": feed_cursor(next_position.tx_id, next_position.seq),
        }
    )
