"""Forwarding: every stored reply and status change is pushed to the endpoints that receive
it, signed as Standard Webhooks says (checked with the standardwebhooks package, as a
consumer would), retried, in order per message, within its sub-account, never lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import text
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.db import forwarding, users
from app.db.retention import purge_tables, retention_ages
from app.outbound.delivery_client import DeliveryClient
from app.rules.scope import Role
from app.services import endpoints as endpoint_service
from app.settings import Settings
from tests.conftest import add_key, fetch_all, free_port, serving
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
        assert endpoint["events"] == ["mo.received", "status.updated", "optout.changed"]

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


async def test_a_failed_delivery_is_retried_with_the_same_webhook_id_and_every_attempt_shown(
    people: People,
) -> None:
    async with receiving(lambda n, _body: 500 if n < 2 else 200) as receiver:
        endpoint = await people.add_endpoint("boss", receiver.url)
        await people.hook("dlr", dlr("m-1"))
        received = await receiver.wait_for(3)
        await asyncio.sleep(0.3)  # the third attempt's record

    assert len({item.webhook_id for item in received}) == 1
    attempts = await people.call("boss", "GET", f"/v1/endpoints/{endpoint['id']}/attempts")
    items = attempts.json()["items"]
    assert [item["statusCode"] for item in items] == [200, 500, 500]  # newest first
    assert items[0]["response"] == "answer 2"
    assert {item["webhookId"] for item in items} == {received[0].webhook_id}
    assert all(item["eventType"] == "status.updated" for item in items)
    shown = (await people.call("boss", "GET", f"/v1/endpoints/{endpoint['id']}")).json()
    assert shown["backlog"] == 0
    assert shown["failingSince"] is None
    assert shown["lastSuccessAt"] is not None


async def test_attempts_page_newest_first(people: People) -> None:
    async with receiving() as receiver:
        endpoint = await people.add_endpoint("boss", receiver.url)
        for n in range(5):
            await people.hook("dlr", dlr(f"m-{n}"))
        await receiver.wait_for(5)
        await asyncio.sleep(0.3)
    path = f"/v1/endpoints/{endpoint['id']}/attempts"
    first = (await people.call("boss", "GET", path, params={"limit": 3})).json()
    rest = (
        await people.call("boss", "GET", path, params={"limit": 3, "cursor": first["next"]})
    ).json()
    ids = [item["id"] for item in first["items"] + rest["items"]]
    assert ids == sorted(ids, reverse=True)
    assert len(ids) == 5
    assert rest["next"] is None


async def test_after_the_last_retry_a_delivery_is_failed_and_a_replay_sends_it_again(
    people: People,
) -> None:
    answers = {"status": 503}
    async with receiving(lambda _n, _body: answers["status"]) as receiver:
        endpoint = await people.add_endpoint("boss", receiver.url)
        before = datetime.now(UTC) - timedelta(seconds=1)
        await people.hook("dlr", dlr("m-1"))
        await receiver.wait_for(3)  # the test schedule: 3 attempts
        await asyncio.sleep(1.0)
        assert len(receiver.received) == 3
        shown = (await people.call("boss", "GET", f"/v1/endpoints/{endpoint['id']}")).json()
        assert shown["failed"] == 1
        assert shown["backlog"] == 0
        assert shown["failingSince"] is not None

        answers["status"] = 200
        replay = await people.call(
            "boss",
            "POST",
            f"/v1/endpoints/{endpoint['id']}/replay",
            json={"since": before.isoformat()},
        )
        assert replay.status_code == 202
        assert replay.json() == {"queued": 1}
        received = await receiver.wait_for(4)

    assert received[3].json == received[0].json
    # The same event under the same webhook-id: a consumer that drops ids it has processed
    # processes it once, whether or not the first copy reached it.
    assert received[3].webhook_id == received[0].webhook_id


async def test_one_messages_changes_arrive_in_order_and_other_messages_do_not_wait(
    people: People,
) -> None:
    callback_attempts = []

    def first_callback_fails_twice(_n: int, body: Any) -> int:
        data = body["data"]
        if data["id"] == "slow" and data["deliveredStatusCode"] is None:
            callback_attempts.append(1)
            return 500 if len(callback_attempts) <= 2 else 200
        return 200

    async with receiving(first_callback_fails_twice) as receiver:
        await people.add_endpoint("boss", receiver.url)
        await people.hook("callback", {"id": "slow", "sentStatusCode": 2})
        await receiver.wait_for(1)
        await people.hook("dlr", dlr("slow"))
        await people.hook("dlr", dlr("quick"))
        await receiver.wait_for(5)

    seen = [
        (item.json["data"]["id"], item.json["data"]["deliveredStatusCode"])
        for item in receiver.received
    ]
    slow = [code for message, code in seen if message == "slow"]
    assert slow == [None, None, None, 4]  # the callback, retried, before the DLR's change
    assert seen.index(("quick", 4)) < seen.index(("slow", 4))


async def test_an_endpoint_that_never_answers_does_not_hold_up_another(
    people: People, app: FastAPI
) -> None:
    async with receiving(always(200)) as healthy, receiving(lambda _n, _b: None) as hung:
        await people.add_endpoint("boss", hung.url)
        await people.add_endpoint("boss", healthy.url)
        started = asyncio.get_running_loop().time()
        for n in range(20):
            await people.hook("dlr", dlr(f"m-{n}"))
        await healthy.wait_for(20, timeout_s=5)
        took = asyncio.get_running_loop().time() - started
        await hung.wait_for(1)
    # Well inside the hung endpoint's 2 s timeout: nothing waited for it.
    assert took < app.state.settings.forward_timeout_s


async def test_a_sub_account_endpoint_never_receives_another_sub_accounts_data(
    people: People,
) -> None:
    async with receiving() as acme, receiving() as everything:
        mine = await people.add_endpoint("ana", acme.url)
        assert mine["subAccount"] == "acme"
        await people.add_endpoint("boss", everything.url)
        await people.hook("dlr", dlr("theirs-1"), sub="globex")
        await people.hook("mo", mo("theirs-r", sub="globex"), sub="globex")
        await people.hook("dlr", dlr("mine-1"))
        await people.hook("mo", mo("mine-r"))
        await everything.wait_for(4)
        await acme.wait_for(2)
        await asyncio.sleep(0.5)
    assert sorted(body["data"]["id"] for body in acme.bodies()) == ["mine-1", "mine-r"]
    assert {body["data"]["subAccount"] for body in acme.bodies()} == {"acme"}


async def test_a_user_manages_only_their_own_sub_accounts_endpoints(people: People) -> None:
    """Another's endpoint answers 404, as one that does not exist: ids cannot be enumerated."""
    url = "http://127.0.0.1:9/hooks"
    ours = await people.add_endpoint("ana", url)
    theirs = await people.add_endpoint("gil", url)
    everyone = await people.add_endpoint("boss", url)
    assert everyone["subAccount"] is None

    for path in (theirs["id"], everyone["id"]):
        for method, extra in (
            ("GET", {}),
            ("PATCH", {"json": {"disabled": True}}),
            ("DELETE", {}),
            ("GET", {"suffix": "/attempts"}),
            ("POST", {"suffix": "/replay", "json": {"since": "2020-01-01T00:00:00Z"}}),
            ("POST", {"suffix": "/rotate-secret"}),
        ):
            suffix = extra.pop("suffix", "")
            answer = await people.call("ana", method, f"/v1/endpoints/{path}{suffix}", **extra)
            missing = await people.call("ana", method, f"/v1/endpoints/99999{suffix}", **extra)
            assert answer.status_code == missing.status_code == 404, (method, suffix, answer.text)
            assert answer.json() == missing.json()

    elsewhere = await people.call(
        "ana", "POST", "/v1/endpoints", json={"url": url, "subAccount": "globex"}
    )
    assert elsewhere.status_code == 403
    listed = await people.call("ana", "GET", "/v1/endpoints")
    assert [item["id"] for item in listed.json()] == [ours["id"]]
    widened = await people.call("ana", "GET", "/v1/endpoints", params={"subAccount": "globex"})
    assert widened.status_code == 403
    assert "secret" not in listed.json()[0]
    # Nothing of theirs changed.
    still = (await people.call("boss", "GET", f"/v1/endpoints/{theirs['id']}")).json()
    assert still["disabled"] is False
    missing = await people.call("boss", "GET", "/v1/endpoints/999")
    assert missing.status_code == 404


