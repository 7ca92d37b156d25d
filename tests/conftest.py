"""Test harness: one clean PostgreSQL database per session (TEST_DATABASE_URL's server, else an
embedded one), the real app served by uvicorn on a real socket, and httpx talking to it.
Every test starts with empty tables."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.db import queries, users
from app.db.engine import (
    create_engine,
    normalize_database_url,
    start_embedded_postgres,
    stop_embedded_postgres,
    writer_connector,
)
from app.db.migrate import upgrade_to_head
from app.db.tables import metadata
from app.db.writer import BatchWriter
from app.http_protocol import server_options
from app.main import create_app
from app.payloads import EventKind, validate_items
from app.rules.records import EventRecord, build_event_records
from app.rules.scope import Role
from app.rules.webhook_body import items_as_json
from app.settings import Settings
from tests.wavy_stand_in import StandIn, wavy_stand_in

# Every table of the schema (alembic_version is not in the metadata): emptied before each test.
TABLES = tuple(metadata.tables)
# Emptied but numbered on: a worker's recount sweep may have read queued ids in the previous
# test and claim them in this one, which must not find them again on this test's rows (as
# nowhere but here can an id come back).
NUMBERED_ON = ("reply_recounts",)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """The PostgreSQL server the run uses: TEST_DATABASE_URL, else an embedded one."""
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    with tempfile.TemporaryDirectory(prefix="wavy-test-pg-") as data_dir:
        yield start_embedded_postgres(Path(data_dir))
        # Stopped now, before its directory goes: at exit it outlived pytest by a minute.
        stop_embedded_postgres(Path(data_dir))


async def _admin(url: str, statement: str) -> None:
    engine = create_async_engine(normalize_database_url(url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """A brand-new database for this run, migrated to head, dropped afterwards."""
    name = f"wavy_test_{secrets.token_hex(4)}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    upgrade_to_head(url)
    yield url
    asyncio.run(_admin(server_url, f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture
def empty_database(server_url: str) -> Iterator[str]:
    """A database of its own, not even migrated, dropped afterwards."""
    name = f"wavy_empty_{secrets.token_hex(4)}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_admin(server_url, f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
async def wavy_api() -> AsyncIterator[StandIn]:
    """A stand-in of Wavy's send API, which the app under test sends to."""
    async with wavy_stand_in() as stand_in:
        yield stand_in


@pytest.fixture(scope="session")
def settings(database_url: str, wavy_api: StandIn) -> Settings:
    return Settings(
        database_url=database_url,
        port=free_port(),
        public_url=None,
        writer_timeout_s=10,
        key_cache_seconds=60,  # so that only change notifications explain a quick refusal
        reader_cache_seconds=60,
        # Forwarding in the app under test, to endpoints on 127.0.0.1 (the tests' receivers),
        # retried within a second, not hours.
        forwarder="workers",
        forward_allow_private=True,
        forward_retry_schedule=[0, 0.3, 0.3],
        forward_timeout_s=2.0,
        # Sends go to the stand-in, and wait for it 1 s at most.
        api_url=wavy_api.url,
        send_timeout_s=1.0,
    )


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app on a real socket (uvicorn, lifespan on) for as long as the block runs."""
    application = create_app(settings)
    config = uvicorn.Config(
        application,
        host="127.0.0.1",
        port=settings.port,
        log_level="warning",
        lifespan="on",
        **server_options(settings),  # the service's own connection bounds, as `serve` runs
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # surfaces the start-up error
        await asyncio.sleep(0.02)
    try:
        yield application
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    async with serving(settings) as application:
        yield application


@pytest.fixture(scope="session")
def base_url(app: FastAPI, settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.port}"


@pytest.fixture
def engine(app: FastAPI) -> AsyncEngine:
    db: AsyncEngine = app.state.engine
    return db


@pytest.fixture(autouse=True)
async def clean_tables(app: FastAPI) -> None:
    renumbered = [table for table in TABLES if table not in NUMBERED_ON]
    for attempt in range(5):
        try:
            async with app.state.engine.begin() as conn:
                await conn.execute(text(f"TRUNCATE {', '.join(renumbered)} RESTART IDENTITY"))
                await conn.execute(text(f"TRUNCATE {', '.join(NUMBERED_ON)}"))
            break
        except DBAPIError as error:
            # The forwarder's transactions take the tables in another order than TRUNCATE's
            # list: PostgreSQL picks one side of such a deadlock, sometimes this one.
            if "deadlock" not in str(error) or attempt == 4:
                raise
    # The truncation is notified too, but asynchronously: no test meets the last one's logins.
    app.state.readers.forget()
    app.state.key_registry.forget()
    app.state.writer.optout_keywords.forget()


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        yield http


@contextmanager
def changed_settings(app: FastAPI, settings: Settings, **changes: Any) -> Iterator[Settings]:
    """The running app's settings with ``changes``, for as long as the block runs."""
    changed = settings.model_copy(update=changes)
    app.state.settings = changed
    try:
        yield changed
    finally:
        app.state.settings = settings


