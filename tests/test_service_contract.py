"""Promises that hold across the service: no 2xx without a commit, documented API, URL spellings."""

from __future__ import annotations

from collections.abc import Iterator

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


@pytest.fixture
async def unreachable_database(
    app: FastAPI, settings: Settings, webhook_key: str
) -> Iterator[None]:
    """The app's engine and writer swapped for ones aimed at a port nobody listens on (the
    webhook key is made first, through the real one)."""
    dead = settings.model_copy(update={"db_connect_timeout_s": 1.0, "db_pool_size": 1})
    engine = create_engine(dead, "postgresql://postgres@127.0.0.1:9/nowhere")
    writer = BatchWriter(engine, max_items=100, max_delay_s=0, queue_items=1000)
    await writer.start()
    real = app.state.engine, app.state.writer
    app.state.engine, app.state.writer = engine, writer
    yield
    app.state.engine, app.state.writer = real
    await writer.stop()
    await engine.dispose()


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