async def test_an_admin_sees_and_narrows_every_endpoint(people: People) -> None:
    url = "http://127.0.0.1:9/hooks"
    await people.add_endpoint("ana", url)
    await people.add_endpoint("gil", url)
    for_globex = await people.add_endpoint("boss", url, subAccount="globex")
    assert for_globex["subAccount"] == "globex"
    every = (await people.call("boss", "GET", "/v1/endpoints")).json()
    assert len(every) == 3
    narrowed = await people.call("boss", "GET", "/v1/endpoints", params={"subAccount": "globex"})
    assert len(narrowed.json()) == 2


async def test_a_sub_account_in_the_query_of_an_endpoint_write_is_refused_not_ignored(
    people: People,
) -> None:
    """Reads narrow by ``?subAccount=``; an endpoint takes its sub-account from the body. An
    admin meaning globex's endpoint must not get one receiving every sub-account's data."""
    url = "http://127.0.0.1:9/hooks"
    for who in ("boss", "ana"):
        answer = await people.call(
            who, "POST", "/v1/endpoints", params={"subAccount": "globex"}, json={"url": url}
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["details"][0]["field"] == "query.subAccount"
    assert (await people.call("boss", "GET", "/v1/endpoints")).json() == []

    ours = await people.add_endpoint("ana", url)
    moved = await people.call(
        "boss",
        "PATCH",
        f"/v1/endpoints/{ours['id']}",
        params={"subAccount": "globex"},
        json={"disabled": True},
    )
    assert moved.status_code == 422, moved.text
    still = (await people.call("boss", "GET", f"/v1/endpoints/{ours['id']}")).json()
    assert (still["subAccount"], still["disabled"]) == ("acme", False)


async def test_a_disabled_endpoint_gets_nothing_and_resumes_where_it_stopped(
    people: People,
) -> None:
    async with receiving() as receiver:
        endpoint = await people.add_endpoint("boss", receiver.url, events=["status.updated"])
        path = f"/v1/endpoints/{endpoint['id']}"
        await people.hook("dlr", dlr("before"))
        await receiver.wait_for(1)
        disabled = await people.call("boss", "PATCH", path, json={"disabled": True})
        assert disabled.json()["disabled"] is True
        assert disabled.json()["disabledReason"] == "manual"
        await people.hook("dlr", dlr("while-disabled"))
        await people.hook("mo", mo("not-subscribed"))
        await asyncio.sleep(1.0)
        assert len(receiver.received) == 1
        await people.call("boss", "PATCH", path, json={"disabled": False})
        await receiver.wait_for(2)
        await asyncio.sleep(0.5)
    assert [body["data"]["id"] for body in receiver.bodies()] == ["before", "while-disabled"]


async def test_a_rotated_secret_and_the_previous_one_both_verify_during_the_overlap(
    people: People,
) -> None:
    async with receiving() as receiver:
        endpoint = await people.add_endpoint("boss", receiver.url)
        rotated = await people.call("boss", "POST", f"/v1/endpoints/{endpoint['id']}/rotate-secret")
        assert rotated.status_code == 200
        new_secret = rotated.json()["secret"]
        assert new_secret != endpoint["secret"]
        await asyncio.sleep(0.5)  # the forwarder's next look at its endpoints
        await people.hook("dlr", dlr("m-1"))
        (item,) = await receiver.wait_for(1)
    assert len(item.headers["webhook-signature"].split(" ")) == 2
    assert verified(new_secret, item)["data"]["id"] == "m-1"
    assert verified(endpoint["secret"], item)["data"]["id"] == "m-1"


async def test_a_redirect_is_a_failed_attempt_and_is_not_followed(people: People) -> None:
    async with receiving(always(302)) as receiver:
        endpoint = await people.add_endpoint("boss", receiver.url)
        await people.hook("dlr", dlr("m-1"))
        await receiver.wait_for(3)
        await asyncio.sleep(0.5)
    assert all(item.headers.get("webhook-id") for item in receiver.received)
    assert len(receiver.received) == 3  # no request to where the redirect pointed
    attempts = await people.call("boss", "GET", f"/v1/endpoints/{endpoint['id']}/attempts")
    assert {item["statusCode"] for item in attempts.json()["items"]} == {302}


async def test_bad_endpoints_get_a_clear_422(people: People) -> None:
    for body in (
        {"url": "ftp://example.com/x"},
        {"url": "http://user:pass@example.com/x"},
        {"url": "not a url"},
        {"url": "http://127.0.0.1:9/x", "events": ["sms.sent"]},
        {"url": "http://127.0.0.1:9/x", "events": []},
        {"url": "http://127.0.0.1:9/x", "extra": 1},
    ):
        answer = await people.call("boss", "POST", "/v1/endpoints", json=body)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.json()["error"]["code"] in ("invalid_url", "validation_failed")


async def test_a_removed_endpoint_takes_its_deliveries_and_attempts(
    people: People, app: FastAPI
) -> None:
    async with receiving() as receiver:
        endpoint = await people.add_endpoint("boss", receiver.url)
        await people.hook("dlr", dlr("m-1"))
        await receiver.wait_for(1)
        await asyncio.sleep(0.3)
    removed = await people.call("boss", "DELETE", f"/v1/endpoints/{endpoint['id']}")
    assert removed.status_code == 204
    left = await fetch_all(
        app.state.engine,
        "SELECT (SELECT count(*) FROM deliveries) AS d, "
        "(SELECT count(*) FROM delivery_attempts) AS a",
    )
    assert left == [{"d": 0, "a": 0}]


@asynccontextmanager
async def another_replica(settings: Settings, **overrides: Any) -> AsyncIterator[str]:
    """A second service on the same database (its own forwarder), with these settings."""
    port = free_port()
    async with serving(settings.model_copy(update={"port": port, **overrides})):
        yield f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/x",
        "http://localhost/x",
        "http://10.1.2.3/x",
        "http://192.168.0.10/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/x",
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://0.0.0.0/x",
        # IPv6 forms that carry an inward IPv4 address: NAT64, 6to4, IPv4-compatible, Teredo.
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
        "http://[64:ff9b::7f00:1]/x",
        "http://[2002:7f00:1::]/x",
        "http://[::127.0.0.1]/x",
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/x",
        # Found by an intruder's probe: IPv4-translated forms, and blocks outside public
        # unicast that this Python's ipaddress does not know.
        "http://[::ffff:0:7f00:1]/x",
        "http://[::ffff:0:a9fe:a9fe]/x",
        "http://[fec0::1]/x",
        "http://[5f00::1]/x",
        "http://[3fff::1]/x",
    ],
)
async def test_a_url_that_reaches_a_private_address_is_refused_when_added(
    people: People, settings: Settings, url: str
) -> None:
    async with another_replica(settings, forward_allow_private=False) as strict:
        answer = await people.client.post(
            f"{strict}/v1/endpoints", headers=people.headers["boss"], json={"url": url}
        )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "invalid_url"
    assert "WAVY_FORWARD_ALLOW_PRIVATE" in answer.json()["error"]["message"]


