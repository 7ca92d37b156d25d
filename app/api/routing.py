"""How every API route takes its request, before FastAPI parses anything: the caller's
credentials first, then the body, read within the route's cap and its deadline, then the JSON
checked strictly. A stranger's request costs a header lookup, never a parse; nobody's body
costs more memory than its route's cap.

Not FastAPI's own ``max_body_size``: Starlette's limiter swaps any answer to a request whose
declared length passes the cap for its own plain-text 413, a 401 included, so the caller would
learn the cap before its credentials were checked, and not in the API's error shape.

A route declares its cap once, ``openapi_extra=body_cap(N)``: it is enforced here, and the
OpenAPI document shows it (``x-max-body-bytes``) with the 413 it leads to."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from app.api.deps import AUTHENTICATED_READER, authenticate, current_reader
from app.api.errors import ApiError, ErrorBody
from app.services.ingest import BodyCutOff, read_limited_body
from app.settings import Settings

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
BODY_CAP_KEY = "x-max-body-bytes"


def body_cap(max_bytes: int) -> dict[str, Any]:
    """A route's ``openapi_extra``: the most bytes its body may take."""
    return {BODY_CAP_KEY: max_bytes}


def _needs_reader(dependant: Dependant) -> bool:
    return any(d.call is current_reader or _needs_reader(d) for d in dependant.dependencies)


def _too_large(cap: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the body passes this route's limit of {cap} bytes")


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


async def read_capped_body(request: Request, cap: int, timeout_s: float) -> bytes:
    """The body, refused as soon as its declared length or the bytes that arrived pass
    ``cap`` (nothing past the cap is ever held), or when it takes longer than ``timeout_s``
    (read as the webhooks read theirs)."""
    declared = _declared_length(request)
    if declared is not None and declared > cap:
        raise _too_large(cap)
    try:
        return await read_limited_body(request, cap, timeout_s)
    except BodyCutOff as cut:
        if cut.refusal.reason == "body_timeout":
            raise ApiError(408, "request_timeout", cut.refusal.message) from None
        raise _too_large(cap) from None


def _is_json(request: Request) -> bool:
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


def check_json(body: bytes) -> None:
    """Python's parser, which FastAPI uses, takes what no JSON text may hold and the database
    cannot store: unpaired surrogates (``"\\ud800"``), NaN and Infinity. orjson refuses them."""
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", error.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": error.msg},
                }
            ]
        ) from None


def _replaying(request: Request, body: bytes) -> Request:
    """The same request for FastAPI's handler, its body served from what was read."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await request.receive()

    return Request(request.scope, receive)


class CheckedRoute(APIRoute):
    """Every route of the API but the webhooks' (whose service reads its own bodies)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        cap: int | None = (kwargs.get("openapi_extra") or {}).get(BODY_CAP_KEY)
        if cap is not None:
            kwargs["responses"] = {
                **(kwargs.get("responses") or {}),
                408: {"model": ErrorBody, "description": "The body did not arrive in time"},
                413: {"model": ErrorBody, "description": f"The body passes {cap} bytes"},
            }
        self.body_cap = cap  # before FastAPI's __init__, which builds the handler
        super().__init__(path, endpoint, **kwargs)
        if self.body_field is not None and cap is None:
            raise TypeError(f"{path}: a route that takes a body declares its cap (body_cap)")

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        needs_reader = _needs_reader(self.dependant)
        cap = self.body_cap
        if not needs_reader and cap is None:
            return handler

        async def checked(request: Request) -> Response:
            if needs_reader:
                request.scope[AUTHENTICATED_READER] = await authenticate(request)
            if cap is None:
                return await handler(request)
            settings: Settings = request.app.state.settings
            body = await read_capped_body(request, cap, settings.body_timeout_s)
            if body and _is_json(request):
                check_json(body)
            return await handler(_replaying(request, body))

        return checked
