"""Webhook keys: three ways to present one, 401 without a valid one, the key's sub-account."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import key_registry, queries
from app.db.key_registry import KeyRegistry
from app.db.queries import load_active_keys
from app.rules.credentials import KnownKey
from app.settings import Settings
from tests.conftest import add_key, changed_settings, fetch_all

DLR = {"id": "m1", "sentStatusCode": 2, "deliveredStatusCode": 4}


async def test_key_in_query_string_is_accepted(client: httpx.AsyncClient, webhook_key: str) -> None:
    response = await client.post("/v1/webhooks/dlr", params={"key": webhook_key}, json=DLR)

    assert response.status_code == 200


async def test_key_in_header_is_accepted(client: httpx.AsyncClient, webhook_key: str) -> None:
    response = await client.post(
        "/v1/webhooks/dlr", headers={"x-webhook-key": webhook_key}, json=DLR
    )

    assert response.status_code == 200


async def test_key_as_basic_auth_password_is_accepted(
    client: httpx.AsyncClient, webhook_key: str
) -> None:
    response = await client.post("/v1/webhooks/dlr", auth=("wavy", webhook_key), json=DLR)

    assert response.status_code == 200


@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"params": {"key": "wrong-key-wrong-key"}},
        {"headers": {"X-Webhook-Key": ""}},
        {"headers": {"Authorization": "Basic !!!not-base64"}},
        {"headers": {"Authorization": "Bearer something"}},
        {"auth": ("wavy", "wrong")},
    ],
)
async def test_missing_or_wrong_key_gets_401_and_nothing_is_kept(
    client: httpx.AsyncClient,
    webhook_key: str,
    engine: AsyncEngine,
    credentials: dict[str, object],
) -> None:
    response = await client.post("/v1/webhooks/dlr", content=b"{not even json", **credentials)  # type: ignore[arg-type]

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert await fetch_all(engine, "SELECT id FROM rejected_bodies") == []
    assert await fetch_all(engine, "SELECT id FROM events") == []


async def test_revoked_key_gets_401(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    key = await add_key(app, "acme")
    async with engine.begin() as conn:
        [info] = await queries.list_webhook_keys(conn)
        await queries.revoke_webhook_key(conn, info.id)
    await app.state.key_registry.refresh()

    response = await client.post("/v1/webhooks/dlr", params={"key": key}, json=DLR)

    assert response.status_code == 401


async def test_a_key_revoked_by_hand_is_refused_at_once_not_when_the_cache_ages_out(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Workers cache the keys (for 60 s in these tests); PostgreSQL tells them when the keys
    change, however they were changed, so a leaked key is refused as soon as it is revoked."""
    key = await add_key(app, "acme")
    assert (await client.post("/v1/webhooks/dlr", params={"key": key}, json=DLR)).is_success
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE webhook_keys SET revoked_at = now()"))

    revoked_at = time.monotonic()
    for _ in range(100):
        status = (await client.post("/v1/webhooks/dlr", params={"key": key}, json=DLR)).status_code
        if status != 200:
            break
        await asyncio.sleep(0.05)

    assert status == 401
    assert time.monotonic() - revoked_at < 1


