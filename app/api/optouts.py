"""The opt-out lists over HTTP, with the read API's credentials and scoping (the work is
app.services.optouts's): check numbers before sending, list, export and follow the list,
change it by hand, and set its keywords."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Request
from starlette.responses import StreamingResponse

from app.api import downloads
from app.api.deps import EngineDep, ReaderDep, ScopeDep
from app.api.downloads import csv_download, csv_responses
from app.api.errors import ApiError, OrjsonResponse, responses
from app.api.paging import FeedQueryDep, Limit, bad_cursor, feed_response
from app.api.params import IsoTime, PlainText, TimeZoneName
from app.api.routing import CheckedRoute, body_cap
from app.api.schemas import (
    KeywordIn,
    KeywordOut,
    OptoutChangeIn,
    OptoutChanges,
    OptoutCheckAnswer,
    OptoutCheckIn,
    OptoutDays,
    OptoutDetail,
    OptoutEntry,
    OptoutPage,
)
from app.api.stats import FIRST_HOUR_ANYWHERE
from app.db.optouts import ListCursor, Row
from app.rules.answers import optout_entry
from app.rules.cursors import BadCursor, read_time_cursor_str, time_cursor
from app.rules.delivery_stats import within_the_calendar
from app.services import optouts as service
from app.settings import Settings

router = APIRouter(prefix="/v1/optouts", tags=["opt-outs"], route_class=CheckedRoute)

RESPONSES = responses(400, 401, 403, 422, 429, 503)
Number = Annotated[
    str, Path(max_length=64, description="any way of writing it: +5511987654321, 5511987654321")
]
Keyword = Annotated[PlainText, Path(max_length=64)]
DEFAULT_DAYS = timedelta(days=30)
# 1,000 numbers of up to 64 characters, JSON-quoted.
CHECK_BODY_BYTES = 128 * 1024
# A reason of up to 500 characters, or a keyword's action.
CHANGE_BODY_BYTES = 4 * 1024


def _region(request: Request) -> str:
    settings: Settings = request.app.state.settings
    return settings.default_region


@router.post(
    "/check",
    summary="Check up to 1000 numbers before sending: which are opted out",
    description=(
        "Numbers are read as E.164 (WAVY_DEFAULT_REGION for those without a country code). "
        "A number is opted out when the caller's sub-account's list or the account-wide list "
        "holds it; an admin checks as `subAccount`, or, naming none, against every list "
        "(`optedOutOf` names each list that holds the number). `listsChecked` names the lists "
        "consulted. A number that cannot be read answers `optedOut: null` with an error, "
        "never false."
    ),
    response_model=OptoutCheckAnswer,
    responses=RESPONSES,
    openapi_extra=body_cap(CHECK_BODY_BYTES),
)
async def check_numbers(
    wanted: OptoutCheckIn, request: Request, scope: ScopeDep, engine: EngineDep
) -> OrjsonResponse:
    return OrjsonResponse(await service.check(engine, _region(request), scope, wanted.numbers))


def _list_cursor(row: Row) -> str:
    # A number in E.164 holds no space: it ends the tie-breaker's first part.
    return time_cursor(row["since"], f"{row['e164']} {row['sub_account']}")


def _read_list_cursor(cursor: str) -> ListCursor:
    try:
        since, tie = read_time_cursor_str(cursor)
    except BadCursor:
        raise bad_cursor() from None
    e164, _, sub_account = tie.partition(" ")
    return ListCursor(since, sub_account, e164)


@router.get(
    "",
    summary="The numbers opted out, newest first, paginated",
    description="The caller's sub-account's list and the account-wide one; admins: every "
    "list, or `subAccount`'s and the account-wide one.",
    response_model=OptoutPage,
    responses=RESPONSES,
)
async def list_optouts(
    scope: ScopeDep,
    engine: EngineDep,
    limit: Limit = 100,
    cursor: Annotated[str | None, Query(description="`next` of the previous page")] = None,
) -> OrjsonResponse:
    before = _read_list_cursor(cursor) if cursor else None
    rows = await service.listing(engine, scope, before, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return OrjsonResponse(
        {
            "items": [optout_entry(row) for row in rows],
            "next": _list_cursor(rows[-1]) if more and rows else None,
        }
    )


EXPORT_COLUMNS = tuple(OptoutEntry.model_fields)


def _cells(row: Row) -> list[object]:
    entry = optout_entry(row)
    return [entry[column] for column in EXPORT_COLUMNS]


@router.get(
    "/export",
    summary="Every number opted out (the listing's lists), newest first, as one CSV download",
    response_class=StreamingResponse,
    responses={**csv_responses("opt-outs"), **RESPONSES},
)
async def export_optouts(
    scope: ScopeDep, engine: EngineDep, written_as: downloads.SpreadsheetFormatDep
) -> StreamingResponse:
    pages = service.export_pages(engine, scope, downloads.EXPORT_PAGE_ROWS)
    return await csv_download(pages, EXPORT_COLUMNS, _cells, "optouts", written_as)


@router.get(
    "/changes",
    summary="Safe change feed: numbers whose state changed after a cursor (a pure read)",
    description=(
        "Like the status and reply feeds: start without `after`, then pass `next`. A number "
        "comes again each time it opts out or back in (`optedOut`)."
    ),
    response_model=OptoutChanges,
    responses=RESPONSES,
)
async def optout_changes(scope: ScopeDep, engine: EngineDep, query: FeedQueryDep) -> OrjsonResponse:
    return await feed_response("optout", scope, engine, query, optout_entry)


@router.get(
    "/days",
    summary="The list over time: per day, numbers that opted out and back in, and its size",
    response_model=OptoutDays,
    responses=RESPONSES,
)
async def optout_days(
    scope: ScopeDep,
    engine: EngineDep,
    from_: Annotated[
        IsoTime | None, Query(alias="from", description="default: 30 days ago")
    ] = None,
    to: Annotated[IsoTime | None, Query(description="default: now")] = None,
    time_zone: Annotated[TimeZoneName, Query(alias="tz")] = "UTC",
) -> OrjsonResponse:
    end = to or datetime.now(UTC)
    try:
        start = from_ or end - DEFAULT_DAYS
    except OverflowError:
        start = FIRST_HOUR_ANYWHERE
    # As the stats: no day of year 0 anywhere, none past 9999 in the reader's zone.
    start = max(start, FIRST_HOUR_ANYWHERE)
    if start > end:
        raise ApiError(422, "invalid_window", "from is after to")
    if not within_the_calendar(end, time_zone):
        raise ApiError(422, "invalid_window", f"to is past year 9999 in {time_zone}")
    if end - start > timedelta(days=3660):
        raise ApiError(422, "invalid_window", "at most ten years of days")
    days = await service.days(engine, scope, start, end, time_zone)
    return OrjsonResponse({"days": days})


@router.get(
    "/keywords",
    summary="The keywords in force for the caller's list, and who set each",
    response_model=list[KeywordOut],
    responses=RESPONSES,
)
async def list_keywords(scope: ScopeDep, engine: EngineDep) -> OrjsonResponse:
    return OrjsonResponse(await service.keywords(engine, scope))


@router.put(
    "/keywords/{keyword}",
    summary="Set what a keyword does for the caller's list (admins: the account's by default)",
    response_model=list[KeywordOut],
    responses=RESPONSES,
    openapi_extra=body_cap(CHANGE_BODY_BYTES),
)
async def set_keyword(
    keyword: Keyword, wanted: KeywordIn, scope: ScopeDep, reader: ReaderDep, engine: EngineDep
) -> OrjsonResponse:
    answer = await service.set_keyword(engine, scope, keyword, wanted.action, reader.username)
    return OrjsonResponse(answer)


@router.delete(
    "/keywords/{keyword}",
    summary="Remove the list's own setting of a keyword (the account's or the default acts)",
    response_model=list[KeywordOut],
    responses=responses(401, 403, 404, 422, 429, 503),
)
async def unset_keyword(keyword: Keyword, scope: ScopeDep, engine: EngineDep) -> OrjsonResponse:
    return OrjsonResponse(await service.unset_keyword(engine, scope, keyword))


@router.get(
    "/{number}",
    summary="One number: where it stands in each list the caller reads, and its history",
    response_model=OptoutDetail,
    responses=RESPONSES,
)
async def show_number(
    number: Number, request: Request, scope: ScopeDep, engine: EngineDep
) -> OrjsonResponse:
    return OrjsonResponse(await service.detail(engine, _region(request), scope, number))


@router.put(
    "/{number}",
    summary="Opt a number out of the caller's list by hand (a reason is kept)",
    response_model=OptoutDetail,
    responses=RESPONSES,
    openapi_extra=body_cap(CHANGE_BODY_BYTES),
)
async def opt_out(
    number: Number,
    request: Request,
    scope: ScopeDep,
    reader: ReaderDep,
    engine: EngineDep,
    wanted: Annotated[OptoutChangeIn | None, Body()] = None,
) -> OrjsonResponse:
    answer = await service.change(
        engine,
        _region(request),
        scope,
        number,
        opted_out=True,
        actor=reader.username,
        reason=wanted.reason if wanted else None,
    )
    return OrjsonResponse(answer)


@router.delete(
    "/{number}",
    summary="Take a number off the caller's list by hand: it opted back in",
    response_model=OptoutDetail,
    responses=RESPONSES,
)
async def opt_in(
    number: Number,
    request: Request,
    scope: ScopeDep,
    reader: ReaderDep,
    engine: EngineDep,
    reason: Annotated[PlainText | None, Query(max_length=500)] = None,
) -> OrjsonResponse:
    answer = await service.change(
        engine,
        _region(request),
        scope,
        number,
        opted_out=False,
        actor=reader.username,
        reason=reason,
    )
    return OrjsonResponse(answer)
