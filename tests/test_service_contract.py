"""Promises that hold across the service: no 2xx without a commit, documented API, URL spellings."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from app.db.engine import WRITER_APPLICATION_NAME, normalize_database_url
from tests.conftest import fetch_all, silent_database_url, writes_going_to
from tests.test_migrations_and_cli import run_cli


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


@pytest.mark.usefixtures("unreachable_database")
async def test_database_unreachable_answers_503_never_200(hook: object) -> None:
    response = await hook("dlr", {"id": "m1", "sentStatusCode": 2})  # type: ignore[operator]

    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert response.json()["error"]["code"] == "unavailable"


@pytest.mark.usefixtures("unreachable_database")
async def test_bad_body_that_cannot_be_kept_gets_503_so_it_is_retried(
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


@contextlib.asynccontextmanager
async def on_inserting_event(
    engine: Any, name: str, message_id: str, act: str
) -> AsyncIterator[None]:
    """While inside: inserting an event of ``message_id`` runs the PL/pgSQL statement ``act``
    first (a trigger ``name``)."""
    async with engine.begin() as conn:
        await conn.execute(
            text(f"""
            CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.message_id = '{message_id}' THEN
                    {act};
                END IF;
                RETURN NEW;
            END $$""")
        )
        await conn.execute(
            text(
                f"CREATE TRIGGER {name} BEFORE INSERT ON events "
                f"FOR EACH ROW EXECUTE FUNCTION {name}()"
            )
        )
    try:
        yield
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TRIGGER IF EXISTS {name} ON events"))
            await conn.execute(text(f"DROP FUNCTION {name}()"))


@pytest.fixture
async def poison_trigger(engine: Any) -> AsyncIterator[None]:
    """A real database refusal for one message id (SQLSTATE 22023, a data exception), the way
    a value PostgreSQL cannot take would fail a whole batch."""
    act = "RAISE EXCEPTION 'refused' USING ERRCODE = '22023'"
    async with on_inserting_event(engine, "refuse_poison", "poison", act):
        yield


@pytest.mark.usefixtures("poison_trigger")
async def test_a_poisoned_request_fails_alone_and_its_batch_neighbours_are_stored(
    hook: Any, engine: Any
) -> None:
    ids = [f"ok-{i}" for i in range(30)]

    responses = await asyncio.gather(
        hook("dlr", {"id": "poison"}), *(hook("dlr", {"id": i}) for i in ids)
    )

    assert responses[0].status_code == 422
    assert responses[0].json()["error"]["code"] == "database_refused"
    assert [r.status_code for r in responses[1:]] == [200] * len(ids)
    stored = {row["id"] for row in await fetch_all(engine, "SELECT id FROM messages")}
    assert stored == set(ids)
    [kept] = await fetch_all(engine, "SELECT reason, status_code, body FROM rejected_bodies")
    assert kept == {"reason": "database_refused", "status_code": 422, "body": b'{"id":"poison"}'}


@pytest.mark.usefixtures("poison_trigger")
async def test_a_body_the_database_refused_is_stored_by_replay_once_the_cause_is_gone(
    hook: Any, engine: Any, database_url: str
) -> None:
    assert (await hook("dlr", {"id": "poison", "deliveredStatusCode": 4})).status_code == 422
    [kept] = await fetch_all(engine, "SELECT id FROM rejected_bodies")

    def replay() -> subprocess.CompletedProcess[str]:
        return run_cli("rejected", "replay", str(kept["id"]), database_url=database_url)

    still = await asyncio.to_thread(replay)
    async with engine.begin() as conn:
        await conn.execute(text("DROP TRIGGER refuse_poison ON events"))  # the cause, fixed
    fixed = await asyncio.to_thread(replay)

    assert still.returncode == 1
    assert f"#{kept['id']} still refused: database_refused" in still.stdout
    assert fixed.returncode == 0
    assert f"#{kept['id']} stored (1 new" in fixed.stdout
    [message] = await fetch_all(engine, "SELECT id, delivered_status_code FROM messages")
    assert message == {"id": "poison", "delivered_status_code": 4}


@pytest.fixture
async def slow_message(engine: Any) -> AsyncIterator[None]:
    """Storing message 'slow' takes a second: its batch stays in flight that long."""
    async with on_inserting_event(engine, "slow_down", "slow", "PERFORM pg_sleep(1)"):
        yield


def committed_batches() -> float:
    return REGISTRY.get_sample_value("wavy_writer_batch_requests_count") or 0.0


@pytest.mark.usefixtures("slow_message")
async def test_single_objects_arriving_while_a_batch_commits_gather_into_one(hook: Any) -> None:
    """Five small batches beside the one in flight would cost five round trips, plans and
    commits; gathered, they cost one."""
    before = committed_batches()
    slow = asyncio.create_task(hook("dlr", {"id": "slow"}))
    await asyncio.sleep(0.3)  # its batch is in flight

    sent = []
    for n in range(5):  # one at a time, as a trickle of DLRs comes
        sent.append(asyncio.create_task(hook("dlr", {"id": f"single-{n}"})))
        await asyncio.sleep(0.05)
    singles = await asyncio.gather(*sent)

    assert (await slow).status_code == 200
    assert [r.status_code for r in singles] == [200] * 5
    assert committed_batches() - before == 2


@pytest.mark.usefixtures("slow_message")
async def test_an_array_does_not_wait_behind_a_batch_in_flight(hook: Any, settings: Any) -> None:
    size = max(settings.writer_parallel_items, 150)
    slow = asyncio.create_task(hook("dlr", {"id": "slow"}))
    await asyncio.sleep(0.3)

    array = await hook("dlr", [{"id": f"item-{n}"} for n in range(size)])

    assert array.status_code == 200
    assert array.json() == {"received": size, "duplicates": 0}
    assert not slow.done()  # committed beside the slow batch, not after it
    assert (await slow).status_code == 200


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


async def test_a_write_not_committed_in_time_gets_503_at_its_deadline(
    app: Any, settings: Any, hook: Any
) -> None:
    # The database never answers and the connection attempt waits 3 s: the request's own
    # deadline (writer_timeout_s) must answer first.
    async with (
        silent_database_url() as url,
        writes_going_to(app, settings, url, db_connect_timeout_s=3.0, writer_timeout_s=0.5),
    ):
        started = time.monotonic()
        response = await hook("dlr", {"id": "late"})
        waited = time.monotonic() - started

    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert 0.5 <= waited < 2


async def test_writes_resume_after_the_database_drops_the_writers_connections(
    hook: Any, engine: Any
) -> None:
    assert (await hook("dlr", {"id": "before"})).status_code == 200
    writers = (
        "FROM pg_stat_activity WHERE application_name = :name AND datname = current_database()"
    )
    async with engine.connect() as conn:
        dropped = await conn.execute(
            text(f"SELECT pg_terminate_backend(pid) {writers}"),
            {"name": WRITER_APPLICATION_NAME},
        )
        assert dropped.scalars().all()  # the writer's connections were there
        for _ in range(100):  # until the backends have really gone (termination is a signal)
            left = await conn.scalar(
                text(f"SELECT count(*) {writers}"),
                {"name": WRITER_APPLICATION_NAME},
            )
            if not left:
                break
            await asyncio.sleep(0.05)

    answers = [(await hook("dlr", {"id": f"after-{n}"})).status_code for n in range(4)]

    # Each writer task may find its broken connection once (503, never 200); then it reopens.
    assert set(answers[:2]) <= {200, 503}
    assert answers[2:] == [200, 200]
    acknowledged = {f"after-{n}" for n, status in enumerate(answers) if status == 200}
    stored = {row["id"] for row in await fetch_all(engine, "SELECT id FROM messages")}
    assert acknowledged | {"before"} <= stored
