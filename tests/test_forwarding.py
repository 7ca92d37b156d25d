"""Forwarding: every stored reply and status change is pushed to the endpoints that receive
it, signed as Standard Webhooks says (checked with the standardwebhooks package, as a
consumer would), retried, in order per message, within its sub-account, never lost."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.db import users
from app.rules.scope import Role
from tests.conftest import add_key, fetch_all
from tests.receivers import Received, always, receiving


class People:
    """An admin, a user of acme and one of globex; webhook keys of acme and globex."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.headers: dict[str, dict[str, str]] = {}
        self.keys: dict[str, str] = {}

    async def hook(self, kind: str, body: Any, sub: str = "acme") -> None:
        answer = await self.client.post(
            f"/v1/webhooks/{kind}", params={"key": self.keys[sub]}, json=body
        )
        assert answer.status_code == 200, answer.text

    async def call(self, who: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.request(method, path, headers=self.headers[who], **kwargs)

    async def add_endpoint(self, who: str, url: str, **fields: Any) -> dict[str, Any]:
        answer = await self.call(who, "POST", "/v1/endpoints", json={"url": url, **fields})
        assert answer.status_code == 201, answer.text
        created: dict[str, Any] = answer.json()
        return created


@pytest.fixture
async def people(app: FastAPI, client: httpx.AsyncClient) -> People:
    found = People(client)
    async with app.state.engine.begin() as conn:
        for name, role, sub in (
            ("boss", Role.ADMIN, None),
            ("ana", Role.USER, "acme"),
            ("gil", Role.USER, "globex"),
        ):
            token = await users.add_user(
                conn, username=name, role=role, sub_account=sub, email=None, token=None
            )
            found.headers[name] = {"UserName": name, "AuthenticationToken": token}
    for sub in ("acme", "globex"):
        found.keys[sub] = await add_key(app, sub)
    return found


def dlr(message_id: str, code: int = 4) -> dict[str, Any]:
    return {"id": message_id, "sentStatusCode": 2, "deliveredStatusCode": code}


def mo(mo_id: str, sub: str = "acme", text: str = "SAIR") -> dict[str, Any]:
    return {"id": mo_id, "subAccount": sub, "messageText": text, "receivedAt": 1473088405588}


def verified(secret: str, item: Received) -> Any:
    return Webhook(secret).verify(item.body, item.headers)


async def test_a_reply_and_a_status_arrive_signed_exactly_as_the_read_api_shows_them(
    people: People,
) -> None:
    async with receiving() as receiver:
        endpoint = await people.add_endpoint("boss", receiver.url)
        assert endpoint["secret"].startswith("whsec_")
        assert endpoint["events"] == ["mo.received", "status.updated"]

        await people.hook("dlr", dlr("m-1"))
        await people.hook("mo", mo("r-1"))
        received = await receiver.wait_for(2)

    events = {item.json["type"]: item for item in received}
    status = verified(endpoint["secret"], events["status.updated"])
    reply = verified(endpoint["secret"], events["mo.received"])
    assert events["status.updated"].headers["content-type"] == "application/json"

    searched = await people.call("boss", "POST", "/v1/sms/status/search", json={"ids": ["m-1"]})
    assert status["data"] == searched.json()["smsStatuses"][0]
    assert status["timestamp"] == status["data"]["updatedDate"]
    replies = await people.call(
        "boss", "GET", "/v1/sms/receive/search", params={"start": "2016-09-01T00:00:00Z"}
    )
    assert reply["data"] == replies.json()["messages"][0]


async def test_a_signature_made_with_another_secret_does_not_verify(people: People) -> None:
    async with receiving() as receiver:
        await people.add_endpoint("boss", receiver.url)
        await people.hook("dlr", dlr("m-1"))
        (item,) = await receiver.wait_for(1)
    other = Webhook("whsec_" + "A" * 43 + "=")
    with pytest.raises(WebhookVerificationError):
        other.verify(item.body, item.headers)