async def test_a_refused_name_does_not_tell_where_it_resolves(
    people: People, settings: Settings
) -> None:
    """The check answers whether a name may be used, never which address it points to; and
    an endpoint the caller cannot touch is not found before any URL is looked at."""
    async with another_replica(settings, forward_allow_private=False) as strict:
        refused, unknown = [
            await people.client.post(
                f"{strict}/v1/endpoints", headers=people.headers["ana"], json={"url": url}
            )
            for url in ("http://localhost/x", "http://no-such-host.invalid/x")
        ]
        theirs = await people.add_endpoint("gil", "https://93.184.216.34/hooks")
        patched = [
            await people.client.patch(
                f"{strict}/v1/endpoints/{endpoint_id}",
                headers=people.headers["ana"],
                json={"url": "http://localhost/x"},
            )
            for endpoint_id in (theirs["id"], 999999)
        ]
    assert refused.status_code == unknown.status_code == 422
    message = refused.json()["error"]["message"]
    # A name that does not resolve gets the same answer: which internal names exist is no
    # more told than where they point.
    assert unknown.json()["error"]["message"] == message.replace(
        "localhost", "no-such-host.invalid"
    )
    assert "localhost" in message
    assert "127.0.0.1" not in message
    assert "::1" not in message
    assert [answer.status_code for answer in patched] == [404, 404]


