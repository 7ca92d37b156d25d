"""Each table's columns are defined once (app.db.tables): the writer's column lists are read
from it, and the records the rules build must carry exactly those columns, or a new column
would silently never be written."""

from __future__ import annotations

from dataclasses import fields

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request

from app.api import sending, webhooks
from app.api.deps import EngineDep, WebhookContextDep
from app.api.fast_path import FastPath
from app.db import ingest
from app.db.tables import events, messages, mos
from app.main import add_routes
from app.rules.records import EventRecord, MoRecord
from app.rules.status_merge import DESCRIPTIVE_FIELDS, MessageStatus


def names(record: type) -> list[str]:
    return [field.name for field in fields(record)]


def test_a_status_record_carries_every_column_the_writer_sends_to_messages() -> None:
    assert names(MessageStatus) == list(ingest._STATUS_COLUMNS)
    assert set(ingest._STATUS_COLUMNS) | {"change_seq", "tx_id", "reply_count"} == set(
        messages.c.keys()
    )
    assert set(DESCRIPTIVE_FIELDS) <= set(ingest._STATUS_COLUMNS)


def test_a_reply_record_carries_every_column_the_writer_sends_to_mos() -> None:
    assert names(MoRecord) == list(ingest._MO_COLUMNS)
    assert set(ingest._MO_COLUMNS) | {"seq", "tx_id"} == set(mos.c.keys())


def test_an_event_record_carries_every_column_of_the_event_log() -> None:
    assert set(ingest._EVENT_FIELDS) <= set(names(EventRecord))
    assert [*ingest._EVENT_FIELDS, "payload"] == [c.name for c in events.c if c.name != "id"]


def test_the_fast_path_refuses_a_route_whose_dependencies_it_would_skip() -> None:
    """The fast path calls a route's function with the request, and the webhook context if it
    declares that: a route that declares more must not be served by it without them."""
    router = APIRouter()

    @router.post("/v1/webhooks/more")
    async def with_more(request: Request, context: WebhookContextDep, engine: EngineDep) -> None:
        return None

    @router.get("/v1/send-with-query")
    async def with_query(request: Request, to: str) -> None:
        return None

    for route in router.routes:
        with pytest.raises(TypeError, match=getattr(route, "path", "")):
            FastPath(webhooks.router, routes=[route])
    FastPath(webhooks.router, routes=[*webhooks.router.routes, *sending.router.routes])


def test_a_router_level_dependency_stops_the_app_rather_than_being_dropped() -> None:
    """The app takes each router's routes as they are (app.main.add_routes): a dependency
    declared on a router, which an include would see to, must not be skipped unnoticed."""
    guarded = APIRouter(prefix="/v1/guarded", dependencies=[Depends(lambda: None)])

    @guarded.get("/things")
    async def things() -> None:
        return None

    with pytest.raises(TypeError, match="/v1/guarded"):
        add_routes(FastAPI(), guarded)
