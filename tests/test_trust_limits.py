"""What a client with one valid key (or none) cannot do to everyone else: poison the stats with
an oversized value, fill the disk with refused bodies, slip in a lax type, or make the service
answer 500, with a crafted cursor, a window at the calendar's end, or at an outage's edges."""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import users
from app.db.retention import purge_tables, retention_ages
from app.db.stats import fold_stats_deltas
from app.http_protocol import GuardedHttpToolsProtocol, HeadBounds
from app.rules.scope import Role
from app.settings import Settings
from tests.conftest import changed_settings, fetch_all, free_port, serving


@pytest.fixture
async def admin(app: FastAPI) -> dict[str, str]:
    async with app.state.engine.begin() as conn:
        token = await users.add_user(
            conn, username="boss", role=Role.ADMIN, sub_account=None, email=None, token=None
        )
    return {"UserName": "boss", "AuthenticationToken": token}


# --- every text field has a limit; the stats fold survives a value it cannot store ----------


@pytest.mark.parametrize(
    ("kind", "field", "size"),
    [
        ("callback", "carrierName", 101),
        ("dlr", "deliveredStatus", 101),
        ("callback", "extraInfo", 4097),
        ("mo", "carrierName", 101),
        ("mo", "messageText", 4097),
        ("mo", "campaignAlias", 256),
    ],
)
async def test_a_text_past_its_documented_limit_gets_422_and_is_kept(
    hook: Any, engine: AsyncEngine, kind: str, field: str, size: int
) -> None:
    response = await hook(kind, {"id": "m1", field: "é" * size})

    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == field
    assert await fetch_all(engine, "SELECT id FROM events") == []
    assert len(await fetch_all(engine, "SELECT id FROM rejected_bodies")) == 1


