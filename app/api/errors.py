"""Every error answer has one shape: ``{"error": {"code", "message", "details"}}``, with a stable
machine-readable code. This module defines it, documents it, and is the one place where the
service's errors (app.errors) become HTTP answers; its handlers make FastAPI's own errors (404,
405, query validation), database outages and unexpected faults use the same shape."""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from app import metrics
from app.db.engine import database_unavailable
from app.errors import (
    BadSend,
    EndpointNotFound,
    EndpointUrlRefused,
    ForeignEndpoint,
    LoginsThrottled,
    NoSuchKeyword,
    Refused,
    Unavailable,
    UnavailableReason,
    UnknownTimeZone,
    UnreadableNumber,
    UnusableKeyword,
)
from app.rules.webhook_body import REFUSAL_STATUS

log = logging.getLogger(__name__)


class OrjsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ErrorDetail(BaseModel):
    code: str = Field(examples=["validation_failed"])
    message: str = Field(examples=["1 item(s) failed validation"])
    details: list[dict[str, Any]] | None = Field(
        default=None,
        examples=[[{"index": 0, "field": "id", "message": "Field required", "type": "missing"}]],
    )


class ErrorBody(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def error_response(
    status_code: int,
    code: str,
    message: str,
    *,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> OrjsonResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return OrjsonResponse({"error": body}, status_code=status_code, headers=headers)


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give."""
    descriptions = {
        400: "Malformed JSON or empty body",
        401: "Missing or wrong credentials",
        403: "Outside the caller's sub-account",
        404: "Not found (or outside the caller's scope)",
        408: "The body did not arrive in time (WAVY_BODY_TIMEOUT_S)",
        413: "Body over 1 MiB or array over 1000 items",
        422: "Body or parameters do not validate; details name each field (and item index)",
        429: "Too many failed logins from this client; retry after Retry-After seconds",
        503: "Storage unavailable or overloaded; retry after Retry-After seconds",
    }
    return {code: {"model": ErrorBody, "description": descriptions[code]} for code in codes}


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "too_many_requests",
}


def _allowed_methods(request: Request) -> list[str]:
    """Every method the API documents for this path. Starlette's own 405 names only the first
    route that matched the path (/v1/webhooks/mo has a POST route and a GET route)."""
    path = request.url.path
    for template, operations in request.app.openapi()["paths"].items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            return sorted(method.upper() for method in operations)
    return []


# Wavy's send API, served here: its clients read Wavy's error shape, {"errorCode",
# "errorMessage"}, on these paths (app.api.sending), a 405 included.
WAVY_SHAPED_PATHS = "/v1/send-"

# What a 503 says: never the driver's text, which may quote data.
UNAVAILABLE_MESSAGES: dict[UnavailableReason, str] = {
    "database": "the database is unavailable; nothing was stored, retry later",
    "keys_unavailable": "cannot check the webhook key now; nothing was stored",
    "overloaded": "overloaded; nothing was stored, retry later",
    "timeout": "storage unavailable; nothing was confirmed, retry later",
    "write_failed": "storage unavailable; nothing was confirmed, retry later",
}

# What a request whose client hung up before it was read counts as (nginx's code for it).
CLIENT_CLOSED_REQUEST = 499
UNAVAILABLE_RETRY_AFTER_S = "5"
OUTAGE_LOG_EVERY_S = 60.0


def unavailable(message: str) -> ApiError:
    return ApiError(503, "unavailable", message, headers={"Retry-After": UNAVAILABLE_RETRY_AFTER_S})


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(
            exc.status_code, exc.code, exc.message, details=exc.details, headers=exc.headers
        )

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return error_response(exc.status_code, code, str(exc.detail), headers=headers)

    async def on_request_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        details = [
            {
                "field": ".".join(str(part) for part in problem["loc"]),
                "message": problem["msg"],
                "type": problem["type"],
            }
            for problem in exc.errors()
        ]
        return error_response(422, "validation_failed", "request did not validate", details=details)

    # One line a minute at most: an outage would otherwise log every read request it fails.
    outage_logged_at = float("-inf")
    answered_since = 0

    async def on_database_error(request: Request, exc: Exception) -> Response:
        nonlocal outage_logged_at, answered_since
        if not database_unavailable(exc):
            raise exc  # a fault of ours: on_unexpected logs it and answers 500
        answered_since += 1
        if time.monotonic() - outage_logged_at >= OUTAGE_LOG_EVERY_S:
            log.warning(
                "%d request(s) answered 503, the database unavailable; the last, %s %s: %r",
                answered_since,
                request.method,
                request.url.path,
                exc,
            )
            outage_logged_at, answered_since = time.monotonic(), 0
        answer = unavailable("the database is unavailable; retry later")
        return error_response(503, answer.code, answer.message, headers=answer.headers)

    async def on_refused(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        return error_response(
            REFUSAL_STATUS[exc.reason], exc.reason, exc.message, details=exc.details
        )

    async def on_unavailable(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, Unavailable)
        metrics.UNAVAILABLE.labels(exc.reason).inc()
        answer = unavailable(UNAVAILABLE_MESSAGES[exc.reason])
        return error_response(503, answer.code, answer.message, headers=answer.headers)

    async def on_logins_throttled(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginsThrottled)
        retry_after = str(max(1, math.ceil(exc.wait_s)))
        return error_response(
            429, "too_many_failed_logins", str(exc), headers={"Retry-After": retry_after}
        )

    async def on_unknown_time_zone(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, UnknownTimeZone)
        return error_response(422, "invalid_tz", str(exc))

    async def on_endpoint_not_found(_: Request, exc: Exception) -> Response:
        return error_response(404, "not_found", "no such endpoint")

    async def on_foreign_endpoint(_: Request, exc: Exception) -> Response:
        return error_response(403, "forbidden", "that sub-account is not yours")

    async def on_endpoint_url_refused(_: Request, exc: Exception) -> Response:
        return error_response(422, "invalid_url", str(exc))

    async def on_unreadable_number(_: Request, exc: Exception) -> Response:
        return error_response(422, "not_a_phone_number", str(exc))

    async def on_unusable_keyword(_: Request, exc: Exception) -> Response:
        return error_response(422, "invalid_keyword", str(exc))

    async def on_no_such_keyword(_: Request, exc: Exception) -> Response:
        return error_response(404, "not_found", "this list sets no such keyword")

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "internal error")

    async def on_bad_send(_: Request, exc: Exception) -> Response:
        return error_response(400, "bad_request", str(exc))

    async def on_client_gone(_: Request, exc: Exception) -> Response:
        # The client hung up before its body had all come (a sender's own timeout, under a
        # burst): nothing was done for it, and no one reads this answer. Not a fault of ours
        # to log as one; the access log and the metrics show it as nginx's 499.
        return error_response(CLIENT_CLOSED_REQUEST, "client_closed_request", "client gone")

    handlers: list[tuple[type[Exception], ExceptionHandler]] = [
        (ApiError, on_api_error),
        (Refused, on_refused),
        (Unavailable, on_unavailable),
        (LoginsThrottled, on_logins_throttled),
        (UnknownTimeZone, on_unknown_time_zone),
        (EndpointNotFound, on_endpoint_not_found),
        (ForeignEndpoint, on_foreign_endpoint),
        (EndpointUrlRefused, on_endpoint_url_refused),
        (UnreadableNumber, on_unreadable_number),
        (UnusableKeyword, on_unusable_keyword),
        (NoSuchKeyword, on_no_such_keyword),
        (BadSend, on_bad_send),
        (ClientDisconnect, on_client_gone),
        (StarletteHTTPException, on_http_error),
        (RequestValidationError, on_request_validation),
        # Handled here rather than as any Exception: Starlette re-raises what reaches its last
        # handler, and uvicorn would log a traceback per request of an outage.
        *((kind, on_database_error) for kind in DATABASE_ERRORS),
        (Exception, on_unexpected),
    ]
    for kind, handler in handlers:
        app.add_exception_handler(kind, in_wavys_shape_on_its_paths(handler))


ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]
DATABASE_ERRORS = (OSError, sa_exc.SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError)


def in_wavys_shape_on_its_paths(handler: ExceptionHandler) -> ExceptionHandler:
    """The handler's answer, rewritten in Wavy's error shape on Wavy's send paths (its clients
    read {"errorCode", "errorMessage"}; a 401 says "Authentication Error" as Wavy's does)."""

    async def answer(request: Request, exc: Exception) -> Response:
        response = await handler(request, exc)
        if not request.url.path.startswith(WAVY_SHAPED_PATHS):
            return response
        message = orjson.loads(response.body)["error"]["message"]
        if response.status_code == 401:
            message = f"Authentication Error: {message}"
        body = orjson.dumps({"errorCode": response.status_code, "errorMessage": message})
        kept = {k: v for k, v in response.headers.items() if k != "content-length"}
        return Response(body, response.status_code, kept, media_type="application/json")

    return answer
