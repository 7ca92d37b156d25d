"""The URLs pasted into Wavy's portal: callbacks, DLRs and MOs (POST, and GET for MOs)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.api.deps import WebhookCaller, WebhookContext, WebhookContextDep
from app.api.errors import ApiError, OrjsonResponse, responses, unavailable
from app.db.rejected import RejectedBody, RejectedBudget, store_rejected_body
from app.db.writer import WriteFailed, WriteRefused, WriterOverloaded, WriteTimedOut
from app.http_protocol import URL_CUT_OFF
from app.payloads import Callback, Dlr, EventKind, Mo, MtLink
from app.rules.records import build_event_records
from app.rules.webhook_body import (
    BodyRejected,
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

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class IngestResult(BaseModel):
    received: int = Field(description="Items in the body, all now stored", examples=[1])
    duplicates: int = Field(description="Of those, how many were already stored", examples=[0])


KEY_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "key",
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": "Webhook key (or send it as X-Webhook-Key, or as a basic-auth password)",
    },
    {
        "name": "X-Webhook-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "Webhook key",
    },
]


def _body_schema(model: type[BaseModel], max_items: int = 1000) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "parameters": KEY_PARAMETERS,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [ref, {"type": "array", "items": ref, "maxItems": max_items}]
                    }
                }
            },
        },
    }


def _query_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A model field's schema as a query parameter: its non-null form (absent means null)."""
    branches = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
    return {k: v for k, v in branches[0].items() if k not in ("title", "default")}


def _mo_query_parameters() -> list[dict[str, Any]]:
    """The GET form of an MO, documented from the same models that validate it."""
    parameters = []
    for name, schema in Mo.model_json_schema(by_alias=True)["properties"].items():
        if name != "mt":
            parameters.append(
                {
                    "name": name,
                    "in": "query",
                    "required": name == "id",
                    "schema": _query_schema(schema),
                }
            )
    for name, schema in MtLink.model_json_schema(by_alias=True)["properties"].items():
        parameters.append(
            {
                "name": f"mt.{name}",
                "in": "query",
                "required": False,
                "schema": _query_schema(schema),
                "description": f"The MT this MO answers: its {name} (or mt{name[:1].upper()}"
                f"{name[1:]})",
            }
        )
    return parameters


INGEST_RESPONSES = responses(400, 401, 403, 408, 413, 422, 503)


async def read_limited_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, refused once it passes ``limit`` bytes (we stop reading there, so an endless
    or huge body costs at most ``limit`` bytes of memory) or ``timeout_s`` seconds (a slow
    sender cannot hold the connection). The refusal carries what had arrived."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    chunks.append(chunk[: len(chunk) - (size - limit)])
                    raise PartialBody(b"".join(chunks), too_large(limit))
                chunks.append(chunk)
    except TimeoutError:
        raise PartialBody(b"".join(chunks), too_slow(timeout_s)) from None
    return b"".join(chunks)


class PartialBody(Exception):
    """The body was cut off; ``received`` is what had arrived."""

    def __init__(self, received: bytes, rejection: BodyRejected) -> None:
        super().__init__(rejection.message)
        self.received = received
        self.rejection = rejection


