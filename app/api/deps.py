"""FastAPI dependencies: settings, the engine, the writer, who is calling (a webhook sender or
a read-API user) and what they may see."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api.errors import ApiError
from app.db.key_registry import KeyRegistry
from app.db.users import authenticate_reader
from app.db.writer import BatchWriter
from app.rules.scope import OutsideScope, Reader, Scope, resolve_scope
from app.settings import Settings, get_settings

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


def get_writer(request: Request) -> BatchWriter:
    writer: BatchWriter = request.app.state.writer
    return writer


def get_key_registry(request: Request) -> KeyRegistry:
    registry: KeyRegistry = request.app.state.key_registry
    return registry


EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
WriterDep = Annotated[BatchWriter, Depends(get_writer)]


@dataclass(frozen=True, slots=True)
class WebhookCaller:
    """Whoever presented a valid webhook key; callbacks and DLRs take its sub-account."""

    sub_account: str | None


def _basic_auth_password(authorization: str | None) -> str | None:
    if not authorization or authorization[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, sep, password = decoded.partition(":")
    return password if sep else None


UNAUTHORIZED = ApiError(
    401,
    "unauthorized",
    "a valid webhook key is required (?key=, X-Webhook-Key header, or basic-auth password)",
    headers={"WWW-Authenticate": 'Basic realm="wavy-webhooks"'},
)


async def authenticate_webhook(
    settings: SettingsDep,
    registry: Annotated[KeyRegistry, Depends(get_key_registry)],
    key: Annotated[str | None, Query(description="Webhook key, if not sent in a header")] = None,
    x_webhook_key: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> WebhookCaller:
    presented = key or x_webhook_key or _basic_auth_password(authorization)
    if presented:
        found = await registry.find(presented)
        if found is not None:
            return WebhookCaller(sub_account=found.sub_account)
    if settings.open_ingest:
        return WebhookCaller(sub_account=None)
    raise UNAUTHORIZED


WebhookCallerDep = Annotated[WebhookCaller, Depends(authenticate_webhook)]


READER_UNAUTHORIZED = ApiError(
    401, "unauthorized", "valid UserName and AuthenticationToken headers are required"
)


async def current_reader(
    engine: EngineDep,
    username: Annotated[
        str | None, Header(alias="UserName", description="Username or e-mail")
    ] = None,
    token: Annotated[str | None, Header(alias="AuthenticationToken")] = None,
) -> Reader:
    """The read API's caller. Every failure (missing header, unknown user, wrong token,
    disabled user) gets the very same 401."""
    if not username or not token:
        raise READER_UNAUTHORIZED
    async with engine.connect() as conn:
        reader = await authenticate_reader(conn, username, token)
    if reader is None:
        raise READER_UNAUTHORIZED
    return reader


ReaderDep = Annotated[Reader, Depends(current_reader)]


def caller_scope(
    reader: ReaderDep,
    sub_account: Annotated[
        str | None,
        Query(alias="subAccount", description="Admins: narrow to one sub-account"),
    ] = None,
) -> Scope:
    try:
        return resolve_scope(reader, sub_account)
    except OutsideScope:
        raise ApiError(403, "forbidden", "that sub-account is not yours") from None


ScopeDep = Annotated[Scope, Depends(caller_scope)]
