"""The sub-account boundary on writes, probed as an intruder holding one sub-account's webhook
key would: a message belongs to the sub-account whose key first stored it, and nothing another
sub-account's key sends changes it, shows in its history, or is acknowledged and dropped."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import users
from app.db.engine import driver_connection
from app.db.ingest import write_records
from app.payloads import EventKind, validate_items
from app.rules.optouts import DEFAULT_MATCHER as OPTOUTS
from app.rules.records import build_event_records
from app.rules.scope import Role
from app.rules.webhook_body import items_as_json
from tests.conftest import add_key, fetch_all

OWNER = "mango"
# An intruder whose name sorts below the owner's, and one above: a merge by GREATEST once
# let the higher one take messages over.
INTRUDERS = ("apple", "zucchini")

CALLBACK = {
    "id": "m-1",
    "correlationId": "owner-ref",
    "carrierName": "VIVO",
    "destination": "5511900000001",
    "sentStatusCode": 2,
    "sentAt": 1_700_000_000_000,
    "campaignId": "64",
}
FOREIGN_DLR = {
    "id": "m-1",
    "correlationId": "zz-intruder",
    "carrierName": "ZZZ",
    "destination": "5599999999999",
    "sentStatusCode": 2,
    "sentAt": 1_700_000_000_000,
    "deliveredStatusCode": 104,
    "deliveredAt": 1_800_000_000_000,
    "campaignId": "zz",
    "extraInfo": "zz",
}
OWNED_COLUMNS = (
    "sub_account, correlation_id, carrier_name, destination, campaign_id, extra_info, "
    "delivered_status_code"
)


class Party:
    """A sub-account's webhook key and its read-API user."""

    def __init__(self, client: httpx.AsyncClient, key: str, login: dict[str, str]) -> None:
        self.client, self.key, self.login = client, key, login

    async def post(self, kind: str, body: Any) -> httpx.Response:
        return await self.client.post(f"/v1/webhooks/{kind}", params={"key": self.key}, json=body)

    async def read(self, path: str, **params: Any) -> httpx.Response:
        return await self.client.get(path, headers=self.login, params=params)


async def party(app: FastAPI, client: httpx.AsyncClient, sub_account: str) -> Party:
    async with app.state.engine.begin() as conn:
        token = await users.add_user(
            conn,
            username=f"user-{sub_account}",
            role=Role.USER,
            sub_account=sub_account,
            email=None,
            token=None,
        )
    login = {"UserName": f"user-{sub_account}", "AuthenticationToken": token}
    return Party(client, await add_key(app, sub_account), login)


async def message_row(engine: AsyncEngine, message_id: str = "m-1") -> dict[str, Any]:
    [row] = await fetch_all(
        engine, f"SELECT {OWNED_COLUMNS} FROM messages WHERE id = :id", id=message_id
    )
    return row


async def rejected(engine: AsyncEngine) -> list[dict[str, Any]]:
    return await fetch_all(
        engine, "SELECT endpoint, sub_account, status_code, reason FROM rejected_bodies"
    )


@pytest.mark.parametrize("intruder", INTRUDERS)
@pytest.mark.parametrize("kind", ["dlr", "callback"])
async def test_another_sub_accounts_key_cannot_change_a_message_or_its_history(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine, intruder: str, kind: str
) -> None:
    owner, other = await party(app, client, OWNER), await party(app, client, intruder)
    assert (await owner.post("callback", CALLBACK)).status_code == 200
    before = await message_row(engine)

    answer = await other.post(kind, {**FOREIGN_DLR, "sentStatusCode": 3})

    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "foreign_message"
    assert await message_row(engine) == before
    assert before["sub_account"] == OWNER
    # Kept for an operator, under the key that sent it; never an event of the message.
    assert await rejected(engine) == [
        {"endpoint": kind, "sub_account": intruder, "status_code": 403, "reason": "foreign_message"}
    ]
    events = await fetch_all(engine, "SELECT sub_account FROM events")
    assert events == [{"sub_account": OWNER}]
    # The owner still reads the whole record, with only its own history; the intruder nothing.
    detail = (await owner.read("/v1/sms/status/m-1")).json()
    assert detail["subAccount"] == OWNER
    assert [event["kind"] for event in detail["events"]] == ["callback"]
    assert (await other.read("/v1/sms/status/m-1")).status_code == 404


