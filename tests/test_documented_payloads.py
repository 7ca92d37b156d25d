"""Every example and variant documented in docs/payloads.md, posted over HTTP and read back
from PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import add_key, fetch_all

CALLBACK_EXAMPLE: dict[str, Any] = {
    "id": "f9c100ff-aed0-4456-898c-e57d754c439c",
    "correlationId": "client-id",
    "carrierId": 1,
    "carrierName": "VIVO",
    "destination": "5511900009999",
    "sentStatusCode": 2,
    "sentStatus": "SENT_SUCCESS",
    "sentAt": 1266660300000,
    "sentDate": "2010-02-20T10:05:00Z",
    "campaignId": "64",
    "extraInfo": "",
}
DLR_EXAMPLE: dict[str, Any] = {
    "id": "8f5af680-973e-11e4-ad43-4ee58e9a13a6",
    "correlationId": "myId",
    "carrierId": 5,
    "carrierName": "TIM",
    "destination": "5519900001111",
    "sentStatusCode": 2,
    "sentStatus": "SENT_SUCCESS",
    "sentStatusAt": 1420732929252,
    "sentStatusDate": "2015-01-08T16:02:09Z",
    "deliveredStatusCode": 4,
    "deliveredStatus": "DELIVERED_SUCCESS",
    "deliveredAt": 1420732954000,
    "deliveredDate": "2015-01-08T16:02:34Z",
    "campaignId": 1234,
}
MO_EXAMPLE: dict[str, Any] = {
    "id": "25950050-7362-11e6-be62-001b7843e7d4",
    "subAccount": "iFoodMarketing",
    "campaignAlias": "iFoodPromo",
    "carrierId": 1,
    "carrierName": "VIVO",
    "source": "5516981562820",
    "shortCode": "28128",
    "messageText": "I want pizza",
    "receivedAt": 1473088405588,
    "receivedDate": "2016-09-05T12:13:25Z",
    "mt": {
        "id": "8be584fd-2554-439b-9ba9-aab507278992",
        "correlationId": "1876",
        "username": "iFoodCS",
        "email": "customer.support@ifood.com",
    },
}


def utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


async def message(engine: AsyncEngine, message_id: str) -> dict[str, Any]:
    rows = await fetch_all(engine, "SELECT * FROM messages WHERE id = :id", id=message_id)
    assert len(rows) == 1, f"expected one stored row for {message_id}, got {rows}"
    return rows[0]


async def test_documented_callback_is_stored_with_the_keys_sub_account(
    hook: Any, engine: AsyncEngine
) -> None:
    response = await hook("callback", CALLBACK_EXAMPLE)

    assert response.status_code == 200
    assert response.json() == {"received": 1, "duplicates": 0}
    row = await message(engine, CALLBACK_EXAMPLE["id"])
    assert row["sub_account"] == "acme"
    assert row["correlation_id"] == "client-id"
    assert (row["carrier_id"], row["carrier_name"]) == (1, "VIVO")
    assert row["destination"] == "5511900009999"
    assert (row["sent_status_code"], row["sent_status"]) == (2, "SENT_SUCCESS")
    assert row["sent_at"] == datetime(2010, 2, 20, 10, 5, tzinfo=UTC)
    assert row["campaign_id"] == "64"
    assert row["extra_info"] is None  # "" means absent
    assert row["delivered_status_code"] is None


async def test_documented_dlr_fills_both_stages_from_its_sent_status_names(
    hook: Any, engine: AsyncEngine
) -> None:
    response = await hook("dlr", DLR_EXAMPLE)

    assert response.status_code == 200
    row = await message(engine, DLR_EXAMPLE["id"])
    assert row["sent_at"] == utc(1420732929252)  # sentStatusAt, milliseconds kept
    assert (row["sent_status_code"], row["sent_status"]) == (2, "SENT_SUCCESS")
    assert (row["delivered_status_code"], row["delivered_status"]) == (4, "DELIVERED_SUCCESS")
    assert row["delivered_at"] == utc(1420732954000)
    assert row["campaign_id"] == "1234"  # a number in this example, text in the row


async def post_with_the_accounts_key(
    app: FastAPI, client: httpx.AsyncClient, kind: str, body: Any
) -> httpx.Response:
    """The account's own key (no sub-account): it may write replies of any sub-account."""
    key = await add_key(app, None)
    return await client.post(f"/v1/webhooks/{kind}", params={"key": key}, json=body)