async def test_a_group_the_rollup_cannot_store_is_quarantined_and_the_fold_goes_on(
    hook: Any, engine: AsyncEngine
) -> None:
    """Validation keeps such values out; should one reach the deltas anyway (an older release,
    a hand-made row), the fold must not stop for everyone."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO stats_deltas (sub_account, hour, campaign_id, carrier_name, metric, "
                "value, count) VALUES ('acme', date_trunc('hour', now()), '', :name, "
                "'sent', 2, 1)"
            ),
            {"name": base64.b64encode(os.urandom(4500)).decode()},  # 6000 that do not compress
        )
    await hook("callback", {"id": "m1", "sentStatusCode": 2, "carrierName": "VIVO"})

    await fold_stats_deltas(engine)
    await hook("callback", {"id": "m2", "sentStatusCode": 2, "carrierName": "VIVO"})
    await fold_stats_deltas(engine)

    assert await fetch_all(engine, "SELECT count(*) AS n FROM stats_deltas") == [{"n": 0}]
    [poisoned] = await fetch_all(engine, "SELECT length(carrier_name) AS n FROM stats_quarantine")
    assert poisoned == {"n": 6000}
    vivo = await fetch_all(
        engine,
        "SELECT count FROM stats_rollup WHERE carrier_name = 'VIVO' AND metric = 'messages'",
    )
    assert vivo == [{"count": 2}]


# --- types as Wavy documents them -------------------------------------------------------------


@pytest.mark.parametrize(
    "item",
    [
        {"id": "m1", "sentStatusCode": True},
        {"id": "m1", "deliveredStatusCode": 4.0},
        {"id": "m1", "deliveredDate": 1420732954},
        {"id": "m1", "deliveredAt": "soon"},
    ],
)
async def test_a_value_of_another_type_than_documented_gets_422(
    hook: Any, engine: AsyncEngine, item: dict[str, Any]
) -> None:
    response = await hook("dlr", item)

    assert response.status_code == 422
    assert await fetch_all(engine, "SELECT id FROM messages") == []


# --- rejected bodies are bounded ------------------------------------------------------------


@pytest.fixture
def small_budget(app: FastAPI, settings: Settings) -> Iterator[Settings]:
    with changed_settings(app, settings, rejected_max_bytes_per_key=20_000) as changed:
        yield changed


@pytest.mark.usefixtures("small_budget")
async def test_a_flood_of_junk_from_one_key_keeps_its_first_copies_within_the_budget(
    hook: Any, engine: AsyncEngine
) -> None:
    answers = [await hook("dlr", content=f"junk {n} ".encode() * 500) for n in range(60)]
    same = [await hook("dlr", content=b"{broken") for _ in range(20)]

    assert {answer.status_code for answer in answers + same} == {400}
    [kept] = await fetch_all(
        engine, "SELECT sum(body_bytes) AS bytes, sum(repeats) AS repeats FROM rejected_bodies"
    )
    assert kept["bytes"] <= 20_000 + 1024
    assert kept["repeats"] == 60 + 20 - len(
        await fetch_all(engine, "SELECT id FROM rejected_bodies")
    )
    [broken] = await fetch_all(
        engine, "SELECT repeats FROM rejected_bodies WHERE body = '\\x7b62726f6b656e'::bytea"
    )
    assert broken["repeats"] == 19


async def test_rejected_bodies_are_purged_after_their_own_retention_while_data_is_kept(
    hook: Any, engine: AsyncEngine
) -> None:
    """By default data is kept until told otherwise, rejected bodies 30 days."""
    defaults = Settings(database_url="postgresql://unused/x")
    await hook("dlr", {"id": "kept-1", "sentStatusCode": 2})
    await hook("dlr", content=b"{old junk")
    await hook("dlr", content=b"{new junk")
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE rejected_bodies SET received_at = now() - interval '31 days' "
                "WHERE body = '{old junk'::bytea"
            )
        )
        await conn.execute(text("UPDATE events SET received_at = now() - interval '31 days'"))

    ages = retention_ages(defaults.retention_age(), defaults.rejected_retention_age())
    await purge_tables(engine, ages)

    left = await fetch_all(engine, "SELECT convert_from(body, 'UTF8') AS b FROM rejected_bodies")
    assert left == [{"b": "{new junk"}]
    assert len(await fetch_all(engine, "SELECT id FROM events")) == 1  # data: no retention set


# --- no client input causes a 500 -------------------------------------------------------------


async def test_a_crafted_cursor_holding_a_nul_gets_422(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.get(
        "/v1/sms/status", params={"cursor": "WzAsICJcdTAwMDAiXQ"}, headers=admin
    )

    assert response.status_code == 422


@pytest.mark.parametrize("zone", ["Asia/Tokyo", "Pacific/Kiritimati", "America/Sao_Paulo"])
async def test_stats_at_the_ends_of_the_calendar_never_answer_500(
    client: httpx.AsyncClient, hook: Any, admin: dict[str, str], zone: str
) -> None:
    await hook("mo", {"id": "r-9999", "receivedDate": "9999-12-31T23:30:00Z"})
    await hook("mo", {"id": "r-0001", "receivedDate": "0001-01-01T00:30:00Z"})

    for window in (
        {"to": "9999-12-31T23:59:59Z"},
        {"from": "0001-01-01T00:00:00Z", "to": "0001-01-03T00:00:00Z"},
    ):
        for group_by in ("day", "hour"):
            response = await client.get(
                "/v1/stats", params={**window, "tz": zone, "groupBy": group_by}, headers=admin
            )
            assert response.status_code in (200, 422), response.text


# --- an outage's edges are 503s -----------------------------------------------------------------


def _error_response(code: str, message: str) -> bytes:
    fields = b"".join(
        tag + value.encode() + b"\0"
        for tag, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", code), (b"M", message))
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body


@asynccontextmanager
async def postgres_starting_up() -> AsyncIterator[str]:
    """A PostgreSQL that answers every connection as one starting up does (57P03, asyncpg's
    CannotConnectNowError): what a service meets at the edges of a restart."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length = struct.unpack("!i", await reader.readexactly(4))[0]
                payload = await reader.readexactly(length - 4)
                if payload[:4] == struct.pack("!i", 80877103):  # SSLRequest: no TLS here
                    writer.write(b"N")
                    continue
                writer.write(_error_response("57P03", "the database system is starting up"))
                await writer.drain()
                break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/starting"
    finally:
        server.close()


async def test_reads_and_webhooks_while_postgres_starts_up_get_503_never_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with postgres_starting_up() as url:
        settings = Settings(
            database_url=url, port=free_port(), public_url=None, db_connect_timeout_s=1
        )
        async with (
            serving(settings),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=30) as client,
        ):
            reader = {"UserName": "ana", "AuthenticationToken": "t" * 32}
            dlr = {"id": "m1", "sentStatusCode": 2}
            answers = [
                await client.get("/v1/me", headers=reader),
                await client.get("/v1/sms/status/m1", headers=reader),
                await client.post("/v1/webhooks/dlr", params={"key": "k" * 32}, json=dlr),
            ]

    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"]


# --- the connection: head size, head time, half-open floods ------------------------------------


