"""Every query that manages forwarding endpoints: add, list, change, remove, rotate a secret,
their attempts, and a replay's start. (What the forwarder itself runs is app.db.forwarding.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.reads import feed_end
from app.db.tables import deliveries, delivery_attempts, endpoints
from app.rules.forwarding import DisabledReason, EventType, new_secret
from app.rules.scope import Scope


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    """An endpoint as its owner sees it: settings and health (never its secret)."""

    id: int
    url: str
    sub_account: str | None
    events: list[EventType]
    created_at: datetime
    created_by: str
    disabled_at: datetime | None
    disabled_reason: DisabledReason | None
    last_attempt_at: datetime | None
    last_success_at: datetime | None
    failing_since: datetime | None
    backlog: int  # deliveries still to be sent
    retrying: int  # of those, the ones that failed and wait for a retry
    next_attempt_at: datetime | None  # when the next of those is due
    failed: int  # deliveries given up on (replayable)
    replaying: bool


_BACKLOG = (
    select(func.count())
    .where(deliveries.c.endpoint_id == endpoints.c.id, deliveries.c.state == "pending")
    .scalar_subquery()
)
_WAITING_RETRY = and_(
    deliveries.c.endpoint_id == endpoints.c.id,
    deliveries.c.state == "pending",
    deliveries.c.last_failed_at.is_not(None),
)
_RETRYING = select(func.count()).where(_WAITING_RETRY).scalar_subquery()
_NEXT_RETRY = select(func.min(deliveries.c.next_attempt_at)).where(_WAITING_RETRY).scalar_subquery()
_FAILED = (
    select(func.count())
    .where(deliveries.c.endpoint_id == endpoints.c.id, deliveries.c.state == "failed")
    .scalar_subquery()
)


def _info_query() -> Select[Any]:
    return select(
        endpoints.c.id,
        endpoints.c.url,
        endpoints.c.sub_account,
        endpoints.c.events,
        endpoints.c.created_at,
        endpoints.c.created_by,
        endpoints.c.disabled_at,
        endpoints.c.disabled_reason,
        endpoints.c.last_attempt_at,
        endpoints.c.last_success_at,
        endpoints.c.failing_since,
        _BACKLOG.label("backlog"),
        _RETRYING.label("retrying"),
        _NEXT_RETRY.label("next_attempt_at"),
        _FAILED.label("failed"),
        endpoints.c.replay_next_id.is_not(None).label("replaying"),
    )


async def add_endpoint(
    conn: AsyncConnection,
    *,
    url: str,
    sub_account: str | None,
    events: Sequence[EventType],
    created_by: str,
) -> tuple[int, str]:
    """The new endpoint's id and secret. It receives what is committed from now on: its
    position in every feed starts at its end."""
    end = await feed_end(conn)
    secret = new_secret()
    endpoint_id = await conn.scalar(
        insert(endpoints)
        .values(
            url=url,
            sub_account=sub_account,
            events=list(events),
            secret=secret,
            created_by=created_by,
            status_tx_id=end.tx_id,
            status_seq=end.seq,
            mo_tx_id=end.tx_id,
            mo_seq=end.seq,
            optout_tx_id=end.tx_id,
            optout_seq=end.seq,
        )
        .returning(endpoints.c.id)
    )
    assert endpoint_id is not None
    return endpoint_id, secret


async def list_endpoints(conn: AsyncConnection, scope: Scope) -> list[EndpointInfo]:
    statement = _info_query().order_by(endpoints.c.id)
    if not scope.everything:
        statement = statement.where(endpoints.c.sub_account == scope.sub_account)
    return [EndpointInfo(**row._mapping) for row in await conn.execute(statement)]


async def get_endpoint(conn: AsyncConnection, endpoint_id: int) -> EndpointInfo | None:
    row = (await conn.execute(_info_query().where(endpoints.c.id == endpoint_id))).first()
    return EndpointInfo(**row._mapping) if row else None


@dataclass(frozen=True, slots=True)
class EndpointChange:
    """What a PATCH changes; None leaves a field as it is."""

    url: str | None = None
    events: Sequence[EventType] | None = None
    disabled: bool | None = None


async def change_endpoint(conn: AsyncConnection, endpoint_id: int, change: EndpointChange) -> None:
    values: dict[str, Any] = {}
    if change.url is not None:
        values["url"] = change.url
    if change.events is not None:
        values["events"] = list(change.events)
    if change.disabled is True:
        values["disabled_at"] = func.coalesce(endpoints.c.disabled_at, func.now())
        values["disabled_reason"] = func.coalesce(endpoints.c.disabled_reason, "manual")
    elif change.disabled is False:
        # Enabled again: from where it stopped, with a clean slate for the dead-endpoint clock.
        values.update(disabled_at=None, disabled_reason=None, failing_since=None)
    if values:
        await conn.execute(update(endpoints).where(endpoints.c.id == endpoint_id).values(values))


async def remove_endpoint(conn: AsyncConnection, endpoint_id: int) -> bool:
    """Its deliveries and attempts go with it."""
    result = await conn.execute(delete(endpoints).where(endpoints.c.id == endpoint_id))
    return bool(result.rowcount)


async def rotate_secret(conn: AsyncConnection, endpoint_id: int, overlap: timedelta) -> str:
    """A new secret; the current one keeps signing too for ``overlap``."""
    secret = new_secret()
    await conn.execute(
        update(endpoints)
        .where(endpoints.c.id == endpoint_id)
        .values(
            previous_secret=endpoints.c.secret,
            previous_secret_until=func.now() + overlap,
            secret=secret,
        )
    )
    return secret


async def list_attempts(
    conn: AsyncConnection, endpoint_id: int, before_id: int | None, limit: int
) -> list[dict[str, Any]]:
    """Newest first."""
    conditions = [delivery_attempts.c.endpoint_id == endpoint_id]
    if before_id is not None:
        conditions.append(delivery_attempts.c.id < before_id)
    statement = (
        select(delivery_attempts, deliveries.c.event_type)
        .outerjoin(deliveries, deliveries.c.id == delivery_attempts.c.delivery_id)
        .where(*conditions)
        .order_by(delivery_attempts.c.id.desc())
        .limit(limit)
    )
    return [dict(row._mapping) for row in await conn.execute(statement)]


async def start_replay(conn: AsyncConnection, endpoint_id: int, since: datetime) -> int:
    """Marks every delivery made for the endpoint since ``since`` (replays of replays left out)
    to be sent again; the forwarder copies them as new deliveries, a page at a time. Returns
    how many. A replay asked while another runs extends it."""
    originals = and_(
        deliveries.c.endpoint_id == endpoint_id,
        deliveries.c.created_at >= since,
        deliveries.c.replay_of.is_(None),
    )
    found = (
        await conn.execute(
            select(func.min(deliveries.c.id), func.max(deliveries.c.id), func.count()).where(
                originals
            )
        )
    ).one()
    first, last, count = found
    if not count:
        return 0
    await conn.execute(
        update(endpoints)
        .where(endpoints.c.id == endpoint_id)
        .values(
            replay_next_id=func.least(func.coalesce(endpoints.c.replay_next_id, first), first),
            replay_last_id=func.greatest(func.coalesce(endpoints.c.replay_last_id, last), last),
        )
    )
    return int(count)
