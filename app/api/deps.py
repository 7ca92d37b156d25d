"""FastAPI dependencies: the engine, the webhook context (caller, settings, writer), the
read-API user and what they may see."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import QueryParams, State
from starlette.types import Scope as StarletteScope

from app import metrics
from app.api.errors import ApiError
from app.api.params import SearchText
from app.db.reader_cache import ReaderCache
from app.errors import LoginsThrottled
from app.rules.scope import OutsideScope, Reader, Scope, resolve_scope
from app.services.ingest import WebhookCaller, WebhookContext
from app.settings import Settings

# Every dependency here is ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in
# a thread pool, and those thread hops cost more than everything else a webhook does (measured:
# the no-database ceiling went from 637 to several thousand requests/s).


async def get_engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


EngineDep = Annotated[AsyncEngine, Depends(get_engine)]


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def _basic_auth_password(authorization: str | None) -> str | None:
    if not authorization or authorization[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, sep, password = decoded.partition(":")
    return password if sep else None


# Errors are built per request, never shared: a shared instance's __traceback__ and
# __context__ are overwritten by every concurrent request that raises it (Starlette happens to
# clear them after handling today; nothing here should depend on that).
def webhook_unauthorized() -> ApiError:
    return ApiError(
        401,
        "unauthorized",
        "a valid webhook key is required (?key=, X-Webhook-Key header, or basic-auth password)",
        headers={"WWW-Authenticate": 'Basic realm="wavy-webhooks"'},
    )


def _key_in_plain_query(query: bytes) -> str | None:
    """``key`` of a query string with nothing escaped, the last one as Starlette's QueryParams
    gives it, at a fraction of its cost (a third of a keyed webhook's extra work); None when
    the string holds an escape or a '+', which only QueryParams reads right."""
    if b"%" in query or b"+" in query:
        return None
    found = ""
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        if name == b"key":
            found = value.decode("latin-1")
    return found


def _presented_key(scope: StarletteScope) -> str | None:
    """The webhook key as presented: the ``key`` query parameter, else the ``X-Webhook-Key``
    header, else the basic-auth password. Read from the raw request, as the hottest path's
    every request pays for what this builds."""
    query: bytes = scope["query_string"]
    if query:
        key = _key_in_plain_query(query)
        if key is None:  # percent-escapes or '+': read as Starlette reads any query
            key = QueryParams(query).get("key")
        if key:
            return key
    header_key = authorization = None
    for name, value in scope["headers"]:
        if name == b"x-webhook-key" and header_key is None:
            header_key = value.decode("latin-1")
        elif name == b"authorization" and authorization is None:
            authorization = value.decode("latin-1")
    return header_key or _basic_auth_password(authorization)


async def webhook_context(request: Request) -> WebhookContext:
    """Reads the key straight from the request rather than through declared parameters, which
    cost FastAPI a validation pass per request; the routes document them in OpenAPI instead."""
    return await webhook_context_of(request.app.state, request.scope)


async def webhook_context_of(state: State, scope: StarletteScope) -> WebhookContext:
    """The webhook's caller, by the key its request presents (``scope``'s query string and
    headers), with what ingesting needs from the app's ``state``: the one rule of webhook
    authentication, for the routes and for app.api.direct alike."""
    settings: Settings = state.settings
    presented = _presented_key(scope)
    caller: WebhookCaller | None = None
    if presented:
        found = await state.key_registry.find(presented)  # KeysUnavailable: a 503
        if found is not None:
            caller = WebhookCaller(sub_account=found.sub_account)
    if caller is None and settings.open_ingest:
        caller = WebhookCaller(sub_account=None)
    if caller is None:
        metrics.WEBHOOK_AUTH_FAILURES.labels("unknown_key" if presented else "no_key").inc()
        raise webhook_unauthorized()
    return WebhookContext(
        caller=caller, settings=settings, engine=state.engine, writer=state.writer
    )


WebhookContextDep = Annotated[WebhookContext, Depends(webhook_context)]


# Wavy's own names for the read API's credentials (a browser page on another origin must be
# allowed to send them: app.main's CORS).
USERNAME_HEADER, TOKEN_HEADER = "UserName", "AuthenticationToken"
READER_CREDENTIAL_HEADERS = (USERNAME_HEADER, TOKEN_HEADER)


def reader_unauthorized() -> ApiError:
    return ApiError(
        401, "unauthorized", f"valid {USERNAME_HEADER} and {TOKEN_HEADER} headers are required"
    )


# Where app.api.routing leaves the reader it authenticated before the body was read.
AUTHENTICATED_READER = "wavy.reader"


async def authenticate(request: Request) -> Reader:
    """The read API's caller, from its headers (any capitalisation, as HTTP's). Every failure
    (missing header, unknown user, wrong token, disabled user) gets the very same 401."""
    username = request.headers.get(USERNAME_HEADER)
    token = request.headers.get(TOKEN_HEADER)
    if not username or not token:
        metrics.READER_AUTH_FAILURES.inc()
        raise reader_unauthorized()
    readers: ReaderCache = request.app.state.readers
    client = request.client.host if request.client else ""
    try:
        reader = await readers.authenticate(username, token, client)
    except LoginsThrottled:
        metrics.READER_AUTH_FAILURES.inc()
        raise
    if reader is None:
        metrics.READER_AUTH_FAILURES.inc()
        raise reader_unauthorized()
    return reader


async def current_reader(
    request: Request,
    username: Annotated[
        str | None, Header(alias=USERNAME_HEADER, description="Username or e-mail")
    ] = None,
    token: Annotated[str | None, Header(alias=TOKEN_HEADER)] = None,
) -> Reader:
    """The caller that app.api.routing authenticated before reading the body (the headers are
    declared here for the API's documentation)."""
    found: Reader | None = request.scope.get(AUTHENTICATED_READER)
    return found if found is not None else await authenticate(request)


ReaderDep = Annotated[Reader, Depends(current_reader)]


async def caller_scope(
    reader: ReaderDep,
    sub_account: Annotated[
        SearchText | None,
        Query(alias="subAccount", description="Admins: narrow to one sub-account"),
    ] = None,
) -> Scope:
    try:
        return resolve_scope(reader, sub_account)
    except OutsideScope:
        raise ApiError(403, "forbidden", "that sub-account is not yours") from None


ScopeDep = Annotated[Scope, Depends(caller_scope)]
