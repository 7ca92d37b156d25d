"""Managing forwarding endpoints, for the HTTP API and the CLI alike: who may touch which
endpoint, which URLs are allowed, and the answers' shapes.

``authority`` is what the caller may manage: every endpoint (an admin, the CLI's operator) or
one sub-account's. An endpoint outside it is ``EndpointNotFound``, as one that does not exist:
its id tells the caller nothing. Ownership is checked before anything else (a URL's check
resolves names, and must not answer for an endpoint the caller cannot touch).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import endpoints as queries
from app.db.endpoints import EndpointInfo
from app.errors import EndpointNotFound, EndpointUrlRefused, ForeignEndpoint
from app.outbound.delivery_client import check_resolves_public
from app.rules.answers import Row, iso
from app.rules.forwarding import EventType, UrlNotAllowed, check_url_shape
from app.rules.retention import parse_age
from app.rules.scope import Scope, can_see
from app.settings import Settings


@dataclass(frozen=True, slots=True)
class NewEndpoint:
    url: str
    sub_account: str | None  # an admin's: None for every sub-account's data
    events: list[EventType]


@dataclass(frozen=True, slots=True)
class EndpointChanges:
    """What to change; None leaves it as it is."""

    url: str | None = None
    events: list[EventType] | None = None
    disabled: bool | None = None


async def allowed_url(url: str, settings: Settings) -> str:
    """The URL, once it is one deliveries may go to (checked again at every delivery)."""
    try:
        host = check_url_shape(url)
        if not settings.forward_allow_private:
            await check_resolves_public(host)
    except UrlNotAllowed as error:
        raise EndpointUrlRefused(str(error)) from None
    return url


def _owner(authority: Scope, requested: str | None) -> str | None:
    """Whose data a new endpoint receives: a user's own sub-account, whatever an admin names
    (none: everyone's)."""
    if authority.everything:
        return requested or None  # as a read's subAccount=: empty names no one
    if requested not in (None, authority.sub_account):
        raise ForeignEndpoint
    return authority.sub_account


async def _managed(
    conn: AsyncConnection, authority: Scope, endpoint_id: int
) -> queries.EndpointInfo:
    info = await queries.get_endpoint(conn, endpoint_id)
    if info is None or not can_see(authority, info.sub_account):
        raise EndpointNotFound
    return info


async def create_endpoint(
    engine: AsyncEngine, settings: Settings, authority: Scope, created_by: str, wanted: NewEndpoint
) -> dict[str, Any]:
    owner = _owner(authority, wanted.sub_account)
    url = await allowed_url(wanted.url, settings)
    async with engine.begin() as conn:
        endpoint_id, secret = await queries.add_endpoint(
            conn, url=url, sub_account=owner, events=wanted.events, created_by=created_by
        )
        info = await _managed(conn, authority, endpoint_id)
    return {**endpoint_out(info), "secret": secret}


async def list_endpoints(engine: AsyncEngine, scope: Scope) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [endpoint_out(info) for info in await queries.list_endpoints(conn, scope)]


async def show_endpoint(engine: AsyncEngine, authority: Scope, endpoint_id: int) -> dict[str, Any]:
    async with engine.connect() as conn:
        return endpoint_out(await _managed(conn, authority, endpoint_id))


async def change_endpoint(
    engine: AsyncEngine,
    settings: Settings,
    authority: Scope,
    endpoint_id: int,
    patch: EndpointChanges,
) -> dict[str, Any]:
    async with engine.connect() as conn:
        await _managed(conn, authority, endpoint_id)
    url = await allowed_url(patch.url, settings) if patch.url is not None else None
    change = queries.EndpointChange(url=url, events=patch.events, disabled=patch.disabled)
    async with engine.begin() as conn:
        await _managed(conn, authority, endpoint_id)  # again: it may have gone meanwhile
        await queries.change_endpoint(conn, endpoint_id, change)
        return endpoint_out(await _managed(conn, authority, endpoint_id))


async def remove_endpoint(engine: AsyncEngine, authority: Scope, endpoint_id: int) -> None:
    async with engine.begin() as conn:
        await _managed(conn, authority, endpoint_id)
        await queries.remove_endpoint(conn, endpoint_id)


async def rotate_secret(
    engine: AsyncEngine, settings: Settings, authority: Scope, endpoint_id: int
) -> dict[str, Any]:
    overlap = parse_age(settings.forward_secret_overlap)
    async with engine.begin() as conn:
        await _managed(conn, authority, endpoint_id)
        secret = await queries.rotate_secret(conn, endpoint_id, overlap)
    return {"secret": secret, "previousSecretValidUntil": iso(datetime.now(UTC) + overlap)}


async def list_attempts(
    engine: AsyncEngine, authority: Scope, endpoint_id: int, before: int | None, limit: int
) -> dict[str, Any]:
    """Newest first; ``next`` pages on to older ones."""
    async with engine.connect() as conn:
        await _managed(conn, authority, endpoint_id)
        rows = await queries.list_attempts(conn, endpoint_id, before, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [attempt_out(row) for row in rows],
        "next": str(rows[-1]["id"]) if more and rows else None,
    }


async def replay(
    engine: AsyncEngine, authority: Scope, endpoint_id: int, since: datetime
) -> dict[str, Any]:
    async with engine.begin() as conn:
        await _managed(conn, authority, endpoint_id)
        queued = await queries.start_replay(conn, endpoint_id, since)
    return {"queued": queued}


def endpoint_out(info: EndpointInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "url": info.url,
        "subAccount": info.sub_account,
        "events": info.events,
        "disabled": info.disabled_at is not None,
        "disabledAt": iso(info.disabled_at),
        "disabledReason": info.disabled_reason,
        "createdAt": iso(info.created_at),
        "createdBy": info.created_by,
        "lastAttemptAt": iso(info.last_attempt_at),
        "lastSuccessAt": iso(info.last_success_at),
        "failingSince": iso(info.failing_since),
        "backlog": info.backlog,
        "retrying": info.retrying,
        "nextAttemptAt": iso(info.next_attempt_at),
        "failed": info.failed,
        "replaying": info.replaying,
    }


def attempt_out(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "webhookId": row["webhook_id"],
        "eventType": row["event_type"],
        "attemptedAt": iso(row["attempted_at"]),
        "statusCode": row["status_code"],
        "error": row["error"],
        "latencyMs": row["latency_ms"],
        "response": row["response"],
    }


# ---------------------------------------------------------------------------- opt-outs
