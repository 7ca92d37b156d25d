"""Code written against Wavy's query API, pointed at this service: the calls of three public
clients of Wavy, replayed exactly as they make them (lower-case credential headers, a JSON
content type on a GET, ``ids`` alone, ``limit``/``start``/``end`` on the list), and their
answers read as those clients read them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.db import users
from app.rules.scope import Role
from tests.conftest import add_key

# A Django provider's test fixture of Wavy's answer: the item keys and types real clients read.
WAVY_LIVE_ANSWER: dict[str, Any] = {
    "total": 2,
    "start": "2024-03-17T11:15:08Z",
    "end": "2024-03-18T11:15:08Z",
    "smsStatuses": [
        {
            "id": "781E2721-0000",
            "correlationId": "781E2721-0000",
            "carrierId": 1,
            "carrierName": "VIVO",
            "destination": "5515997915209",
            "sentStatusCode": 2,
            "sentStatus": "SENT_SUCCESS",
            "sentDate": "2024-03-18T10:51:27Z",
            "sentAt": 1710759087089,
            "deliveredStatusCode": 4,
            "deliveredStatus": "DELIVERED_SUCCESS",
            "deliveredDate": "2024-03-18T10:51:29Z",
            "deliveredAt": 1710759089357,
            "updatedDate": "2024-03-18T10:51:54Z",
            "updatedAt": 1710759114853,
        },
        {
            "id": "A3673591-0000",
            "carrierId": 0,
            "carrierName": "TIM",
            "sentStatusCode": 202,
            "sentStatus": "INVALID_DESTINATION_NUMBER",
            "sentDate": "2024-03-18T11:14:08Z",
            "sentAt": 1710760448009,
            "updatedDate": "2024-03-18T11:14:16Z",
            "updatedAt": 1710760456019,
        },
    ],
}


class WavyClient:
    """The credentials as these clients send them: lower-case names, JSON content type."""

    def __init__(self, client: httpx.AsyncClient, username: str, token: str) -> None:
        self.client = client
        self.headers = {
            "username": username,
            "authenticationtoken": token,
            "content-type": "application/json",
        }

    async def search_by_ids(self, ids: list[str]) -> list[dict[str, Any]]:
        """The PHP job: POST only ``ids`` for messages still missing a status, then read
        ``$json["smsStatuses"]``."""
        answer = await self.client.post(
            "/v1/sms/status/search", headers=self.headers, json={"ids": ids}
        )
        assert answer.status_code == 200, answer.text
        statuses: list[dict[str, Any]] = answer.json()["smsStatuses"]
        return statuses

    async def poll_list(self, start: str, end: str) -> list[list[dict[str, Any]]]:
        """The other PHP job: ``status/list?limit=100&start=&end=`` until ``smsStatuses`` is
        empty. Bounded here, so a list that never empties fails instead of hanging."""
        pages: list[list[dict[str, Any]]] = []
        for _ in range(50):
            answer = await self.client.get(
                "/v1/sms/status/list",
                headers=self.headers,
                params={"limit": 100, "start": start, "end": end},
            )
            assert answer.status_code == 200, answer.text
            page = answer.json()["smsStatuses"]
            if not page:
                return pages
            pages.append(page)
        raise AssertionError("the list never came back empty")


@pytest.fixture
async def wavy(app: FastAPI, client: httpx.AsyncClient) -> WavyClient:
    async with app.state.engine.begin() as conn:
        token = await users.add_user(
            conn, username="acme-job", role=Role.USER, sub_account="acme", email=None, token=None
        )
    return WavyClient(client, "acme-job", token)


@pytest.fixture
async def post(app: FastAPI, client: httpx.AsyncClient) -> Any:
    key = await add_key(app, "acme")

    async def send(kind: str, body: Any) -> None:
        answer = await client.post(f"/v1/webhooks/{kind}", params={"key": key}, json=body)
        assert answer.status_code == 200, answer.text

    return send


def delivered(message_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": message_id,
        "correlationId": message_id,
        "carrierId": 1,
        "carrierName": "VIVO",
        "destination": "5515997915209",
        "sentStatusCode": 2,
        "sentStatus": "SENT_SUCCESS",
        "sentAt": 1710759087089,
        "deliveredStatusCode": 4,
        "deliveredStatus": "DELIVERED_SUCCESS",
        "deliveredAt": 1710759089357,
        **fields,
    }


REFUSED = {
    "id": "A3673591-0000",
    "carrierId": 0,
    "carrierName": "TIM",
    "sentStatusCode": 202,
    "sentStatus": "INVALID_DESTINATION_NUMBER",
    "sentAt": 1710760448009,
}


async def test_a_search_by_ids_alone_answers_wavys_envelope_with_its_live_field_names(
    wavy: WavyClient, post: Any
) -> None:
    await post("dlr", delivered("781E2721-0000"))
    await post("callback", REFUSED)

    statuses = await wavy.search_by_ids(["781E2721-0000", "A3673591-0000", "never-sent"])

    by_id = {status["id"]: status for status in statuses}
    assert set(by_id) == {"781E2721-0000", "A3673591-0000"}
    for wavy_item in WAVY_LIVE_ANSWER["smsStatuses"]:
        ours = by_id[wavy_item["id"]]
        for name, value in wavy_item.items():
            assert name in ours, name  # every field a client of Wavy reads is there
            assert type(ours[name]) is type(value), name  # with Wavy's type
    ok = by_id["781E2721-0000"]
    assert (ok["sentAt"], ok["sentStatusAt"]) == (1710759087089, 1710759087089)
    assert ok["sentDate"] == ok["sentStatusDate"] == "2024-03-18T10:51:27.089Z"
    assert ok["updatedAt"] > 0
    assert ok["updatedDate"].endswith("Z")
    # A refused message has no delivered stage: null, never a made-up value.
    refused = by_id["A3673591-0000"]
    assert [refused[name] for name in ("deliveredStatusCode", "deliveredAt", "deliveredDate")] == [
        None,
        None,
        None,
    ]


async def test_the_search_envelope_counts_this_answer_and_names_its_window(
    wavy: WavyClient, post: Any, client: httpx.AsyncClient
) -> None:
    await post("dlr", delivered("m-1"))
    before = datetime.now(UTC)

    answer = await client.post(
        "/v1/sms/status/search", headers=wavy.headers, json={"correlationIds": ["m-1"]}
    )

    envelope = answer.json()
    assert set(envelope) == set(WAVY_LIVE_ANSWER)
    assert envelope["total"] == len(envelope["smsStatuses"]) == 1
    assert envelope["start"] == envelope["smsStatuses"][0]["firstSeenAt"]
    assert datetime.fromisoformat(envelope["end"]) >= before - timedelta(seconds=1)


async def test_a_list_polled_with_limit_start_and_end_until_empty_ends_with_each_change_once(
    wavy: WavyClient, post: Any
) -> None:
    await post("callback", [{"id": f"m-{n}", "sentStatusCode": 2} for n in range(230)])
    start = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    end = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()

    pages = await wavy.poll_list(start, end)
    again = await wavy.poll_list(start, end)
    elsewhere = await wavy.poll_list("2020-01-01T00:00:00Z", "2020-01-02T00:00:00Z")

    assert [len(page) for page in pages] == [100, 100, 30]
    assert len({status["id"] for page in pages for status in page}) == 230
    assert again == []  # once per window
    assert elsewhere == []  # nothing changed then


async def test_a_status_that_changes_again_comes_again_in_its_window(
    wavy: WavyClient, post: Any
) -> None:
    await post("callback", {"id": "m-1", "sentStatusCode": 2})
    start = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    end = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    first = await wavy.poll_list(start, end)

    await post("dlr", delivered("m-1"))
    second = await wavy.poll_list(start, end)

    assert [[s["id"] for s in page] for page in first] == [["m-1"]]
    assert [[s["deliveredStatusCode"] for s in page] for page in second] == [[4]]


async def test_every_place_that_shows_a_status_shows_the_same_fields(
    wavy: WavyClient, post: Any, client: httpx.AsyncClient
) -> None:
    await post("dlr", delivered("m-1"))

    [searched] = await wavy.search_by_ids(["m-1"])
    detail = (await client.get("/v1/sms/status/m-1", headers=wavy.headers)).json()
    fed = (await client.get("/v1/sms/status/changes", headers=wavy.headers)).json()["items"][0]
    listed = (await client.get("/v1/sms/status", headers=wavy.headers)).json()["items"][0]
    exported = (await client.get("/v1/sms/status/export", headers=wavy.headers)).text

    assert set(detail) - {"events", "replies"} == set(searched)
    assert set(fed) == set(searched)
    assert set(listed) == set(searched)
    assert exported.splitlines()[0].split(",") == list(searched)