async def test_documented_mo_is_stored_with_its_own_sub_account_and_mt_link(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    response = await post_with_the_accounts_key(app, client, "mo", MO_EXAMPLE)

    assert response.status_code == 200
    [mo] = await fetch_all(engine, "SELECT * FROM mos")
    assert mo["id"] == MO_EXAMPLE["id"]
    assert mo["sub_account"] == "iFoodMarketing"  # the one it names
    assert mo["message_text"] == "I want pizza"
    assert mo["received_at"] == utc(1473088405588)
    assert (mo["source"], mo["short_code"], mo["campaign_alias"]) == (
        "5516981562820",
        "28128",
        "iFoodPromo",
    )
    assert mo["mt_id"] == "8be584fd-2554-439b-9ba9-aab507278992"
    assert (mo["mt_correlation_id"], mo["mt_username"], mo["mt_email"]) == (
        "1876",
        "iFoodCS",
        "customer.support@ifood.com",
    )


async def test_every_accepted_event_is_logged_raw_with_unknown_fields(
    app: FastAPI, client: httpx.AsyncClient, hook: Any, engine: AsyncEngine
) -> None:
    dlr = {**DLR_EXAMPLE, "brandNewField": {"nested": [1, 2]}}
    await hook("callback", CALLBACK_EXAMPLE)
    await hook("dlr", dlr)
    await post_with_the_accounts_key(app, client, "mo", MO_EXAMPLE)

    events = await fetch_all(engine, "SELECT kind, message_id, sub_account, payload FROM events")
    by_kind = {event["kind"]: event for event in events}
    assert set(by_kind) == {"callback", "dlr", "mo"}
    assert by_kind["dlr"]["payload"] == dlr
    assert by_kind["callback"]["payload"] == CALLBACK_EXAMPLE
    assert by_kind["mo"]["payload"] == MO_EXAMPLE
    assert by_kind["callback"]["sub_account"] == "acme"
    assert by_kind["mo"]["sub_account"] == "iFoodMarketing"


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        ("2016-09-08T11:17:39Z", datetime(2016, 9, 8, 11, 17, 39, tzinfo=UTC)),
        ("2016-09-08T11:17:39+0000", datetime(2016, 9, 8, 11, 17, 39, tzinfo=UTC)),
        ("2016-09-08T11:17:39+00:00", datetime(2016, 9, 8, 11, 17, 39, tzinfo=UTC)),
        ("2016-09-08T11:17:39.113Z", datetime(2016, 9, 8, 11, 17, 39, 113000, tzinfo=UTC)),
        ("2016-09-08T11:17:39.113+0000", datetime(2016, 9, 8, 11, 17, 39, 113000, tzinfo=UTC)),
        ("2016-09-08T08:17:39-0300", datetime(2016, 9, 8, 11, 17, 39, tzinfo=UTC)),
    ],
)
async def test_iso_date_variants_are_read_as_the_same_instant(
    hook: Any, engine: AsyncEngine, date: str, expected: datetime
) -> None:
    response = await hook("dlr", {"id": "m1", "sentDate": date, "deliveredDate": date})

    assert response.status_code == 200, response.text
    row = await message(engine, "m1")
    assert row["sent_at"] == expected
    assert row["delivered_at"] == expected


async def test_epoch_milliseconds_win_over_the_iso_string(hook: Any, engine: AsyncEngine) -> None:
    await hook(
        "callback",
        {
            "id": "m1",
            "sentStatusCode": 2,
            "sentAt": 1266660300123,
            "sentDate": "2001-01-01T00:00:00Z",
        },
    )

    assert (await message(engine, "m1"))["sent_at"] == utc(1266660300123)


