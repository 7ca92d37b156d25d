"""Status read API, on Wavy's paths: search, consume-on-read list, safe change feed, one
message's full history, and a filtered listing for dashboards (as pages, or all as CSV)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from starlette.responses import StreamingResponse

from app.api import downloads
from app.api.deps import EngineDep, ReaderDep, ScopeDep, SettingsDep
from app.api.downloads import csv_download, csv_responses
from app.api.errors import ApiError, OrjsonResponse, responses
from app.api.paging import FeedQueryDep, Limit, bad_cursor, default_start, feed_response
from app.api.params import IsoTime, SearchText
from app.api.routing import CheckedRoute, body_cap
from app.api.schemas import (
    OverduePage,
    StatusChanges,
    StatusDetail,
    StatusEnvelope,
    StatusOut,
    StatusPage,
    StatusSearch,
)
from app.db import reads
from app.rules.answers import event_out, mo_out, status_envelope, status_out
from app.rules.cursors import BadCursor, read_time_cursor_str, time_cursor
from app.rules.reconcile import OverdueKind
from app.services import reconcile

router = APIRouter(prefix="/v1/sms/status", tags=["statuses"], route_class=CheckedRoute)

READ_RESPONSES = responses(401, 429, 403, 422, 503)
SEARCH_RESPONSES = responses(400, 401, 429, 403, 422, 503)
# 2,000 ids of up to 255 characters, JSON-quoted, with room for escapes.
SEARCH_BODY_BYTES = 1024 * 1024


@router.post(
    "/search",
    summary="Statuses of these message ids and/or correlationIds",
    description=(
        '`{"ids": [...]}`, `{"correlationIds": [...]}` or both (up to 1000 each). The '
        "answer is Wavy's envelope; `start` is the earliest `firstSeenAt` answered, `end` now."
    ),
    response_model=StatusEnvelope,
    responses=SEARCH_RESPONSES,
    openapi_extra=body_cap(SEARCH_BODY_BYTES),
)
async def search_statuses(body: StatusSearch, scope: ScopeDep, engine: EngineDep) -> OrjsonResponse:
    async with engine.connect() as conn:
        rows = await reads.find_statuses(conn, scope, body.ids, body.correlationIds)
    end = datetime.now(UTC)
    start = min((row["first_seen_at"] for row in rows), default=end)
    return OrjsonResponse(status_envelope(rows, start, end))


@router.get(
    "/list",
    summary="Statuses that changed since this user's previous call (consumed on read)",
    description=(
        "Oldest change first. A message comes again when its status changes again. The "
        "position is kept per user in the database; prefer `/changes` if a crash between "
        "reading and processing must not lose anything. With `start` and/or `end` "
        "(ISO-8601), only changes (`updatedAt`) in that window, each once for that window: "
        "calling until `smsStatuses` is empty ends."
    ),
    response_model=StatusEnvelope,
    responses=READ_RESPONSES,
)
async def list_changed_statuses(
    reader: ReaderDep,
    scope: ScopeDep,
    engine: EngineDep,
    limit: Limit = 1000,
    start: Annotated[IsoTime | None, Query(description="changed at or after (ISO-8601)")] = None,
    end: Annotated[IsoTime | None, Query(description="changed at or before (ISO-8601)")] = None,
) -> OrjsonResponse:
    window = None
    if start is not None or end is not None:
        window = change_window(start, end)
    async with engine.begin() as conn:
        page = await reads.consume_feed(conn, reader, "status", scope, limit, window)
    if window is not None:
        return OrjsonResponse(status_envelope(page.rows, window.start, window.end))
    first = page.rows[0]["updated_at"] if page.rows else page.read_at
    return OrjsonResponse(status_envelope(page.rows, page.previous_read_at or first, page.read_at))


def change_window(start: datetime | None, end: datetime | None) -> reads.ChangeWindow:
    """A list's window: what is given, the rest as the reply search defaults it."""
    end = end or datetime.now(UTC)
    start = start or default_start(end)
    if start > end:
        raise ApiError(422, "invalid_window", "start is after end")
    return reads.ChangeWindow(start, end)


@router.get(
    "/changes",
    summary="Safe change feed: statuses changed after a cursor (a pure read)",
    description=(
        "Start without `after`, then pass the returned `next`. Reading every page from the "
        "start returns every change exactly once; a message whose status changes again comes "
        "again. Nothing is consumed: re-reading a cursor gives the same items. With `wait`, "
        "a reader that is up to date gets the next changes as soon as they are stored."
    ),
    response_model=StatusChanges,
    responses=READ_RESPONSES,
)
async def status_changes(scope: ScopeDep, engine: EngineDep, query: FeedQueryDep) -> OrjsonResponse:
    return await feed_response("status", scope, engine, query, status_out)