async def test_each_key_stamps_its_own_sub_account(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    acme, globex = await add_key(app, "acme"), await add_key(app, "globex")

    await client.post("/v1/webhooks/callback", params={"key": acme}, json={"id": "a1"})
    await client.post("/v1/webhooks/callback", params={"key": globex}, json={"id": "g1"})

    rows = await fetch_all(engine, "SELECT id, sub_account FROM messages ORDER BY id")
    assert rows == [{"id": "a1", "sub_account": "acme"}, {"id": "g1", "sub_account": "globex"}]


async def test_keys_are_stored_hashed(app: FastAPI, engine: AsyncEngine) -> None:
    key = await add_key(app, "acme")

    [row] = await fetch_all(engine, "SELECT key_hash, key_prefix FROM webhook_keys")
    assert key not in row["key_hash"]
    assert row["key_prefix"] == key[:6]


async def test_open_ingest_accepts_without_a_key(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings, engine: AsyncEngine
) -> None:
    with changed_settings(app, settings, open_ingest=True):
        response = await client.post("/v1/webhooks/dlr", json=DLR)

    assert response.status_code == 200
    [row] = await fetch_all(engine, "SELECT sub_account FROM messages")
    assert row["sub_account"] is None


async def test_a_crowd_finding_the_keys_aged_reloads_them_once_or_twice_not_once_each(
    app: FastAPI, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #36: each request that found the cache aged queued for a reload of its own, one
    after another; at 64 connections every one of them stalled for up to a second."""
    key = await add_key(app, "acme")
    registry = KeyRegistry(engine, ttl_s=60)
    loads = 0

    async def counted(conn: AsyncConnection) -> list[KnownKey]:
        nonlocal loads
        loads += 1
        return await load_active_keys(conn)

    monkeypatch.setattr(key_registry, "load_active_keys", counted)
    found = await asyncio.gather(*(registry.find(key) for _ in range(64)))

    assert all(f is not None and f.sub_account == "acme" for f in found)
    assert loads <= 2


async def test_a_change_during_a_reload_still_gets_a_reload_of_its_own(
    app: FastAPI, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that comes after a change never settles for a reload that began before it."""
    key = await add_key(app, "acme")
    registry = KeyRegistry(engine, ttl_s=60)
    await registry.refresh()
    reading, go_on = asyncio.Event(), asyncio.Event()

    async def slow(conn: AsyncConnection) -> list[KnownKey]:
        keys = await load_active_keys(conn)
        reading.set()
        await go_on.wait()
        return keys  # read before the revocation below

    monkeypatch.setattr(key_registry, "load_active_keys", slow)
    registry.forget()
    first = asyncio.create_task(registry.find(key))
    await reading.wait()
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE webhook_keys SET revoked_at = now()"))
    registry.forget()  # the notification
    monkeypatch.setattr(key_registry, "load_active_keys", load_active_keys)
    after = asyncio.create_task(registry.find(key))
    await asyncio.sleep(0.01)
    go_on.set()

    assert await first is not None  # it asked before the revocation
    assert await after is None


async def test_keys_that_only_aged_answer_at_once_while_one_reload_runs_beside(
    app: FastAPI, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing said the keys changed (a change is notified and forgotten at once): a request
    is not held for the reload's round trip; the reload still happens, once."""
    key = await add_key(app, "acme")
    registry = KeyRegistry(engine, ttl_s=0.01)
    await registry.refresh()
    await asyncio.sleep(0.02)  # aged
    reading, go_on = asyncio.Event(), asyncio.Event()
    loads = 0

    async def slow(conn: AsyncConnection) -> list[KnownKey]:
        nonlocal loads
        loads += 1
        reading.set()
        await go_on.wait()
        return await load_active_keys(conn)

    monkeypatch.setattr(key_registry, "load_active_keys", slow)
    found = await asyncio.wait_for(
        asyncio.gather(*(registry.find(key) for _ in range(16))), timeout=5
    )
    await reading.wait()
    go_on.set()
    await asyncio.sleep(0.05)

    assert all(f is not None and f.sub_account == "acme" for f in found)  # answered meanwhile
    assert loads == 1


@pytest.mark.parametrize(
    ("query", "accepted"),
    [
        ("a=1&key={key}&b", True),
        ("key=wrong&key={key}", True),  # the last one, as Starlette reads a query
        ("key={key}&key=wrong", False),
        ("k%65y={key}", True),  # an escaped name
        ("key={key}&note=a+b", True),
        ("key=&x=1", False),  # empty, and no header: no key
        ("keys={key}", False),
    ],
)
async def test_the_key_in_the_query_is_read_as_any_query_parameter_is(
    client: httpx.AsyncClient, webhook_key: str, query: str, accepted: bool
) -> None:
    response = await client.post(f"/v1/webhooks/dlr?{query.format(key=webhook_key)}", json=DLR)

    assert response.status_code == (200 if accepted else 401)


async def test_a_revoked_key_that_was_just_accepted_is_refused_at_once(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Keys seen lately are remembered as they were presented; a change forgets them."""
    key = await add_key(app, "acme")
    first = await client.post("/v1/webhooks/dlr", params={"key": key}, json=DLR)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE webhook_keys SET revoked_at = now()"))
    for _ in range(50):  # the notification reaches the worker
        again = await client.post("/v1/webhooks/dlr", params={"key": key}, json=DLR)
        if again.status_code == 401:
            break
        await asyncio.sleep(0.05)

    assert (first.status_code, again.status_code) == (200, 401)