async def test_a_public_address_is_allowed(settings: Settings) -> None:
    strict = settings.model_copy(update={"forward_allow_private": False})
    assert await endpoint_service.allowed_url("https://93.184.216.34/hooks", strict)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_private_address_is_refused_at_delivery_too(host: str) -> None:
    """A name that resolved to a public address when added may resolve elsewhere later."""
    client = DeliveryClient(timeout_s=2, allow_private=False)
    try:
        async with receiving() as receiver:
            url = receiver.url.replace("127.0.0.1", host)
            answer = await client.post(url, b"{}", {"content-type": "application/json"})
    finally:
        await client.close()
    assert answer.status_code is None
    assert answer.error is not None
    assert "refused" in answer.error
    assert "WAVY_FORWARD_ALLOW_PRIVATE" in answer.error
    assert receiver.received == []


@pytest.mark.parametrize("host", ["[64:ff9b::7f00:1]", "[::127.0.0.1]", "[2002:7f00:1::]"])
async def test_an_ipv6_form_of_an_inward_address_is_refused_at_delivery(host: str) -> None:
    client = DeliveryClient(timeout_s=2, allow_private=False)
    try:
        answer = await client.post(f"http://{host}:9/x", b"{}", {})
    finally:
        await client.close()
    assert answer.status_code is None
    assert answer.error is not None
    assert answer.error.startswith("refused:")


