"""MO (reply) read API, on Wavy's paths: consume-on-read list, window search (as pages, or all
as CSV), safe feed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from starlette.responses import StreamingResponse

from app.api import downloads
from app.api.deps import EngineDep, ReaderDep, ScopeDep
from app.api.downloads import csv_download, csv_responses
from app.api.errors import ApiError, OrjsonResponse, responses
from app.api.paging import FeedQueryDep, Limit, bad_cursor, default_start, feed_response
from app.api.params import IsoTime, SearchText
from app.api.routing import CheckedRoute
from app.api.schemas import MoChanges, MoEnvelope, MoOut, MtOut
from app.db import reads
from app.payloads import MAX_KEY_CHARS
from app.rules.answers import iso, mo_out
from app.rules.cursors import BadCursor, read_time_cursor_int, time_cursor

router = APIRouter(prefix="/v1/sms/receive", tags=["replies (MOs)"], route_class=CheckedRoute)

READ_RESPONSES = responses(401, 429, 403, 422, 503)


async def reply_window(
    start: Annotated[IsoTime | None, Query(description="ISO-8601")] = None,
    end: Annotated[IsoTime | None, Query(description="ISO-8601")] = None,
    text: Annotated[
        SearchText | None,
        Query(
            min_length=1,
            max_length=MAX_KEY_CHARS,
            description="only replies whose messageText contains this, in any case "
            "(a keyword such as SAIR)",
        ),
    ] = None,
) -> reads.MoWindow:
    """``start <= receivedAt <= end``: by default from five days before ``end``, which is now."""
    window_end = end or datetime.now(UTC)
    window_start = start or default_start(window_end)
    if window_start > window_end:
        raise ApiError(422, "invalid_window", "start is after end")
    return reads.MoWindow(window_start, window_end, text)


WindowDep = Annotated[reads.MoWindow, Depends(reply_window)]


def envelope(
    rows: list[dict[str, Any]], start: datetime, end: datetime, next_cursor: str | None = None
) -> OrjsonResponse:
    body: dict[str, Any] = {
        "total": len(rows),
        "start": iso(start),
        "end": iso(end),
        "messages": [mo_out(row) for row in rows],
    }
    if next_cursor is not None:
        body["next"] = next_cursor
    return OrjsonResponse(body)


@router.get(
    "/list",
    summary="MOs received since this user's previous call (consumed on read)",
    description=(
        "Each MO is returned once per user (and scope): two concurrent callers get disjoint "
        "pages. Prefer `/changes` if a crash after reading must not lose replies."
    ),
    response_model=MoEnvelope,
    responses=READ_RESPONSES,
)
async def list_new_replies(
    reader: ReaderDep, scope: ScopeDep, engine: EngineDep, limit: Limit = 1000
) -> OrjsonResponse:
    async with engine.begin() as conn:
        page = await reads.consume_feed(conn, reader, "mo", scope, limit)
    start = page.previous_read_at or (page.rows[0]["stored_at"] if page.rows else page.read_at)
    return envelope(page.rows, start, page.read_at)


@router.get(
    "/search",
    summary="MOs received in a time window (oldest first), paginated",
    description=(
        "`start <= receivedAt <= end`; ISO-8601 with or without offset (none means UTC). "
        "Defaults: start five days ago, end now. No limit on how far back. Beyond `limit` "
        "the answer carries `next`: pass it as `cursor` for the following page."
    ),
    response_model=MoEnvelope,
    responses=READ_RESPONSES,
)
async def search_replies(
    scope: ScopeDep,
    engine: EngineDep,
    window: WindowDep,
    limit: Limit = 1000,
    cursor: Annotated[str | None, Query(description="`next` of the previous page")] = None,
) -> OrjsonResponse:
    try:
        after = read_time_cursor_int(cursor) if cursor else None
    except BadCursor:
        raise bad_cursor() from None
    async with engine.connect() as conn:
        rows = await reads.mos_in_window(conn, scope, window, after, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = time_cursor(rows[-1]["received_at"], rows[-1]["seq"]) if more else None
    return envelope(rows, window.start, window.end, next_cursor)


_MO_FIELDS = tuple(name for name in MoOut.model_fields if name != "mt")
MO_EXPORT_COLUMNS = (*_MO_FIELDS, *(f"mt.{name}" for name in MtOut.model_fields))


def mo_cells(row: reads.Row) -> list[object]:
    """An MO's CSV row: the search's fields, with the MT it answers spread over mt.* columns."""
    mo = mo_out(row)
    mt = mo["mt"] or {}
    return [*(mo[name] for name in _MO_FIELDS), *(mt.get(name) for name in MtOut.model_fields)]


@router.get(
    "/export",
    summary="Every MO of a time window, oldest first, as one CSV download",
    description=(
        "The window as in `/search` (default: the last five days), no limit. Columns are the "
        "search's fields, the MT answered as `mt.id`, `mt.correlationId`, `mt.username`, "
        "`mt.email`. A text that a spreadsheet would run as a formula (a reply starting with "
        "`=`, `+`, `-`, `@`) gets a leading `'`."
    ),
    response_class=StreamingResponse,
    responses={**csv_responses("replies"), **READ_RESPONSES},
)
async def export_replies(
    scope: ScopeDep,
    engine: EngineDep,
    window: WindowDep,
    written_as: downloads.SpreadsheetFormatDep,
) -> StreamingResponse:
    pages = reads.mo_pages(engine, scope, window, downloads.EXPORT_PAGE_ROWS)
    return await csv_download(pages, MO_EXPORT_COLUMNS, mo_cells, "replies", written_as)


@router.get(
    "/changes",
    summary="Safe MO feed: replies stored after a cursor (a pure read)",
    description=(
        "Start without `after`, then pass the returned `next`. Reading every page from the "
        "start returns every MO exactly once, in the order they were stored. With `wait`, a "
        "reader that is up to date gets the next replies as soon as they are stored."
    ),
    response_model=MoChanges,
    responses=READ_RESPONSES,
)
async def reply_changes(scope: ScopeDep, engine: EngineDep, query: FeedQueryDep) -> OrjsonResponse:
    return await feed_response("mo", scope, engine, query, mo_out)
