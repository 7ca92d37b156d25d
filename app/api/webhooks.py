"""The URLs pasted into Wavy's portal: callbacks, DLRs and MOs (POST, and GET for MOs). Each
route authenticates (its one dependency), calls app.services.ingest and answers."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from app.api.deps import WebhookContextDep
from app.api.errors import OrjsonResponse, responses
from app.api.openapi import KEY_PARAMETERS, body_schema, mo_query_parameters
from app.http_protocol import BODY_ARRIVED, URL_CUT_OFF
from app.payloads import EVENT_KINDS, Callback, Dlr, EventKind, Mo
from app.services.ingest import Ingested, ingest_body, ingest_query

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class IngestResult(BaseModel):
    received: int = Field(description="Items in the body, all now stored", examples=[1])
    duplicates: int = Field(description="Of those, how many were already stored", examples=[0])


INGEST_RESPONSES = responses(400, 401, 403, 408, 413, 422, 503)

# The URLs a body is POSTed to, and what each receives: the routes below, and app.api.direct,
# which answers them in the HTTP protocol.
POSTED_KINDS: dict[str, EventKind] = {f"{router.prefix}/{kind}": kind for kind in EVENT_KINDS}


# The bodies Wavy's single-object calls get, encoded once. Not whole responses: one shared
# would hand every request the same header list, safe only while no layer adds to it.
_SINGLE_BODIES = {
    (received, duplicates): orjson.dumps({"received": received, "duplicates": duplicates})
    for received, duplicates in ((1, 0), (1, 1))
}


def _arrived(request: Request) -> bool:
    """Whether the server has the whole body (app.http_protocol): read, it cannot be slow."""
    return BODY_ARRIVED in request.scope.get("extensions", ())


def answer_body(ingested: Ingested) -> bytes:
    """What a stored webhook is answered, encoded."""
    body = _SINGLE_BODIES.get((ingested.received, ingested.duplicates))
    if body is None:
        return orjson.dumps({"received": ingested.received, "duplicates": ingested.duplicates})
    return body


def _answer(ingested: Ingested) -> Response:
    return Response(answer_body(ingested), media_type=OrjsonResponse.media_type)


@router.post(
    "/callback",
    summary="Receive callbacks (first status: did the carrier take the message)",
    openapi_extra=body_schema(Callback),
    response_model=IngestResult,
    responses=INGEST_RESPONSES,
)
async def receive_callback(request: Request, context: WebhookContextDep) -> Response:
    return _answer(await ingest_body("callback", request, context, arrived=_arrived(request)))


@router.post(
    "/dlr",
    summary="Receive DLRs (second status: did the message reach the phone)",
    openapi_extra=body_schema(Dlr),
    response_model=IngestResult,
    responses=INGEST_RESPONSES,
)
async def receive_dlr(request: Request, context: WebhookContextDep) -> Response:
    return _answer(await ingest_body("dlr", request, context, arrived=_arrived(request)))


@router.post(
    "/mo",
    summary="Receive MOs (user replies) as JSON",
    openapi_extra=body_schema(Mo),
    response_model=IngestResult,
    responses=INGEST_RESPONSES,
)
async def receive_mo(request: Request, context: WebhookContextDep) -> Response:
    return _answer(await ingest_body("mo", request, context, arrived=_arrived(request)))


@router.get(
    "/mo",
    summary="Receive an MO as a query string",
    description=(
        "The MO's fields as query parameters (`id`, `subAccount`, `messageText`, ...), the MT "
        "it answers as `mt.id`, `mt.correlationId`, `mt.username`, `mt.email` (or `mtId`...)."
    ),
    openapi_extra={"parameters": [*KEY_PARAMETERS, *mo_query_parameters()]},
    response_model=IngestResult,
    responses=INGEST_RESPONSES,
)
async def receive_mo_by_get(request: Request, context: WebhookContextDep) -> Response:
    cut_off = URL_CUT_OFF in request.scope.get("extensions", {})
    return _answer(await ingest_query(request, context, cut_off=cut_off))