async def test_two_replicas_deliver_each_event_once(people: People, settings: Settings) -> None:
    async with receiving() as receiver, another_replica(settings):
        await people.add_endpoint("boss", receiver.url)
        await asyncio.gather(*(people.hook("dlr", dlr(f"m-{n}")) for n in range(200)))
        await receiver.wait_for(200)
        await asyncio.sleep(1.0)
    assert len(receiver.received) == 200
    assert len({item.webhook_id for item in receiver.received}) == 200
    assert {body["data"]["id"] for body in receiver.bodies()} == {f"m-{n}" for n in range(200)}


async def test_an_endpoint_failing_too_long_is_disabled_and_the_metrics_say_so(
    people: People, settings: Settings, client: httpx.AsyncClient
) -> None:
    async with (
        receiving(always(500)) as receiver,
        another_replica(settings, forward_disable_after="1s"),
    ):
        endpoint = await people.add_endpoint("boss", receiver.url)
        await people.hook("dlr", dlr("m-1"))
        await receiver.wait_for(1)
        path = f"/v1/endpoints/{endpoint['id']}"
        for _ in range(100):
            shown = (await people.call("boss", "GET", path)).json()
            if shown["disabled"]:
                break
            await asyncio.sleep(0.2)
    assert shown["disabledReason"] == "failing"
    assert shown["failingSince"] is not None
    scraped = (await client.get("/metrics")).text
    assert "wavy_forward_endpoints_disabled_failing 1.0" in scraped
    assert f'wavy_forward_endpoint_failing_seconds{{endpoint="{endpoint["id"]}"}}' in scraped
    assert 'wavy_forward_attempts_total{outcome="http_error"}' in scraped