@pytest.mark.parametrize("absent", ["missing", None, "", " \t"])
async def test_optional_fields_missing_null_or_empty_all_mean_absent(
    hook: Any, engine: AsyncEngine, absent: Any
) -> None:
    optional = [
        "correlationId",
        "carrierId",
        "carrierName",
        "destination",
        "sentDate",
        "campaignId",
        "extraInfo",
        "sentAt",
        "sentStatus",
    ]
    body: dict[str, Any] = {"id": "m1", "sentStatusCode": 2}
    if absent != "missing":
        body.update(dict.fromkeys(optional, absent))

    response = await hook("callback", body)

    assert response.status_code == 200, response.text
    row = await message(engine, "m1")
    assert row["correlation_id"] is None
    assert row["carrier_id"] is None
    assert row["campaign_id"] is None
    assert row["sent_at"] is None
    assert row["sent_status"] == "SENT_SUCCESS"  # named from the documented code table


async def test_unknown_status_codes_are_kept_as_they_come(hook: Any, engine: AsyncEngine) -> None:
    response = await hook(
        "dlr",
        {
            "id": "m1",
            "sentStatusCode": 2,
            "deliveredStatusCode": 777,
            "deliveredStatus": "SOMETHING_NEW",
            "deliveredAt": 1420732954000,
        },
    )

    assert response.status_code == 200
    row = await message(engine, "m1")
    assert (row["delivered_status_code"], row["delivered_status"]) == (777, "SOMETHING_NEW")


async def test_unknown_code_without_a_name_stays_nameless(hook: Any, engine: AsyncEngine) -> None:
    await hook("callback", {"id": "m1", "sentStatusCode": 999})

    row = await message(engine, "m1")
    assert (row["sent_status_code"], row["sent_status"]) == (999, None)


async def test_a_bulk_array_is_stored_whole(hook: Any, engine: AsyncEngine) -> None:
    body = [{**DLR_EXAMPLE, "id": f"bulk-{i}"} for i in range(1000)]

    response = await hook("dlr", body)

    assert response.json() == {"received": 1000, "duplicates": 0}
    [count] = await fetch_all(engine, "SELECT count(*) AS n FROM messages")
    assert count["n"] == 1000


async def test_mo_by_get_with_dotted_mt_fields(
    client: httpx.AsyncClient, webhook_key: str, engine: AsyncEngine
) -> None:
    params = {
        "key": webhook_key,
        "id": "mo-get-1",
        "subAccount": "acme",
        "carrierId": "1",
        "carrierName": "VIVO",
        "source": "5516981562820",
        "shortCode": "28128",
        "messageText": "Quero pizza 🍕",
        "receivedAt": "1473088405588",
        "receivedDate": "2016-09-05T12:13:25Z",
        "mt.id": "8be584fd-2554-439b-9ba9-aab507278992",
        "mt.correlationId": "1876",
        "mt.username": "iFoodCS",
        "mt.email": "customer.support@ifood.com",
    }

    response = await client.get("/v1/webhooks/mo", params=params)

    assert response.status_code == 200, response.text
    [mo] = await fetch_all(engine, "SELECT * FROM mos")
    assert mo["message_text"] == "Quero pizza 🍕"
    assert mo["carrier_id"] == 1
    assert mo["mt_id"] == "8be584fd-2554-439b-9ba9-aab507278992"
    assert mo["mt_email"] == "customer.support@ifood.com"
    [event] = await fetch_all(engine, "SELECT payload FROM events")
    assert "key" not in event["payload"]  # the credential is not part of the payload
    assert event["payload"]["mt"]["correlationId"] == "1876"


async def test_mo_by_get_with_camel_case_mt_fields(
    client: httpx.AsyncClient, webhook_key: str, engine: AsyncEngine
) -> None:
    response = await client.get(
        "/v1/webhooks/mo",
        params={"key": webhook_key, "id": "mo-get-2", "mtId": "mt-9", "mtCorrelationId": "c-9"},
    )

    assert response.status_code == 200
    [mo] = await fetch_all(engine, "SELECT mt_id, mt_correlation_id, sub_account FROM mos")
    assert mo == {"mt_id": "mt-9", "mt_correlation_id": "c-9", "sub_account": "acme"}


async def test_mo_without_received_time_gets_the_time_we_received_it(
    hook: Any, engine: AsyncEngine
) -> None:
    before = datetime.now(UTC)
    await hook("mo", {"id": "mo-1", "messageText": "oi"})

    [mo] = await fetch_all(engine, "SELECT received_at FROM mos")
    assert before <= mo["received_at"] <= datetime.now(UTC)
