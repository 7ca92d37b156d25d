"""Wavy's send API, on Wavy's paths, for clients that send through the service by changing only
the host: ``POST /v1/send-sms``, its ``GET`` form, and ``POST /v1/send-bulk-sms``. Each route
authenticates (before reading a byte of the body), reads the body within its cap, calls
app.services.sending and answers.

Errors are in Wavy's shape, ``{"errorCode", "errorMessage"}``, since its clients read that, not
the rest of the API's (app.api.errors rewrites them on these paths). These routes read their
own bodies rather than through app.api.routing: the body is Wavy's free-form JSON, passed on,
and no model parses it; they apply the same rules (credentials first, a capped body)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.deps import TOKEN_HEADER, USERNAME_HEADER, authenticate
from app.api.routing import body_cap, read_capped_body
from app.errors import BadSend
from app.rules.scope import Reader
from app.services import sending as service
from app.services.sending import SendAnswer, SendContext
from app.settings import Settings

router = APIRouter(tags=["sending"])

# A message of up to 1280 characters and its options; a bulk's 1000 of them.
SINGLE_BODY_BYTES = 64 * 1024
BULK_BODY_BYTES = 4 * 1024 * 1024

Send = Callable[[SendContext, Reader, Mapping[str, str], Any], Awaitable[SendAnswer]]

_ERROR_BODY = {
    "type": "object",
    "properties": {"errorCode": {"type": "integer"}, "errorMessage": {"type": "string"}},
}


def _answers(cap: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of a send route whose body may take ``cap`` bytes."""
    return {
        code: {"description": text, "content": {"application/json": {"schema": _ERROR_BODY}}}
        for code, text in {
            400: "A send Wavy would refuse: no destination, no text, too long, over 1000 messages",
            401: "Wrong UserName or AuthenticationToken: nothing reaches Wavy",
            403: "Wavy refused the credentials (its body passed on)",
            408: "The body did not arrive in time",
            413: f"The body passes {cap} bytes (declared or sent)",
            409: "The Idempotency-Key was used with another body, or its send still runs",
            429: "Past WAVY_SEND_MAX_RPS, or Wavy's rate limit (Retry-After), or failed logins",
            502: "Wavy answered 5xx (its body passed on), or could not be reached (nothing sent)",
            503: "The service could not record the send; nothing was sent",
            504: "Wavy did not answer in time: the MT is kept as unknown, never sent again",
        }.items()
    }


IDEMPOTENCY_HEADER = "Idempotency-Key"
CREDENTIAL_HEADERS = (USERNAME_HEADER, TOKEN_HEADER)
_HEADERS = [
    {"name": USERNAME_HEADER, "in": "header", "required": True, "schema": {"type": "string"}},
    {"name": TOKEN_HEADER, "in": "header", "required": True, "schema": {"type": "string"}},
    {
        "name": IDEMPOTENCY_HEADER,
        "in": "header",
        "required": False,
        "schema": {"type": "string", "maxLength": 255},
        "description": "a retry with the same key and body within 24 h gets the first answer "
        "and sends nothing; the same key with another body gets 409",
    },
]


def _documented(cap: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        **body_cap(cap),
        "parameters": _HEADERS,
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
    }


_SINGLE_SCHEMA = {
    "type": "object",
    "required": ["destination"],
    "properties": {
        "destination": {"type": "string", "examples": ["5519900001111"]},
        "messageText": {"type": "string", "maxLength": 1280},
        "correlationId": {"type": "string", "maxLength": 64},
        "subAccount": {"type": "string", "description": "admins: whose message it is"},
    },
    "additionalProperties": True,
}
_BULK_SCHEMA = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        "messages": {"type": "array", "maxItems": 1000, "items": _SINGLE_SCHEMA},
        "defaultValues": {"type": "object", "properties": {"messageText": {"type": "string"}}},
    },
    "additionalProperties": True,
}


def _context(request: Request) -> SendContext:
    state = request.app.state
    settings: Settings = state.settings
    return SendContext(
        engine=state.engine,
        writer=state.writer,
        wavy=state.wavy,
        region=settings.default_region,
        store_text=settings.send_store_text,
        recorder=state.mt_recorder,
        lookups=state.optout_lookups,
        rate=state.send_rate,
        max_wait_s=settings.send_max_wait_s,
    )


async def _answer(request: Request, body: Any | None, cap: int, send: Send) -> Response:
    """Credentials, then the body (``body`` when it came in the query string), then the
    service. Refusals are raised: app.api.errors answers them in Wavy's shape on these paths."""
    settings: Settings = request.app.state.settings
    if any(len(request.headers.getlist(name)) > 1 for name in CREDENTIAL_HEADERS):
        # Wavy would check another pair than the one checked here.
        raise BadSend("send one UserName and one AuthenticationToken header")
    reader = await authenticate(request)
    # Exactly the credentials that were checked go on to Wavy.
    credentials = {name: request.headers[name] for name in CREDENTIAL_HEADERS}
    if body is None:
        if "subAccount" in request.query_params:
            # The body names the sub-account; ignored here, an admin's query would have sent
            # the message for the whole account instead of the sub-account it named.
            raise BadSend("a send's subAccount goes in its JSON body, not in the query string")
        raw = await read_capped_body(request, cap, settings.body_timeout_s)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadSend("the body is not JSON") from None
    else:
        raw = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    context, parsed = _context(request), body
    answer = await service.send_idempotently(
        context,
        reader,
        request.headers.get(IDEMPOTENCY_HEADER),
        raw,
        lambda: send(context, reader, credentials, parsed),
    )
    return Response(
        answer.body,
        status_code=answer.status,
        media_type="application/json",
        headers=answer.headers,
    )


@router.post(
    "/v1/send-sms",
    summary="Send one SMS through Wavy (recorded; refused here when opted out, as Wavy does)",
    responses=_answers(SINGLE_BODY_BYTES),
    openapi_extra=_documented(SINGLE_BODY_BYTES, _SINGLE_SCHEMA),
)
async def send_sms(request: Request) -> Response:
    return await _answer(request, None, SINGLE_BODY_BYTES, service.send_one)


@router.get(
    "/v1/send-sms",
    summary="Send one SMS, its fields in the query string (destination, messageText, ...)",
    responses=_answers(0),
    openapi_extra={"parameters": _HEADERS},
)
async def send_sms_by_get(request: Request) -> Response:
    return await _answer(request, dict(request.query_params), 0, service.send_one)


@router.post(
    "/v1/send-bulk-sms",
    summary="Send up to 1000 SMS in one request, answered in the client's order",
    responses=_answers(BULK_BODY_BYTES),
    openapi_extra=_documented(BULK_BODY_BYTES, _BULK_SCHEMA),
)
async def send_bulk_sms(request: Request) -> Response:
    return await _answer(request, None, BULK_BODY_BYTES, service.send_bulk)