async def test_an_exact_copy_from_another_key_is_refused_not_counted_as_a_duplicate(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """A duplicate count would tell the intruder's key that the id exists elsewhere and
    acknowledge what it never stores."""
    owner, other = await party(app, client, OWNER), await party(app, client, "zucchini")
    await owner.post("callback", CALLBACK)

    answer = await other.post("callback", CALLBACK)

    assert answer.status_code == 403
    assert "duplicates" not in answer.json()


async def test_in_an_array_only_the_foreign_items_are_refused_and_the_answer_says_which(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    owner, other = await party(app, client, OWNER), await party(app, client, "apple")
    await owner.post("callback", CALLBACK)

    answer = await other.post("dlr", [{"id": "own-1", "sentStatusCode": 2}, FOREIGN_DLR])

    assert answer.status_code == 403
    [detail] = answer.json()["error"]["details"]
    assert (detail["index"], detail["id"]) == (1, "m-1")
    own = await fetch_all(engine, "SELECT sub_account FROM messages WHERE id = 'own-1'")
    assert own == [{"sub_account": "apple"}]
    # Sent again (as Wavy or an operator's replay would), nothing is stored twice.
    again = await other.post("dlr", [{"id": "own-1", "sentStatusCode": 2}, FOREIGN_DLR])
    assert again.status_code == 403
    assert len(await fetch_all(engine, "SELECT id FROM events WHERE message_id = 'own-1'")) == 1


async def test_the_accounts_own_key_may_complete_any_message_and_never_changes_its_owner(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    owner = await party(app, client, OWNER)
    account_key = await add_key(app, None)
    await owner.post("callback", {"id": "m-1", "sentStatusCode": 2})

    answer = await client.post(
        "/v1/webhooks/dlr", params={"key": account_key}, json={**FOREIGN_DLR, "extraInfo": "x"}
    )

    assert answer.status_code == 200
    row = await message_row(engine)
    assert (row["sub_account"], row["delivered_status_code"]) == (OWNER, 104)


async def test_a_message_first_stored_by_the_account_key_is_claimed_by_the_first_sub_account(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    owner, other = await party(app, client, OWNER), await party(app, client, "zucchini")
    account_key = await add_key(app, None)
    await client.post("/v1/webhooks/callback", params={"key": account_key}, json=CALLBACK)

    assert (await owner.post("dlr", {"id": "m-1", "deliveredStatusCode": 4})).status_code == 200
    assert (await other.post("dlr", FOREIGN_DLR)).status_code == 403
    assert (await message_row(engine))["sub_account"] == OWNER


async def test_rival_first_writes_in_one_batch_leave_the_id_to_the_first_key(
    app: FastAPI, engine: AsyncEngine
) -> None:
    """Two keys naming one new id in one batch: neither finds a stored owner, so the writer
    must judge the second against what the first stored."""
    now = datetime.now(UTC)

    def records_of(sub_account: str, item: dict[str, Any]) -> list[Any]:
        return build_event_records(
            "dlr",
            validate_items("dlr", [item]),
            items_as_json([item]),
            sub_account=sub_account,
            received_at=now,
        )

    batch = [*records_of(OWNER, {**CALLBACK, "id": "new"}), *records_of("zucchini", FOREIGN_DLR)]
    batch[1].message_id = "new"
    assert batch[1].status is not None
    batch[1].status.id = "new"
    async with engine.connect() as conn:
        outcome = await write_records(await driver_connection(conn), batch, OPTOUTS)
        await conn.commit()

    assert (set(outcome.new), set(outcome.refused)) == ({0}, {1})
    assert (await message_row(engine, "new"))["sub_account"] == OWNER


async def _waiting_for_a_lock(engine: AsyncEngine) -> None:
    """Until some connection of the service's writer waits for a lock (a rival's first
    write of an id, not yet committed)."""
    for _ in range(200):
        waiting = await fetch_all(
            engine,
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'wavy-webhooks-writer' "
            "AND wait_event_type = 'Lock'",
        )
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the intruder's write never waited for the rival's")


async def _racing_the_owners_first_write(
    engine: AsyncEngine,
    database_url: str,
    owners: tuple[EventKind, dict[str, Any]],
    intruder: Party,
    posted: tuple[str, Any],
) -> httpx.Response:
    """The intruder's answer to ``posted`` (kind, body), sent while the owner's first write of
    ``owners`` (kind, item) is in flight; that write commits once the intruder's waits for it."""
    kind, item = owners
    [first] = build_event_records(
        kind,
        validate_items(kind, [item]),
        items_as_json([item]),
        sub_account=OWNER,
        received_at=datetime.now(UTC),
    )
    rival = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        held = rival.transaction()
        await held.start()
        await write_records(rival, [first], OPTOUTS)
        answer = asyncio.create_task(intruder.post(*posted))
        await _waiting_for_a_lock(engine)
        await held.commit()
        return await answer
    finally:
        await rival.close()


@pytest.mark.parametrize(
    "body",
    [
        {**FOREIGN_DLR, "id": "raced"},
        # The same id twice: the transaction path, events before statuses.
        [{**FOREIGN_DLR, "id": "raced"}, {**FOREIGN_DLR, "id": "raced", "deliveredStatusCode": 2}],
    ],
    ids=["one statement", "transaction"],
)
async def test_a_first_write_racing_another_keys_first_write_of_the_id_is_refused_whole(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine, database_url: str, body: Any
) -> None:
    """Two keys' first writes of one new id at once: the second waits for the first's commit,
    but judged the id by a snapshot taken before it. Found by an intruder's probe: the second
    was answered 200 and its event stored on the first's message (never shown, yet
    acknowledged)."""
    await party(app, client, OWNER)
    other = await party(app, client, "zucchini")
    refused = await _racing_the_owners_first_write(
        engine, database_url, ("callback", {**CALLBACK, "id": "raced"}), other, ("dlr", body)
    )

    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "foreign_message"
    assert (await message_row(engine, "raced"))["sub_account"] == OWNER
    events = await fetch_all(
        engine, "SELECT kind, sub_account FROM events WHERE message_id = 'raced'"
    )
    assert events == [{"kind": "callback", "sub_account": OWNER}]


async def test_a_reply_racing_another_keys_first_copy_of_its_id_is_refused_whole(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine, database_url: str
) -> None:
    """Two keys' first copies of one reply id at once: the second judged the id by a snapshot
    taken before the first's commit, and was answered 200 ("duplicates": 1) with nothing of
    it stored, its opt-out applied to its own list."""
    await party(app, client, OWNER)
    other = await party(app, client, "zucchini")
    first_copy = {"id": "raced-mo", "source": "5511988887777", "messageText": "hello"}

    refused = await _racing_the_owners_first_write(
        engine,
        database_url,
        ("mo", first_copy),
        other,
        ("mo", {**first_copy, "messageText": "SAIR"}),
    )

    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "foreign_message"
    stored = await fetch_all(engine, "SELECT sub_account, message_text FROM mos")
    assert stored == [{"sub_account": OWNER, "message_text": "hello"}]
    events = await fetch_all(engine, "SELECT sub_account FROM events WHERE kind = 'mo'")
    assert events == [{"sub_account": OWNER}]
    assert await fetch_all(engine, "SELECT sub_account FROM optouts") == []
    [kept] = await rejected(engine)
    assert (kept["sub_account"], kept["reason"]) == ("zucchini", "foreign_message")


async def test_a_key_writes_replies_only_for_its_own_sub_account(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    intruder = await party(app, client, "apple")

    answer = await intruder.post("mo", {"id": "r-1", "subAccount": OWNER, "messageText": "hi"})
    unnamed = await intruder.post("mo", {"id": "r-2", "messageText": "hi"})

    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "foreign_sub_account"
    assert unnamed.status_code == 200
    stored = await fetch_all(engine, "SELECT id, sub_account FROM mos")
    assert stored == [{"id": "r-2", "sub_account": "apple"}]
    assert [row["reason"] for row in await rejected(engine)] == ["foreign_sub_account"]


@pytest.mark.parametrize("squatter_name", INTRUDERS)
async def test_a_reply_id_taken_by_another_key_is_refused_for_an_operator_not_swallowed(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine, squatter_name: str
) -> None:
    owner, squatter = await party(app, client, OWNER), await party(app, client, squatter_name)
    assert (await squatter.post("mo", {"id": "r-1", "messageText": "first"})).status_code == 200

    answer = await owner.post("mo", {"id": "r-1", "messageText": "SAIR"})

    assert answer.status_code == 403  # not 200 with "duplicates": 1, stored nowhere
    [kept] = await fetch_all(engine, "SELECT sub_account, reason, body FROM rejected_bodies")
    assert (kept["sub_account"], kept["reason"]) == (OWNER, "foreign_message")
    assert b"SAIR" in kept["body"]


async def test_a_reply_retried_with_more_fields_fills_them_in(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    owner = await party(app, client, OWNER)
    await owner.post("mo", {"id": "r-1", "messageText": "SAIR"})

    retry = await owner.post(
        "mo",
        {"id": "r-1", "messageText": "SAIR", "carrierName": "TIM", "mt": {"id": "m-1"}},
    )

    assert retry.json() == {"received": 1, "duplicates": 1}
    [row] = await fetch_all(engine, "SELECT carrier_name, mt_id, message_text FROM mos")
    assert row == {"carrier_name": "TIM", "mt_id": "m-1", "message_text": "SAIR"}


async def test_a_callback_retried_with_more_fields_fills_them_in(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    owner = await party(app, client, OWNER)
    await owner.post("callback", {"id": "m-1", "sentStatusCode": 2})

    retry = await owner.post("callback", CALLBACK)

    assert retry.json() == {"received": 1, "duplicates": 1}
    row = await message_row(engine)
    assert (row["carrier_name"], row["destination"], row["correlation_id"]) == (
        "VIVO",
        "5511900000001",
        "owner-ref",
    )


@pytest.mark.parametrize("first", ["message", "replies"])
async def test_replies_naming_another_sub_accounts_message_do_not_count_on_it(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine, first: str
) -> None:
    """Found by an intruder's probe: acme's key, given globex's message id, inflated globex's
    reply figures (and could have put an opt-out on its campaign). Whichever arrives first,
    the message or the intruder's replies, they stay the intruder's own."""
    owner, intruder = await party(app, client, OWNER), await party(app, client, "apple")
    replies = [
        {"id": "x-1", "source": "5511955554444", "messageText": "hello", "mt": {"id": "m-1"}},
        {"id": "x-2", "source": "5511955554444", "messageText": "SAIR", "mt": {"id": "m-1"}},
    ]
    if first == "message":
        assert (await owner.post("callback", CALLBACK)).status_code == 200
    for reply in replies:
        assert (await intruder.post("mo", reply)).status_code == 200
    if first == "replies":
        assert (await owner.post("callback", CALLBACK)).status_code == 200
    own = {"id": "own-1", "messageText": "ok", "mt": {"id": "m-1"}}
    assert (await owner.post("mo", own)).status_code == 200

    for _ in range(100):  # the queued recounts run in the background
        if not await fetch_all(engine, "SELECT id FROM reply_recounts"):
            break
        await asyncio.sleep(0.1)
    [row] = await fetch_all(engine, "SELECT reply_count FROM messages WHERE id = 'm-1'")
    assert row["reply_count"] == 1
    stats = (await owner.read("/v1/stats", **{"from": "2023-11-01T00:00:00Z"})).json()
    assert (stats["totals"]["replies"], stats["totals"]["optOuts"]) == (1, 0)
    detail = (await owner.read("/v1/sms/status/m-1")).json()
    assert [reply["id"] for reply in detail["replies"]] == ["own-1"]