async def add_key(app: FastAPI, sub_account: str | None) -> str:
    async with app.state.engine.begin() as conn:
        _, key = await queries.add_webhook_key(conn, sub_account=sub_account)
    await app.state.key_registry.refresh()
    return key


@pytest.fixture
async def webhook_key(app: FastAPI) -> str:
    """A key of sub-account ``acme``."""
    return await add_key(app, "acme")


@pytest.fixture
async def hook(client: httpx.AsyncClient, webhook_key: str) -> Any:
    """``await hook("dlr", body)`` posts to a webhook with a valid key."""

    async def post(kind: str, body: Any = None, *, content: bytes | None = None) -> httpx.Response:
        if content is not None:
            return await client.post(
                f"/v1/webhooks/{kind}", params={"key": webhook_key}, content=content
            )
        return await client.post(f"/v1/webhooks/{kind}", params={"key": webhook_key}, json=body)

    return post


def records_of(kind: EventKind, item: dict[str, Any]) -> list[EventRecord]:
    """What the webhook would hand its writer for ``item`` (with the key of sub-account acme)."""
    return build_event_records(
        kind,
        validate_items(kind, [item]),
        items_as_json([item]),
        sub_account="acme",
        received_at=datetime.now(UTC),
    )


async def fetch_all(engine: AsyncEngine, sql: str, **params: Any) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(text(sql), params)
        return [dict(row._mapping) for row in result]


@asynccontextmanager
async def writes_going_to(
    app: FastAPI, settings: Settings, url: str, *, queue_items: int = 1000, **overrides: Any
) -> AsyncIterator[None]:
    """The app's engine and writer swapped for ones aimed at ``url`` (1 s connect timeout,
    unless ``overrides`` of the settings say otherwise)."""
    dead = settings.model_copy(
        update={
            "db_connect_timeout_s": 1.0,
            "db_pool_size": 1,
            "batch_max_items": 100,
            "batch_max_delay_ms": 50.0,
            "writer_queue_items": queue_items,
            **overrides,
        }
    )
    engine = create_engine(dead, url)
    writer = BatchWriter.of(dead, writer_connector(dead, url))
    await writer.start()
    real = app.state.engine, app.state.writer
    app.state.engine, app.state.writer = engine, writer
    try:
        yield
    finally:
        app.state.engine, app.state.writer = real
        await writer.stop()
        await engine.dispose()


@pytest.fixture
async def unreachable_database(
    app: FastAPI, settings: Settings, webhook_key: str
) -> AsyncIterator[None]:
    """Nothing listens on the port (the webhook key is made first, through the real one)."""
    async with writes_going_to(app, settings, "postgresql://postgres@127.0.0.1:9/nowhere"):
        yield


@asynccontextmanager
async def silent_database_url() -> AsyncIterator[str]:
    """A 'database' on a local port that accepts connections and never answers, so every
    connection attempt waits out its timeout, as during a network outage."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"postgresql://postgres@127.0.0.1:{port}/x"
    server.close()


@pytest.fixture
async def silent_database(
    app: FastAPI, settings: Settings, webhook_key: str
) -> AsyncIterator[None]:
    """Writes go to a database that never answers (1 s connect timeout)."""
    async with silent_database_url() as url, writes_going_to(app, settings, url):
        yield


@pytest.fixture
def wavy(wavy_api: StandIn) -> Iterator[StandIn]:
    """The stand-in the app sends to, with nothing asked yet and its own answers (and left so
    for the tests after: it is the session's)."""
    wavy_api.reset()
    yield wavy_api
    wavy_api.reset()


@pytest.fixture
async def senders(app: FastAPI, wavy: StandIn) -> dict[str, dict[str, str]]:
    """Credentials as Wavy's clients write them (lower case, courier's way), and the lists."""
    wavy.reset()
    found = {}
    async with app.state.engine.begin() as conn:
        for name, role, sub in (
            ("boss", Role.ADMIN, None),
            ("ana@acme.example", Role.USER, "acme"),
            ("Gil da Globex", Role.USER, "globex"),
        ):
            token = await users.add_user(
                conn, username=name, role=role, sub_account=sub, email=None, token=None
            )
            found[name] = {"username": name, "authenticationtoken": token}
    return found