async def _keep_rejected(
    engine: AsyncEngine,
    request: Request,
    caller: WebhookCaller,
    kind: EventKind,
    body: bytes,
    truncated: bool,
    rejection: BodyRejected,
) -> ApiError:
    """Keep the refused body for an operator, then build the answer. If even that cannot be
    stored, answer 503 so the sender retries instead of dropping the body on a 4xx."""
    settings: Settings = request.app.state.settings
    try:
        async with engine.begin() as conn:
            await store_rejected_body(
                conn,
                RejectedBody(
                    endpoint=kind,
                    method=request.method,
                    sub_account=caller.sub_account,
                    status_code=rejection.status_code,
                    reason=rejection.reason,
                    detail=rejection.details,
                    content_type=request.headers.get("content-type"),
                    body=body,
                    body_truncated=truncated,
                ),
                RejectedBudget(
                    per_key_bytes=settings.rejected_max_bytes_per_key,
                    total_bytes=settings.rejected_max_bytes,
                ),
            )
    except (SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as error:
        log.warning("could not store a rejected %s body: %s", kind, error)
        return unavailable("storage unavailable; the body was not recorded")
    metrics.REJECTED.labels(kind, rejection.reason).inc()
    return ApiError(
        rejection.status_code, rejection.reason, rejection.message, details=rejection.details
    )


def _overloaded() -> ApiError:
    metrics.UNAVAILABLE.labels("overloaded").inc()
    return unavailable("overloaded; nothing was stored, retry later")


async def _store(
    kind: EventKind,
    parsed: ParsedBody,
    context: WebhookContext,
    received_at: datetime,
    request: Request,
    kept: Callable[[], bytes],
) -> OrjsonResponse:
    """Hand the records to the writer and answer from the outcome; ``kept()`` is what becomes
    the rejected body if PostgreSQL refuses the data itself."""
    try:
        records = build_event_records(
            kind,
            parsed.payloads,
            parsed.payloads_json,
            sub_account=context.caller.sub_account,
            received_at=received_at,
        )
    except BodyRejected as rejection:
        raise await _keep_rejected(
            context.engine, request, context.caller, kind, kept(), False, rejection
        ) from None
    if not records:
        return OrjsonResponse({"received": 0, "duplicates": 0})
    try:
        result = await context.writer.write(records)  # bounded by WAVY_WRITER_TIMEOUT_S
    except WriterOverloaded:
        raise _overloaded() from None
    except WriteRefused as refusal:
        raise await _keep_rejected(
            context.engine,
            request,
            context.caller,
            kind,
            kept(),
            False,
            refused_by_database(refusal.sqlstate),
        ) from None
    except WriteFailed as failure:
        reason = "timeout" if isinstance(failure, WriteTimedOut) else "write_failed"
        metrics.UNAVAILABLE.labels(reason).inc()
        raise unavailable("storage unavailable; nothing was confirmed, retry later") from None
    if result.refused:
        foreign = owned_elsewhere(result.refused, [parsed.payloads[i].id for i in result.refused])
        raise await _keep_rejected(
            context.engine, request, context.caller, kind, kept(), False, foreign
        ) from None
    metrics.EVENTS.labels(kind, "accepted").inc(result.received - result.duplicates)
    if result.duplicates:
        metrics.EVENTS.labels(kind, "duplicate").inc(result.duplicates)
    return OrjsonResponse({"received": result.received, "duplicates": result.duplicates})


async def _ingest_post(
    kind: EventKind, request: Request, context: WebhookContext
) -> OrjsonResponse:
    received_at = datetime.now(UTC)
    settings = context.settings
    try:
        body = await read_limited_body(request, settings.max_body_bytes, settings.body_timeout_s)
    except PartialBody as cut:
        raise await _keep_rejected(
            context.engine, request, context.caller, kind, cut.received, True, cut.rejection
        ) from None
    if context.writer.is_full():
        raise _overloaded()
    try:
        parsed = parse_webhook_body(kind, body, max_items=settings.max_items)
    except BodyRejected as rejection:
        raise await _keep_rejected(
            context.engine, request, context.caller, kind, body, False, rejection
        ) from None
    return await _store(kind, parsed, context, received_at, request, lambda: body)


@router.post(
    "/callback",
    summary="Receive callbacks (first status: did the carrier take the message)",
    openapi_extra=_body_schema(Callback),
    response_model=IngestResult,
    responses=INGEST_RESPONSES,
)
async def receive_callback(request: Request, context: WebhookContextDep) -> OrjsonResponse:
    return await _ingest_post("callback", request, context)


@router.post(
    "/dlr",
    summary="Receive DLRs (second status: did the message reach the phone)",
    openapi_extra=_body_schema(Dlr),
    response_model=IngestResult,
    responses=INGEST_RESPONSES,
)
async def receive_dlr(request: Request, context: WebhookContextDep) -> OrjsonResponse:
    return await _ingest_post("dlr", request, context)


@router.post(
    "/mo",
    summary="Receive MOs (user replies) as JSON",
    openapi_extra=_body_schema(Mo),
    response_model=IngestResult,
    responses=INGEST_RESPONSES,
)
async def receive_mo(request: Request, context: WebhookContextDep) -> OrjsonResponse:
    return await _ingest_post("mo", request, context)


@router.get(
    "/mo",
    summary="Receive an MO as a query string",
    description=(
        "The MO's fields as query parameters (`id`, `subAccount`, `messageText`, ...), the MT "
        "it answers as `mt.id`, `mt.correlationId`, `mt.username`, `mt.email` (or `mtId`...)."
    ),
    openapi_extra={"parameters": [*KEY_PARAMETERS, *_mo_query_parameters()]},
    response_model=IngestResult,
    responses=INGEST_RESPONSES,
)
async def receive_mo_by_get(request: Request, context: WebhookContextDep) -> OrjsonResponse:
    received_at = datetime.now(UTC)
    query = request.url.query
    if context.writer.is_full():
        raise _overloaded()

    def kept() -> bytes:  # the refused query, without the key, as its rejected body
        return query_without_credentials(query)[: context.settings.max_body_bytes].encode()

    cut_off = URL_CUT_OFF in request.scope.get("extensions", {})
    try:
        if cut_off:
            raise url_too_long(context.settings.max_head_bytes)
        if len(query) > context.settings.max_body_bytes:
            raise too_large(context.settings.max_body_bytes)
        parsed = parse_mo_query(query)
    except BodyRejected as rejection:
        raise await _keep_rejected(
            context.engine, request, context.caller, "mo", kept(), cut_off, rejection
        ) from None
    return await _store("mo", parsed, context, received_at, request, kept)