async def status_filters(
    correlation_id: Annotated[SearchText | None, Query(alias="correlationId")] = None,
    destination: SearchText | None = None,
    carrier_name: Annotated[SearchText | None, Query(alias="carrierName")] = None,
    campaign_id: Annotated[SearchText | None, Query(alias="campaignId")] = None,
    sent_status_code: Annotated[
        int | None, Query(alias="sentStatusCode", ge=0, le=2**31 - 1)
    ] = None,
    delivered_status_code: Annotated[
        int | None, Query(alias="deliveredStatusCode", ge=0, le=2**31 - 1)
    ] = None,
    from_: Annotated[
        IsoTime | None, Query(alias="from", description="First seen at or after (ISO-8601)")
    ] = None,
    to: Annotated[IsoTime | None, Query(description="First seen at or before (ISO-8601)")] = None,
) -> reads.StatusFilters:
    """The listing's filters, shared by its pages and its CSV export."""
    return reads.StatusFilters(
        correlation_id=correlation_id,
        destination=destination,
        carrier_name=carrier_name,
        campaign_id=campaign_id,
        sent_status_code=sent_status_code,
        delivered_status_code=delivered_status_code,
        first_seen_from=from_,
        first_seen_to=to,
    )


StatusFiltersDep = Annotated[reads.StatusFilters, Depends(status_filters)]

EXPORT_COLUMNS = tuple(StatusOut.model_fields)


def status_cells(row: reads.Row) -> list[object]:
    status = status_out(row)
    return [status[column] for column in EXPORT_COLUMNS]


@router.get(
    "/export",
    summary="Every status the listing's filters select, newest first, as one CSV download",
    description=(
        "The same filters as the listing, no limit. Columns are the listing's fields, in its "
        "order, with a header row. A text that a spreadsheet would run as a formula (starting "
        "with `=`, `+`, `-`, `@`) gets a leading `'`. Read page by page: a message whose "
        "first-seen time moves while the export runs (an earlier event arriving late) may be "
        "missed or listed twice."
    ),
    response_class=StreamingResponse,
    responses={**csv_responses("statuses"), **READ_RESPONSES},
)
async def export_statuses(
    scope: ScopeDep,
    engine: EngineDep,
    filters: StatusFiltersDep,
    written_as: downloads.SpreadsheetFormatDep,
) -> StreamingResponse:
    pages = reads.status_pages(engine, scope, filters, downloads.EXPORT_PAGE_ROWS)
    return await csv_download(pages, EXPORT_COLUMNS, status_cells, "statuses", written_as)


@router.get(
    "",
    summary="Filtered listing for dashboards, newest first, paginated",
    response_model=StatusPage,
    responses=READ_RESPONSES,
)
async def list_statuses(
    scope: ScopeDep,
    engine: EngineDep,
    filters: StatusFiltersDep,
    limit: Limit = 100,
    cursor: Annotated[str | None, Query(description="`next` of the previous page")] = None,
) -> OrjsonResponse:
    try:
        before = read_time_cursor_str(cursor) if cursor else None
    except BadCursor:
        raise bad_cursor() from None
    async with engine.connect() as conn:
        rows = await reads.list_statuses(conn, scope, filters, before, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if rows else None
    return OrjsonResponse(
        {
            "items": [status_out(row) for row in rows],
            "next": time_cursor(last["first_seen_at"], last["id"]) if more and last else None,
        }
    )


@router.get(
    "/overdue",
    summary="MTs whose callback, or DLR, never came: what reconciliation could not recover",
    description=(
        "MTs sent through the service whose `kind` of status is overdue "
        "(WAVY_RECONCILE_CALLBACK_AFTER, WAVY_RECONCILE_DLR_AFTER), longest waiting first, "
        "those given up included (`givenUp`: older than WAVY_RECONCILE_WINDOW). A message "
        "leaves the list as soon as its status comes, by webhook or from Wavy. "
        "See docs/reconciliation.md."
    ),
    response_model=OverduePage,
    responses=READ_RESPONSES,
)
async def list_overdue(
    scope: ScopeDep,
    engine: EngineDep,
    settings: SettingsDep,
    kind: Annotated[OverdueKind, Query(description="the status awaited")] = "callback",
    limit: Limit = 100,
    cursor: Annotated[str | None, Query(description="`next` of the previous page")] = None,
) -> OrjsonResponse:
    try:
        page = await reconcile.overdue(engine, settings, scope, kind, limit, cursor)
    except BadCursor:
        raise bad_cursor() from None
    return OrjsonResponse(page)


@router.get(
    "/{message_id}",
    summary="One message: its status, its whole history, and the replies to it",
    response_model=StatusDetail,
    responses=responses(401, 429, 403, 404, 503),
)
async def get_status(message_id: SearchText, scope: ScopeDep, engine: EngineDep) -> OrjsonResponse:
    async with engine.connect() as conn:
        row = await reads.get_status(conn, scope, message_id)
        if row is None:
            raise ApiError(404, "not_found", "no such message (in your scope)")
        history = await reads.status_history(conn, message_id, row["sub_account"])
        replies = await reads.replies_to(conn, scope, message_id, row["sub_account"])
    return OrjsonResponse(
        {
            **status_out(row),
            "events": [event_out(event) for event in history],
            "replies": [mo_out(reply) for reply in replies],
        }
    )