async def test_old_deliveries_and_attempts_are_purged_but_never_a_pending_one(
    people: People, app: FastAPI
) -> None:
    async with receiving() as receiver:
        endpoint = await people.add_endpoint("boss", receiver.url)
        await people.hook("dlr", dlr("sent"))
        await receiver.wait_for(1)
        await asyncio.sleep(0.3)
        await people.call(
            "boss", "PATCH", f"/v1/endpoints/{endpoint['id']}", json={"disabled": True}
        )
        await people.hook("dlr", dlr("waiting"))
        await asyncio.sleep(0.5)  # dispatched? no: a disabled endpoint's position stays
    async with app.state.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO deliveries (endpoint_id, webhook_id, event_type, body, created_at) "
                "VALUES (:id, 'msg_old_pending', 'status.updated', '\\x7b7d', "
                "now() - interval '60 days')"
            ),
            {"id": endpoint["id"]},
        )
        await conn.execute(text("UPDATE deliveries SET created_at = now() - interval '60 days'"))
        await conn.execute(
            text("UPDATE delivery_attempts SET attempted_at = now() - interval '60 days'")
        )
    ages = retention_ages(None, None, timedelta(days=30))
    report = await purge_tables(app.state.engine, ages)
    assert report.deleted["deliveries"] == 1
    assert report.deleted["delivery_attempts"] == 1
    left = await fetch_all(app.state.engine, "SELECT webhook_id, state FROM deliveries")
    assert left == [{"webhook_id": "msg_old_pending", "state": "pending"}]


def test_the_default_retry_schedule_is_svixs() -> None:
    assert Settings().forward_retry_schedule == [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
    assert Settings(forward_retry_schedule="0, 1,60").forward_retry_schedule == [0, 1, 60]
    with pytest.raises(ValidationError):
        Settings(forward_retry_schedule="0,-1")


async def test_an_event_type_named_twice_is_received_once(people: People) -> None:
    async with receiving() as receiver:
        endpoint = await people.add_endpoint(
            "boss", receiver.url, events=["mo.received", "mo.received"]
        )
        assert endpoint["events"] == ["mo.received"]
        await people.hook("mo", mo("r-1"))
        await receiver.wait_for(1)
        await asyncio.sleep(0.5)
    assert len(receiver.received) == 1


async def test_an_endpoint_stays_failing_while_a_failed_delivery_waits_and_says_when_it_retries(
    people: People, app: FastAPI
) -> None:
    """One success among the retries no longer hides the failures still queued. (The
    attempts' outcomes are recorded as the forwarder records them, on a disabled endpoint that
    no forwarder dispatches: the schedule's timing is not this test's.)"""
    endpoint = await people.add_endpoint("boss", "http://127.0.0.1:9/x")
    path = f"/v1/endpoints/{endpoint['id']}"
    await people.call("boss", "PATCH", path, json={"disabled": True})
    async with app.state.engine.begin() as conn:
        ids = [
            await conn.scalar(
                text(
                    "INSERT INTO deliveries (endpoint_id, webhook_id, event_type, body) "
                    "VALUES (:e, :w, 'status.updated', '\\x7b7d') RETURNING id"
                ),
                {"e": endpoint["id"], "w": webhook_id},
            )
            for webhook_id in ("msg_stuck", "msg_fine")
        ]

    async def attempt(delivery_id: int, status: int, retry_in_s: float | None) -> None:
        outcome = forwarding.Outcome(
            delivery_id, "msg_x", datetime.now(UTC), status == 200, status, None, 5, None,
            retry_in_s,
        )  # fmt: skip
        async with app.state.engine.begin() as conn:
            await forwarding.record(conn, endpoint["id"], [outcome])

    await attempt(ids[0], 500, 30.0)  # fails, to be retried in 30 s
    await attempt(ids[1], 200, None)  # another succeeds meanwhile
    waiting = (await people.call("boss", "GET", path)).json()
    await attempt(ids[0], 200, None)  # the retry succeeds
    mended = (await people.call("boss", "GET", path)).json()

    assert waiting["lastSuccessAt"] is not None
    assert waiting["failingSince"] is not None  # still failing: one failed delivery waits
    assert (waiting["backlog"], waiting["retrying"]) == (1, 1)
    next_retry = datetime.fromisoformat(waiting["nextAttemptAt"])
    assert timedelta(seconds=25) < next_retry - datetime.now(UTC) <= timedelta(seconds=30)
    assert (mended["failingSince"], mended["retrying"], mended["nextAttemptAt"]) == (None, 0, None)
