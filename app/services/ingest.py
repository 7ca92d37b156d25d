"""Ingestion, the webhooks' service: read a body (or an MO's query string) within its bounds,
parse it, hand its records to the writer, and answer only after the commit. Whatever is refused
is kept as a rejected body first, then raised (app.errors.Refused); whatever cannot be stored
now is app.errors.Unavailable. The routes (app.api.webhooks) only call these."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import Headers
from starlette.requests import Request

from app import metrics
from app.db.rejected import RejectedBody, RejectedBudget, store_rejected_body
from app.db.writer import BatchWriter
from app.errors import Refused, Unavailable, WriteRefused, WriterOverloaded
from app.payloads import EventKind
from app.rules.records import build_event_records
from app.rules.webhook_body import (
    REFUSAL_STATUS,
    ParsedBody,
    owned_elsewhere,
    parse_mo_query,
    parse_webhook_body,
    query_without_credentials,
    refused_by_database,
    too_large,
    too_slow,
    url_too_long,
)
from app.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WebhookCaller:
    """Whoever presented a valid webhook key; callbacks and DLRs take its sub-account."""

    sub_account: str | None


# Not frozen: one is built per webhook, and a frozen dataclass's __init__ costs several times
# more (py-spy showed it).
@dataclass(slots=True)
class WebhookContext:
    """Everything a webhook route needs, resolved as ONE dependency: FastAPI's per-request
    cost grows with the number of dependencies, and this is the hottest path we have."""

    caller: WebhookCaller
    settings: Settings
    engine: AsyncEngine
    writer: BatchWriter


@dataclass(slots=True)  # not frozen, as _Refusal below
class Ingested:
    received: int
    duplicates: int


class BodyCutOff(Exception):
    """The body stopped at a bound; ``received`` is what had arrived."""

    def __init__(self, received: bytes, refusal: Refused) -> None:
        super().__init__(refusal.message)
        self.received = received
        self.refusal = refusal


async def read_limited_body(
    request: Request, limit: int, timeout_s: float, *, arrived: bool = False
) -> bytes:
    """The body, refused once it passes ``limit`` bytes (reading stops there, so an endless or
    huge body costs at most ``limit`` bytes of memory) or ``timeout_s`` seconds (a slow sender
    cannot hold the connection). A body that has all ``arrived`` cannot be slow: no timer is
    set for it (a webhook's body nearly always comes in the packet of its head)."""
    chunks: list[bytes] = []
    if arrived:
        await _read_within(request, limit, chunks)
        return b"".join(chunks)
    try:
        async with asyncio.timeout(timeout_s):
            await _read_within(request, limit, chunks)
    except TimeoutError:
        raise BodyCutOff(b"".join(chunks), too_slow(timeout_s)) from None
    return b"".join(chunks)


async def _read_within(request: Request, limit: int, chunks: list[bytes]) -> None:
    """Append the body's chunks to ``chunks``; BodyCutOff once they pass ``limit`` bytes."""
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            chunks.append(chunk[: len(chunk) - (size - limit)])
            raise BodyCutOff(b"".join(chunks), too_large(limit))
        chunks.append(chunk)


# Not frozen: one is built per request, and only a refusal reads it (a frozen dataclass's
# __init__ costs several times more).
@dataclass(slots=True)
class _Refusal:
    """What a refused request leaves for an operator: its kind, the request (its method, and
    its raw headers for the content type) and the bytes kept."""

    kind: EventKind
    method: str
    headers: list[tuple[bytes, bytes]]
    kept: bytes
    truncated: bool = False

    def content_type(self) -> str | None:
        return Headers(raw=self.headers).get("content-type")


async def _keep_and_refuse(context: WebhookContext, refusal: _Refusal, error: Refused) -> Refused:
    """Keep the refused body for an operator, then give back the refusal to raise. If even that
    cannot be stored, nothing is refused: the sender gets a 503 and retries, rather than a 4xx
    for a body nobody kept."""
    try:
        await store_rejected_body(
            context.engine,
            RejectedBody(
                endpoint=refusal.kind,
                method=refusal.method,
                sub_account=context.caller.sub_account,
                status_code=REFUSAL_STATUS[error.reason],
                reason=error.reason,
                detail=error.details,
                content_type=refusal.content_type(),
                body=refusal.kept,
                body_truncated=refusal.truncated,
            ),
            RejectedBudget(
                per_key_bytes=context.settings.rejected_max_bytes_per_key,
                total_bytes=context.settings.rejected_max_bytes,
            ),
        )
    except Unavailable as outage:
        log.warning("could not store a rejected %s body: %s", refusal.kind, outage)
        raise Unavailable("storage unavailable; the body was not recorded") from None
    metrics.REJECTED.labels(refusal.kind, error.reason).inc()
    return error


async def _store(
    kind: EventKind,
    parsed: ParsedBody,
    context: WebhookContext,
    received_at: datetime,
    refusal: _Refusal,
) -> Ingested:
    """Hand the records to the writer (bounded by WAVY_WRITER_TIMEOUT_S) and answer from the
    outcome."""
    try:
        records = build_event_records(
            kind,
            parsed.payloads,
            parsed.payloads_json,
            sub_account=context.caller.sub_account,
            received_at=received_at,
        )
        if not records:
            return Ingested(0, 0)
        try:
            result = await context.writer.write(records)
        except WriteRefused as refused:
            raise refused_by_database(refused.sqlstate) from None
        if result.refused:
            ids = [parsed.payloads[index].id for index in result.refused]
            raise owned_elsewhere(result.refused, ids)
    except Refused as error:
        raise await _keep_and_refuse(context, refusal, error) from None
    metrics.events_counted(kind, "accepted").inc(result.received - result.duplicates)
    if result.duplicates:
        metrics.events_counted(kind, "duplicate").inc(result.duplicates)
    return Ingested(result.received, result.duplicates)


async def ingest_body(
    kind: EventKind, request: Request, context: WebhookContext, *, arrived: bool = False
) -> Ingested:
    """A POSTed body, read from the request: one object or an array; ``arrived`` when the
    server has all of it."""
    received_at = datetime.now(UTC)
    settings = context.settings
    headers = request.scope["headers"]
    try:
        body = await read_limited_body(
            request, settings.max_body_bytes, settings.body_timeout_s, arrived=arrived
        )
    except BodyCutOff as cut:
        refusal = _Refusal(kind, request.method, headers, cut.received, truncated=True)
        raise await _keep_and_refuse(context, refusal, cut.refusal) from None
    return await _ingest_read(
        kind, body, _Refusal(kind, request.method, headers, body), context, received_at
    )


async def ingest_arrived(
    kind: EventKind, body: bytes, context: WebhookContext, headers: list[tuple[bytes, bytes]]
) -> Ingested:
    """A POSTed body that the server already holds whole (app.api.direct), with its request's
    raw headers: bounded as ``ingest_body`` bounds one it reads."""
    received_at = datetime.now(UTC)
    limit = context.settings.max_body_bytes
    if len(body) > limit:
        refusal = _Refusal(kind, "POST", headers, body[:limit], truncated=True)
        raise await _keep_and_refuse(context, refusal, too_large(limit)) from None
    return await _ingest_read(
        kind, body, _Refusal(kind, "POST", headers, body), context, received_at
    )


async def _ingest_read(
    kind: EventKind,
    body: bytes,
    refusal: _Refusal,
    context: WebhookContext,
    received_at: datetime,
) -> Ingested:
    """A body within its size: parsed, stored, answered; ``refusal`` is what is kept if not."""
    if context.writer.is_full():  # refused before parsing: a burst stays cheap
        raise WriterOverloaded("overloaded; nothing was stored, retry later")
    try:
        parsed = parse_webhook_body(kind, body, max_items=context.settings.max_items)
    except Refused as error:
        raise await _keep_and_refuse(context, refusal, error) from None
    return await _store(kind, parsed, context, received_at, refusal)


async def ingest_query(request: Request, context: WebhookContext, *, cut_off: bool) -> Ingested:
    """An MO sent as a query string (GET), ``cut_off`` when its URL passed the head's limit;
    what is kept of a refused one is its query without the key."""
    received_at = datetime.now(UTC)
    settings = context.settings
    if context.writer.is_full():
        raise WriterOverloaded("overloaded; nothing was stored, retry later")
    query = request.url.query
    kept = query_without_credentials(query)[: settings.max_body_bytes].encode()
    refusal = _Refusal("mo", request.method, request.scope["headers"], kept, cut_off)
    try:
        if cut_off:
            raise url_too_long(settings.max_head_bytes)
        if len(query) > settings.max_body_bytes:
            raise too_large(settings.max_body_bytes)
        parsed = parse_mo_query(query)
    except Refused as error:
        raise await _keep_and_refuse(context, refusal, error) from None
    return await _store("mo", parsed, context, received_at, refusal)
