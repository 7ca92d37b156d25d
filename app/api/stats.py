"""GET /v1/stats: delivery figures per hour, day, carrier, campaign or sub-account, from the
rollup."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import EngineDep, ScopeDep
from app.api.errors import ApiError, OrjsonResponse, responses
from app.api.params import IsoTime, SearchText, TimeZoneName
from app.api.routing import CheckedRoute
from app.api.schemas import StatsAnswer
from app.db.stats import StatsWindow, optout_counts, rollup_counts
from app.rules.answers import iso
from app.rules.delivery_stats import (
    GroupBy,
    GroupCounts,
    carrier_sends_dlr,
    group_figures,
    shown_key,
    sum_groups,
    within_the_calendar,
)

router = APIRouter(prefix="/v1/stats", tags=["statistics"], route_class=CheckedRoute)

DEFAULT_WINDOW = timedelta(days=7)
HOUR = timedelta(hours=1)


def _hour_floor(moment: datetime) -> datetime:
    # Already UTC (IsoTime validates into UTC): the hour is a rollup hour.
    return moment.replace(minute=0, second=0, microsecond=0)


def _group(group_by: GroupBy, key: str, counts: GroupCounts) -> dict[str, object]:
    group: dict[str, object] = {"key": shown_key(key), **group_figures(counts)}
    if group_by == "carrier":
        # A 0% delivery rate on Oi means "no DLRs", not "nothing delivered": say which it is.
        group["carrierSendsDlr"] = carrier_sends_dlr(key)
    return group


# The first hour that is in year 1 in every time zone.
FIRST_HOUR_ANYWHERE = datetime(1, 1, 2, tzinfo=UTC)


@router.get(
    "",
    summary="Delivery statistics per hour, day, carrier, campaign or sub-account",
    description=(
        "Messages count in the hour they were first seen; `from` and `to` (ISO-8601, "
        "default: the last 7 days) select whole hours, both included. Per group: messages, "
        "counts per sent and delivered status code, delivery rate, time from sent to "
        "delivered (p50/p90/p99 and the histogram), messages still waiting for a DLR (split "
        "by whether their carrier sends DLRs at all), MOs received, replies and reply rate, "
        "opt-outs (replies that opted out, counted for the campaign of the message they "
        "answer, in the hour they were received) and opt-out rate (opt-outs per message). "
        "Scoped like the read API: users see their sub-account, admins all or `subAccount`. "
        '`groupBy=subAccount` breaks an admin\'s figures down by cost centre (`""` for '
        "messages of no sub-account)."
    ),
    response_model=StatsAnswer,
    responses=responses(401, 429, 403, 422, 503),
)
async def delivery_stats(
    scope: ScopeDep,
    engine: EngineDep,
    from_: Annotated[IsoTime | None, Query(alias="from", description="ISO-8601")] = None,
    to: Annotated[IsoTime | None, Query(description="ISO-8601")] = None,
    campaign_id: Annotated[SearchText | None, Query(alias="campaignId")] = None,
    group_by: Annotated[GroupBy, Query(alias="groupBy")] = "day",
    time_zone: Annotated[
        TimeZoneName,
        Query(
            alias="tz",
            description="IANA zone whose days groupBy=day counts, and in which hours are "
            "labelled (default UTC); days start at the hour they start in there",
        ),
    ] = "UTC",
) -> OrjsonResponse:
    last_hour = _hour_floor(to or datetime.now(UTC))
    try:
        first_hour = _hour_floor(from_ or last_hour - DEFAULT_WINDOW)
    except OverflowError:
        first_hour = FIRST_HOUR_ANYWHERE
    # Year 1's first hours are year 0 west of UTC, which no date can hold.
    first_hour = max(first_hour, FIRST_HOUR_ANYWHERE)
    if first_hour > last_hour:
        raise ApiError(422, "invalid_window", "from is after to")
    if not within_the_calendar(last_hour, time_zone):
        raise ApiError(422, "invalid_window", f"to is past year 9999 in {time_zone}")
    async with engine.connect() as conn:
        window = StatsWindow(first_hour, last_hour, campaign_id, time_zone)
        rows = await rollup_counts(conn, scope, window, group_by)
        rows += await optout_counts(conn, scope, window, group_by)
    groups, totals = sum_groups(sorted(rows, key=lambda row: row[0]))
    return OrjsonResponse(
        {
            "from": iso(first_hour),
            "to": iso(last_hour),
            "groupBy": group_by,
            "tz": time_zone,
            "groups": [_group(group_by, key, counts) for key, counts in groups.items()],
            "totals": group_figures(totals, histogram=True),
        }
    )