async def raw_exchange(port: int, data: bytes, *, wait_s: float = 5.0) -> bytes:
    """What the server answers to these bytes on a fresh connection, until it closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(wait_s):
            return await reader.read()
    finally:
        writer.close()


async def test_an_endless_header_gets_431_and_the_connection_closes(
    app: FastAPI, settings: Settings
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", settings.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: ")
    for _ in range(64):  # up to 4 MiB of one header that never ends (a worker held it all)
        if reader.at_eof() or writer.is_closing():
            break
        writer.write(b"a" * 65536)
        await writer.drain()
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()

    assert answer.startswith(b"HTTP/1.1 431")
    assert b'"code":"headers_too_large"' in answer


@pytest.mark.parametrize(
    "data",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"POST /v1/webhooks/dlr HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n{}",
        b"POST /v1/send-sms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["no request line", "a webhook's bad length", "a send's bad chunk"],
)
async def test_a_request_that_is_not_http_gets_the_apis_json_400(
    app: FastAPI, settings: Settings, data: bytes
) -> None:
    answer = await raw_exchange(settings.port, data)

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"content-type: application/json" in head.lower()
    assert orjson.loads(body)["error"]["code"] == "bad_request"


async def test_a_head_just_past_the_limit_sent_at_once_gets_431(
    app: FastAPI, settings: Settings
) -> None:
    junk = b"a" * (settings.max_head_bytes + 10)
    answer = await raw_exchange(
        settings.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: " + junk + b"\r\n\r\n"
    )

    assert answer.startswith(b"HTTP/1.1 431")


async def test_headers_that_never_finish_are_cut_off_after_the_head_timeout(
    app: FastAPI, settings: Settings
) -> None:
    GuardedHttpToolsProtocol.bounds = HeadBounds.of(
        settings.model_copy(update={"head_timeout_s": 0.5})
    )
    try:
        started = asyncio.get_running_loop().time()
        answer = await raw_exchange(settings.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        waited = asyncio.get_running_loop().time() - started
    finally:
        GuardedHttpToolsProtocol.bounds = HeadBounds.of(settings)

    assert answer.startswith(b"HTTP/1.1 408")
    assert waited < 4


async def test_a_get_mo_whose_url_is_too_long_gets_the_json_413_and_is_kept(
    client: httpx.AsyncClient, settings: Settings, webhook_key: str, engine: AsyncEngine
) -> None:
    text_part = "a" * (settings.max_head_bytes + 1000)
    request = (
        f"GET /v1/webhooks/mo?key={webhook_key}&id=r-1&messageText={text_part} HTTP/1.1\r\n"
        "Host: x\r\n\r\n"
    ).encode()

    answer = await raw_exchange(settings.port, request)

    assert answer.startswith(b"HTTP/1.1 413")
    assert b'"code":"body_too_large"' in answer
    [kept] = await fetch_all(engine, "SELECT method, reason, body FROM rejected_bodies")
    assert (kept["method"], kept["reason"]) == ("GET", "body_too_large")
    assert kept["body"].startswith(b"id=r-1&messageText=aaa")
    assert webhook_key.encode() not in kept["body"]


async def test_half_open_connections_do_not_take_the_webhooks_capacity(
    settings: Settings, webhook_key: str
) -> None:
    """Connections that never finish their headers, far more than the request limit (which
    uvicorn counted them against: every webhook got a plain 503) and than max_connections:
    real webhooks still get 200, and the oldest half-open connections are closed for them."""
    own = settings.model_copy(
        update={"port": free_port(), "limit_concurrency": 100, "max_connections": 300}
    )
    idle: list[asyncio.StreamWriter] = []
    try:
        async with (
            serving(own),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{own.port}", timeout=30) as client,
        ):
            for _ in range(900):
                _, writer = await asyncio.open_connection("127.0.0.1", own.port)
                writer.write(b"POST /v1/webhooks/dlr HTTP/1.1\r\nHost: x\r\n")
                idle.append(writer)
            await asyncio.sleep(0.2)

            answers = [
                await client.post(
                    "/v1/webhooks/dlr",
                    params={"key": webhook_key},
                    json={"id": f"m{n}", "sentStatusCode": 2},
                )
                for n in range(20)
            ]
            half_open = len(GuardedHttpToolsProtocol.half_open)
    finally:
        for writer in idle:
            writer.close()
        GuardedHttpToolsProtocol.bounds = HeadBounds.of(settings)

    assert [answer.status_code for answer in answers] == [200] * 20
    assert half_open <= 300


# --- failed logins ------------------------------------------------------------------------------


async def test_repeated_failed_logins_are_refused_before_they_cost_a_query_and_real_users_pass(
    app: FastAPI, client: httpx.AsyncClient, admin: dict[str, str], engine: AsyncEngine
) -> None:
    wrong = {"UserName": "boss", "AuthenticationToken": "wrong-token-wrong-token"}
    # The admin's creation is notified to every worker a moment later, and a change of the
    # users forgets every cached login: that notification must not land after the login below.
    await asyncio.sleep(1.0)
    await client.get("/v1/me", headers=admin)  # the real user, logged in before the attack
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    answers = [await client.get("/v1/me", headers=wrong) for _ in range(30)]
    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        refused = await client.get("/v1/me", headers=wrong)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)

    statuses = [answer.status_code for answer in answers]
    assert statuses[:10] == [401] * 10  # a few typos cost nothing
    assert set(statuses[10:]) == {429}
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert statements == []  # refused before the database was asked
    assert (await client.get("/v1/me", headers=admin)).status_code == 200


async def test_the_dashboard_forbids_framing_and_sniffing(client: httpx.AsyncClient) -> None:
    page = await client.get("/dashboard")
    script = await client.get("/static/dashboard.js")

    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert script.headers["x-content-type-options"] == "nosniff"


async def test_a_kept_alive_connection_takes_a_large_body_after_a_small_request(
    settings: Settings, webhook_key: str
) -> None:
    """The head limit counts heads only: a body larger than it on a reused connection is no
    head too large."""
    array = [{"id": f"big-{n}", "sentStatusCode": 2, "extraInfo": "x" * 200} for n in range(500)]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}") as one_connection:
        small = await one_connection.post(
            "/v1/webhooks/dlr", params={"key": webhook_key}, json={"id": "small-1"}
        )
        large = await one_connection.post(
            "/v1/webhooks/dlr", params={"key": webhook_key}, json=array
        )

    assert (small.status_code, large.status_code) == (200, 200)
    assert large.json()["received"] == 500


class _WritesSeen:
    """A connection's transport that keeps what the server writes."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport, self._writes = transport, writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def test_a_webhook_answer_goes_out_in_one_write(
    settings: Settings, webhook_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Head and body in one write: one system call and one packet for the sender to wake up
    to, where uvicorn makes two."""
    writes: list[bytes] = []
    made = GuardedHttpToolsProtocol.connection_made

    def seen(protocol: GuardedHttpToolsProtocol, transport: asyncio.Transport) -> None:
        made(protocol, _WritesSeen(transport, writes))  # type: ignore[arg-type]

    monkeypatch.setattr(GuardedHttpToolsProtocol, "connection_made", seen)
    body = b'{"id":"one-write-1"}'
    answer = await raw_exchange(
        settings.port,
        b"POST /v1/webhooks/dlr?key=%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (webhook_key.encode(), len(body), body),
    )

    assert answer.startswith(b"HTTP/1.1 200 ")
    assert writes == [answer]


async def test_a_webhook_sent_with_expect_100_continue_gets_its_continue_then_its_answer(
    settings: Settings, webhook_key: str
) -> None:
    """The 100 Continue is written at once, never held for an answer (the sender waits for
    it before sending the body)."""
    body = b'{"id":"continued-1"}'
    reader, writer = await asyncio.open_connection("127.0.0.1", settings.port)
    try:
        writer.write(
            b"POST /v1/webhooks/dlr?key=%s HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (webhook_key.encode(), len(body))
        )
        await writer.drain()
        async with asyncio.timeout(5):
            continued = await reader.readuntil(b"\r\n\r\n")
        writer.write(body)
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.readuntil(b"}")
    finally:
        writer.close()

    assert continued.startswith(b"HTTP/1.1 100 ")
    assert answer.startswith(b"HTTP/1.1 200 ")


async def test_a_head_request_to_a_webhook_gets_its_head(settings: Settings) -> None:
    """An answer without a body (HEAD: the webhooks take none, so a 405) is not held waiting
    for one."""
    answer = await raw_exchange(
        settings.port, b"HEAD /v1/webhooks/mo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )

    assert answer.startswith(b"HTTP/1.1 405 ")
    assert b"\r\nallow: GET, POST\r\n" in answer


async def test_webhooks_leave_no_garbage_for_the_collector(
    settings: Settings, webhook_key: str
) -> None:
    """A request's objects are freed as it ends: cycles among them would wait for the garbage
    collector, whose passes over a few seconds' worth stalled every request in flight (the
    tail of the latency under a campaign's load). Posted over a bare socket: an HTTP client's
    own garbage would hide the server's."""
    reader, writer = await asyncio.open_connection("127.0.0.1", settings.port)

    async def post(n: int) -> bytes:
        body = b'{"id":"no-garbage-%d"}' % n
        writer.write(
            b"POST /v1/webhooks/dlr?key=%s HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (webhook_key.encode(), len(body), body)
        )
        async with asyncio.timeout(5):
            return await reader.readuntil(b"}")

    try:
        await post(0)
        gc.collect()
        answers = [await post(n) for n in range(1, 201)]
        found = gc.collect()
    finally:
        writer.close()

    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers)
    assert found < 200  # less than one object per request
