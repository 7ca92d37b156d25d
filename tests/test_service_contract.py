"""Promises that hold across the service: no 2xx without a commit, documented API, URL spellings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.db.engine import create_engine, normalize_database_url
from app.db.writer import BatchWriter
from app.settings import Settings


@pytest.mark.parametrize(
    "raw",
    [
        "postgres://u:p@db:5432/wavy",
        "postgresql://u:p@db:5432/wavy",
        "postgresql+asyncpg://u:p@db:5432/wavy",
        "postgresql+psycopg://u:p@db:5432/wavy",
    ],
)
def test_every_postgres_url_spelling_means_asyncpg(raw: str) -> None:
    url = normalize_database_url(raw)

    assert url.drivername == "postgresql+asyncpg"
    assert (url.host, url.port, url.database, url.password) == ("db", 5432, "wavy", "p")


def test_other_databases_are_refused() -> None:
    with pytest.raises(ValueError, match="only PostgreSQL"):
        normalize_database_url("mysql://u:p@db/wavy")


@asynccontextmanager
async def writes_going_to(app: FastAPI, settings: Settings, url: str) -> AsyncIterator[None]:
    """The app's engine and writer swapped for ones aimed at ``url`` (1 s connect timeout)."""
    dead = settings.model_copy(update={"db_connect_timeout_s": 1.0, "db_pool_size": 1})
    engine = create_engine(dead, url)
    writer = BatchWriter(engine, max_items=100, max_delay_s=0.05, queue_items=1000)
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


@pytest.mark.usefixtures("unreachable_database")
async def test_database_unreachable_answers_503_never_200(hook: object) -> None:
    response = await hook("dlr", {"id": "m1", "sentStatusCode": 2})  # type: ignore[operator]

    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert response.json()["error"]["code"] == "unavailable"


@pytest.mark.usefixtures("unreachable_database")
async def test_bad_body_that_cannot_be_dead_lettered_gets_503_so_it_is_retried(
    hook: object,
) -> None:
    response = await hook("dlr", content=b"{broken")  # type: ignore[operator]

    assert response.status_code == 503


async def test_openapi_documents_every_route_and_the_error_shape(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()
    docs = await client.get("/docs")

    assert docs.status_code == 200
    paths = spec["paths"]
    for path in (
        "/v1/webhooks/callback",
        "/v1/webhooks/dlr",
        "/v1/webhooks/mo",
        "/v1/sms/status/search",
        "/v1/sms/status/list",
        "/v1/sms/status/changes",
        "/v1/sms/status",
        "/v1/sms/status/{message_id}",
        "/v1/sms/receive/list",
        "/v1/sms/receive/search",
        "/v1/sms/receive/changes",
    ):
        assert path in paths, path
    dlr = paths["/v1/webhooks/dlr"]["post"]
    assert dlr["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert {"400", "401", "413", "422", "503"} <= set(dlr["responses"])
    schemas = spec["components"]["schemas"]
    assert {"Callback", "Dlr", "Mo", "ErrorBody", "StatusOut", "MoOut"} <= set(schemas)
    assert (
        "sentStatusAt" in schemas["Dlr"]["properties"] or "sentAt" in schemas["Dlr"]["properties"]
    )


@pytest.fixture
async def poison_trigger(engine: Any) -> AsyncIterator[None]:
    """A real database refusal for one message id (SQLSTATE 22023, a data exception), the way
    a value PostgreSQL cannot take would fail a whole batch."""
    from sqlalchemy import text

    async with engine.begin() as conn:
        await conn.execute(
            text("""
            CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.message_id = 'poison' THEN
                    RAISE EXCEPTION 'refused' USING ERRCODE = '22023';
                END IF;
                RETURN NEW;
            END $$""")
        )
        await conn.execute(
            text(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON events "
                "FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
            )
        )
    yield
    async with engine.begin() as conn:
        await conn.execute(text("DROP TRIGGER refuse_poison ON events"))
        await conn.execute(text("DROP FUNCTION refuse_poison()"))


@pytest.mark.usefixtures("poison_trigger")
async def test_a_poisoned_request_fails_alone_and_its_batch_neighbours_are_stored(
    hook: Any, engine: Any
) -> None:
    ids = [f"ok-{i}" for i in range(30)]

    responses = await asyncio.gather(
        hook("dlr", {"id": "poison"}), *(hook("dlr", {"id": i}) for i in ids)
    )

    assert responses[0].status_code == 503
    assert [r.status_code for r in responses[1:]] == [200] * len(ids)
    async with engine.connect() as conn:
        from sqlalchemy import text

        stored = set((await conn.execute(text("SELECT id FROM messages"))).scalars())
    assert stored == set(ids)


@pytest.fixture
async def silent_database(
    app: FastAPI, settings: Settings, webhook_key: str
) -> AsyncIterator[None]:
    """A 'database' on a local port that accepts connections and never answers, so every
    connection attempt waits out its (1 s) timeout, as during a network outage."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with writes_going_to(app, settings, f"postgresql://postgres@127.0.0.1:{port}/x"):
        yield
    server.close()


@pytest.mark.usefixtures("silent_database")
async def test_an_outage_fails_a_whole_batch_at_once_rather_than_request_by_request(
    hook: Any,
) -> None:
    """Retrying 20 requests one by one would cost 20 connect timeouts of 1 s (and the requests
    would hit their own 10 s deadline first); failing the batch costs one or two."""
    started = time.monotonic()

    responses = await asyncio.gather(*(hook("dlr", {"id": f"m{i}"}) for i in range(20)))

    assert {r.status_code for r in responses} == {503}
    assert time.monotonic() - started < 6
