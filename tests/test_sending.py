"""Sending through the service as a drop-in for Wavy's send API, against a stand-in of Wavy over
real HTTP: credentials as Wavy's clients write them, every MT recorded and shown at once,
opted-out destinations refused as Wavy answers them (and never sent), bulk order, Wavy's
answers passed on, and a timeout never sent twice."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.db.engine import writer_connector
from app.db.sending import Batched
from app.outbound.sandbox import Sandbox, SandboxMix
from app.outbound.wavy import WavyClient
from app.settings import Settings
from tests.conftest import add_key, fetch_all, free_port, serving
from tests.test_migrations_and_cli import Service, run_cli
from tests.wavy_stand_in import StandIn

OPTED_OUT = "5519900001111"  # on acme's list
BLACKLISTED = "5519900002222"  # on the account-wide list
THEIRS = "5519900003333"  # on globex's list only
FREE = "5519900004444"


@pytest.fixture
def proxy(base_url: str) -> str:
    return base_url


async def opt_out(client: httpx.AsyncClient, base: str, who: dict[str, str], number: str) -> None:
    headers = {"UserName": who["username"], "AuthenticationToken": who["authenticationtoken"]}
    answer = await client.put(f"{base}/v1/optouts/{number}", headers=headers)
    assert answer.status_code == 200, answer.text


@pytest.fixture
async def lists(client: httpx.AsyncClient, proxy: str, senders: dict[str, dict[str, str]]) -> None:
    # Written as people write numbers: the lists' own normalisation makes them one number.
    await opt_out(client, proxy, senders["ana@acme.example"], "+55 (19) 90000-1111")
    await opt_out(client, proxy, senders["boss"], BLACKLISTED)
    await opt_out(client, proxy, senders["Gil da Globex"], THEIRS)


def admin_headers(senders: dict[str, dict[str, str]]) -> dict[str, str]:
    boss = senders["boss"]
    return {"UserName": boss["username"], "AuthenticationToken": boss["authenticationtoken"]}


async def status_of(client: httpx.AsyncClient, base: str, senders: Any, ids: list[str]) -> Any:
    answer = await client.post(
        f"{base}/v1/sms/status/search", json={"ids": ids}, headers=admin_headers(senders)
    )
    return {item["id"]: item for item in answer.json()["smsStatuses"]}


async def test_a_send_reaches_wavy_with_the_clients_own_credentials_and_shows_at_once(
    client: httpx.AsyncClient, proxy: str, wavy: StandIn, senders: Any, app: FastAPI
) -> None:
    ana = senders["ana@acme.example"]
    answer = await client.post(
        f"{proxy}/v1/send-sms",
        json={"destination": "+" + FREE, "messageText": "Oi!", "correlationId": "order-1",
              "flashSMS": "true", "unknownField": {"kept": 1}},
        headers=ana,
    )  # fmt: skip

    assert answer.status_code == 200, answer.text
    sent = answer.json()
    assert set(sent) == {"id", "correlationId"}
    assert sent["correlationId"] == "order-1"
    [asked] = wavy.asked
    assert (asked.headers["username"], asked.headers["authenticationtoken"]) == (
        ana["username"],
        ana["authenticationtoken"],
    )
    assert asked.json["unknownField"] == {"kept": 1}  # every field passed on unchanged
    assert asked.json["flashSMS"] == "true"
    shown = (await status_of(client, proxy, senders, [sent["id"]]))[sent["id"]]
    assert (shown["destination"], shown["correlationId"], shown["subAccount"]) == (
        FREE,
        "order-1",
        "acme",
    )
    assert shown["sentStatusCode"] is None  # no status yet
    [mt] = await fetch_all(app.state.engine, "SELECT * FROM mts")
    assert (mt["outcome"], mt["message_id"], mt["message_text"]) == ("sent", sent["id"], "Oi!")

    # Wavy's callback merges into it, with the key of acme.
    key = await add_key(app, "acme")
    callback = {"id": sent["id"], "sentStatusCode": 2, "sentStatus": "SENT_SUCCESS",
                "carrierName": "VIVO"}  # fmt: skip
    stored = await client.post(f"{proxy}/v1/webhooks/callback", params={"key": key}, json=callback)
    assert stored.status_code == 200
    merged = (await status_of(client, proxy, senders, [sent["id"]]))[sent["id"]]
    assert (merged["sentStatusCode"], merged["destination"], merged["correlationId"]) == (
        2,
        FREE,
        "order-1",
    )


@pytest.mark.usefixtures("lists")
async def test_an_opted_out_destination_is_answered_as_wavy_does_and_never_sent(
    client: httpx.AsyncClient, proxy: str, wavy: StandIn, senders: Any
) -> None:
    ana = senders["ana@acme.example"]
    answers = {
        number: await client.post(
            f"{proxy}/v1/send-sms",
            json={"destination": number, "messageText": "promo", "correlationId": number[-4:]},
            headers=ana,
        )
        for number in (OPTED_OUT, BLACKLISTED, THEIRS)
    }

    assert {number: answer.status_code for number, answer in answers.items()} == dict.fromkeys(
        answers, 200
    )
    # Only globex's opt-out, which is no list of acme's, reached Wavy.
    assert [asked.json["destination"] for asked in wavy.asked] == [THEIRS]
    ids = {number: answer.json()["id"] for number, answer in answers.items()}
    shown = await status_of(client, proxy, senders, list(ids.values()))
    assert (shown[ids[OPTED_OUT]]["sentStatusCode"], shown[ids[OPTED_OUT]]["sentStatus"]) == (
        204,
        "DESTINATION_BLOCKED_BY_OPTOUT",
    )
    assert (shown[ids[BLACKLISTED]]["sentStatusCode"], shown[ids[BLACKLISTED]]["sentStatus"]) == (
        203,
        "BLACKLISTED",
    )
    assert shown[ids[OPTED_OUT]]["correlationId"] == OPTED_OUT[-4:]


@pytest.mark.usefixtures("lists")
async def test_a_bulk_sends_the_allowed_in_one_request_and_answers_in_the_clients_order(
    client: httpx.AsyncClient, proxy: str, wavy: StandIn, senders: Any
) -> None:
    order = [OPTED_OUT, FREE, BLACKLISTED, THEIRS]
    body = {
        "messages": [
            {"destination": number, "correlationId": f"c{n}"} for n, number in enumerate(order)
        ],
        "defaultValues": {"messageText": "hello"},
        "timeZone": "America/Sao_Paulo",
    }
    answer = await client.post(
        f"{proxy}/v1/send-bulk-sms", json=body, headers=senders["ana@acme.example"]
    )

    assert answer.status_code == 200, answer.text
    [asked] = wavy.asked
    assert [item["destination"] for item in asked.json["messages"]] == [FREE, THEIRS]
    assert asked.json["timeZone"] == "America/Sao_Paulo"  # the root's fields passed on
    items = answer.json()["messages"]
    assert [item["correlationId"] for item in items] == ["c0", "c1", "c2", "c3"]
    assert [items[1]["id"], items[3]["id"]] == ["wavy-c1", "wavy-c3"]  # Wavy's, where they go
    shown = await status_of(client, proxy, senders, [item["id"] for item in items])
    codes = [shown[item["id"]]["sentStatusCode"] for item in items]
    assert codes == [204, None, 203, None]


async def test_wrong_credentials_get_401_and_nothing_reaches_wavy(
    client: httpx.AsyncClient, proxy: str, wavy: StandIn, senders: Any
) -> None:
    wrong = {"username": "ana@acme.example", "authenticationtoken": "not-her-token-at-all"}
    answers = [
        await client.post(f"{proxy}/v1/send-sms", json={"destination": FREE}, headers=wrong),
        await client.post(f"{proxy}/v1/send-bulk-sms", content=b"{not json", headers={}),
    ]
    assert [answer.status_code for answer in answers] == [401, 401]
    assert answers[0].json()["errorCode"] == 401
    assert answers[0].json()["errorMessage"].startswith("Authentication Error")
    assert wavy.asked == []


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        ("/v1/send-sms", {"messageText": "x"}, "destination is required"),
        ("/v1/send-sms", {"destination": "banana", "messageText": "x"}, "not a phone number"),
        ("/v1/send-sms", {"destination": FREE, "messageText": "  "}, "messageText is required"),
        ("/v1/send-sms", {"destination": FREE, "messageText": "x" * 1281}, "longer than 1280"),
        (
            "/v1/send-sms",
            {"destination": FREE, "messageText": "x", "correlationId": "c" * 65},
            "longer than 64",
        ),
        (
            "/v1/send-bulk-sms",
            {"messages": [{"destination": FREE}], "defaultValues": {"messageText": None}},
            "messageText is required",
        ),
        (
            "/v1/send-bulk-sms",
            {"messages": [{"destination": FREE, "messageText": "x"}] * 1001},
            "more than 1000",
        ),
    ],
)
async def test_a_send_wavy_would_refuse_gets_its_400_and_nothing_is_sent_or_stored(
    client: httpx.AsyncClient,
    proxy: str,
    wavy: StandIn,
    senders: Any,
    app: FastAPI,
    path: str,
    body: Any,
    says: str,
) -> None:
    answer = await client.post(f"{proxy}{path}", json=body, headers=senders["ana@acme.example"])
    assert answer.status_code == 400
    assert answer.json()["errorCode"] == 400
    assert says in answer.json()["errorMessage"]
    assert wavy.asked == []
    assert await fetch_all(app.state.engine, "SELECT id FROM mts") == []


@pytest.mark.parametrize(
    ("wavy_status", "wavy_headers", "ours"),
    [(429, {"Retry-After": "1"}, 429), (403, {}, 403), (500, {}, 502), (503, {}, 502)],
)
async def test_wavys_refusals_reach_the_client_with_wavys_body(
    client: httpx.AsyncClient,
    proxy: str,
    wavy: StandIn,
    senders: Any,
    app: FastAPI,
    wavy_status: int,
    wavy_headers: dict[str, str],
    ours: int,
) -> None:
    said = {"errorCode": wavy_status, "errorMessage": "from Wavy"}
    wavy.answer = (wavy_status, said, wavy_headers)
    answer = await client.post(
        f"{proxy}/v1/send-sms",
        json={"destination": FREE, "messageText": "x"},
        headers=senders["ana@acme.example"],
    )
    assert answer.status_code == ours
    assert answer.json() == said
    if wavy_status == 429:
        assert answer.headers["retry-after"] == "1"
    assert await fetch_all(app.state.engine, "SELECT id FROM mts") == []  # nothing was sent


async def test_a_send_wavy_did_not_answer_in_time_is_504_kept_as_unknown_and_never_resent(
    client: httpx.AsyncClient, proxy: str, wavy: StandIn, senders: Any, app: FastAPI
) -> None:
    wavy.delay_s = 2.0  # past the proxy's 1 s
    answer = await client.post(
        f"{proxy}/v1/send-sms",
        json={"destination": FREE, "messageText": "x", "correlationId": "late-1"},
        headers=senders["ana@acme.example"],
    )
    assert answer.status_code == 504
    assert "correlationId" in answer.json()["errorMessage"]
    assert len(wavy.asked) == 1  # one request: a send is never repeated after a timeout
    [mt] = await fetch_all(app.state.engine, "SELECT outcome, correlation_id, message_id FROM mts")
    assert mt == {"outcome": "unknown", "correlation_id": "late-1", "message_id": None}


async def test_when_wavy_cannot_be_reached_nothing_is_sent_or_stored(
    client: httpx.AsyncClient, settings: Settings, senders: Any, app: FastAPI
) -> None:
    port = free_port()
    nowhere = {"port": port, "api_url": f"http://127.0.0.1:{free_port()}"}
    async with serving(settings.model_copy(update=nowhere)):
        answer = await client.post(
            f"http://127.0.0.1:{port}/v1/send-sms",
            json={"destination": FREE, "messageText": "x"},
            headers=senders["ana@acme.example"],
        )
    assert answer.status_code == 502
    assert "nothing was sent" in answer.json()["errorMessage"]
    assert await fetch_all(app.state.engine, "SELECT id FROM mts") == []


async def test_a_user_sends_for_their_own_sub_account_an_admin_for_the_one_it_names(
    client: httpx.AsyncClient, proxy: str, wavy: StandIn, senders: Any
) -> None:
    named = await client.post(
        f"{proxy}/v1/send-sms",
        json={"destination": FREE, "messageText": "x", "subAccount": "globex"},
        headers=senders["ana@acme.example"],
    )
    assert named.status_code == 400  # a user names no other sub-account
    by_admin = await client.post(
        f"{proxy}/v1/send-sms",
        json={"destination": FREE, "messageText": "x", "subAccount": "globex"},
        headers=senders["boss"],
    )
    assert by_admin.status_code == 200
    shown = await status_of(client, proxy, senders, [by_admin.json()["id"]])
    assert shown[by_admin.json()["id"]]["subAccount"] == "globex"
    assert [asked.json.get("subAccount") for asked in wavy.asked] == ["globex"]


async def test_a_sub_account_in_the_query_of_a_posted_send_is_refused_not_ignored(
    client: httpx.AsyncClient, proxy: str, wavy: StandIn, senders: Any
) -> None:
    """A POST's sub-account is its body's: a ?subAccount= that was ignored sent an admin's
    message for the whole account rather than the sub-account it named."""
    single = await client.post(
        f"{proxy}/v1/send-sms?subAccount=globex",
        json={"destination": FREE, "messageText": "x"},
        headers=senders["boss"],
    )
    bulk = await client.post(
        f"{proxy}/v1/send-bulk-sms?subAccount=globex",
        json={"messages": [{"destination": FREE, "messageText": "x"}]},
        headers=senders["boss"],
    )
    assert [single.status_code, bulk.status_code] == [400, 400]
    assert all("subAccount" in a.json()["errorMessage"] for a in (single, bulk))
    assert wavy.asked == []


async def test_the_get_form_sends_too(
    client: httpx.AsyncClient, proxy: str, wavy: StandIn, senders: Any
) -> None:
    answer = await client.get(
        f"{proxy}/v1/send-sms",
        params={"destination": FREE, "messageText": "by GET"},
        headers=senders["ana@acme.example"],
    )
    assert answer.status_code == 200, answer.text
    assert [asked.json["messageText"] for asked in wavy.asked] == ["by GET"]


async def test_a_retry_with_the_same_idempotency_key_gets_the_first_answer_and_sends_nothing(
    client: httpx.AsyncClient, proxy: str, wavy: StandIn, senders: Any, app: FastAPI
) -> None:
    headers = {**senders["ana@acme.example"], "Idempotency-Key": "order-77-attempt"}
    body = {"destination": FREE, "messageText": "once", "correlationId": "order-77"}
    first = await client.post(f"{proxy}/v1/send-sms", json=body, headers=headers)
    again = await client.post(f"{proxy}/v1/send-sms", json=body, headers=headers)
    other = await client.post(
        f"{proxy}/v1/send-sms", json={**body, "messageText": "twice?"}, headers=headers
    )
    elsewhere = await client.post(
        f"{proxy}/v1/send-sms",
        json=body,
        headers={**senders["boss"], "Idempotency-Key": "order-77-attempt"},
    )

    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert other.status_code == 409
    assert other.json()["errorCode"] == 409
    assert elsewhere.status_code == 200  # a key is its user's: another's is another key
    assert len(wavy.asked) == 2  # ana's once, the admin's once
    rows = await fetch_all(app.state.engine, "SELECT username FROM mts ORDER BY username")
    assert [row["username"] for row in rows] == ["ana@acme.example", "boss"]


async def test_the_send_rate_holds_for_every_replica_together(
    client: httpx.AsyncClient, settings: Settings, wavy: StandIn, senders: Any, app: FastAPI
) -> None:
    """Two replicas, a limit of 3 a second and no wait: however the burst is split between
    them, they count its sends together, at most 3 in any second (the burst spans two seconds
    at most: at most 6 reach Wavy); the rest get 429 with Retry-After. (Seconds are the
    service's: a send counted at the end of one may reach the stand-in in the next.)"""
    limited = {"send_max_rps": 3, "send_max_wait_s": 0.0}
    ports = [free_port(), free_port()]
    async with (
        serving(settings.model_copy(update={"port": ports[0], **limited})),
        serving(settings.model_copy(update={"port": ports[1], **limited})),
    ):
        answers = await asyncio.gather(
            *(
                client.post(
                    f"http://127.0.0.1:{ports[n % 2]}/v1/send-sms",
                    json={"destination": FREE, "messageText": f"burst {n}"},
                    headers=senders["ana@acme.example"],
                )
                for n in range(12)
            )
        )
    counted = await fetch_all(app.state.engine, "SELECT second, count FROM send_rate")
    refused = [answer for answer in answers if answer.status_code == 429]
    assert len(wavy.asked) + len(refused) == 12
    assert all(row["count"] <= 3 for row in counted), counted
    assert len(wavy.asked) <= 6
    assert refused
    assert all(answer.headers["retry-after"] == "1" for answer in refused)


async def test_a_send_past_the_rate_waits_its_turn_within_the_bound(
    client: httpx.AsyncClient, settings: Settings, wavy: StandIn, senders: Any
) -> None:
    port = free_port()
    limited = {"port": port, "send_max_rps": 2, "send_max_wait_s": 5.0}
    async with serving(settings.model_copy(update=limited)):
        answers = await asyncio.gather(
            *(
                client.post(
                    f"http://127.0.0.1:{port}/v1/send-sms",
                    json={"destination": FREE, "messageText": f"queued {n}"},
                    headers=senders["ana@acme.example"],
                )
                for n in range(5)
            )
        )
    assert [answer.status_code for answer in answers] == [200] * 5
    arrivals = sorted(asked.at for asked in wavy.asked)
    # Five sends at two a second take three of the service's seconds: the last goes out at
    # least a second after the first.
    assert arrivals[-1] - arrivals[0] >= 1.0, arrivals


@pytest.mark.slow
async def test_the_send_command_sends_through_the_running_service(
    base_url: str, wavy: StandIn, senders: Any, database_url: str
) -> None:
    ana = senders["ana@acme.example"]
    done = await asyncio.to_thread(
        run_cli,
        "send",
        FREE,
        "from the command line",
        "--correlation-id",
        "cli-1",
        "--url",
        base_url,
        database_url=database_url,
        WAVY_SEND_USER=ana["username"],
        WAVY_SEND_TOKEN=ana["authenticationtoken"],
    )
    assert done.returncode == 0, done.stderr
    assert '"correlationId":"cli-1"' in done.stdout
    assert [asked.json["messageText"] for asked in wavy.asked] == ["from the command line"]


async def test_the_sandbox_plays_wavy_through_the_whole_flow(
    client: httpx.AsyncClient, settings: Settings, base_url: str, senders: Any, app: FastAPI
) -> None:
    """Sent through the service to the sandbox: its callback and DLR come back through the
    webhooks, the person replies SAIR, and the next send to them is refused as Wavy would."""
    mix = SandboxMix(
        callback_after_s=(0.05, 0.1), dlr_after_s=(0.1, 0.2), failed=0, undelivered=0,
        lost_callbacks=0, replies=1.0, opt_out_replies=1.0, carriers=("VIVO",),
    )  # fmt: skip
    stand_in = Sandbox(app.state.engine, base_url, mix=mix, seed=7)
    sandbox_port = await stand_in.start("127.0.0.1", 0)
    port = free_port()
    changed = {"port": port, "api_url": f"http://127.0.0.1:{sandbox_port}"}
    ana = senders["ana@acme.example"]
    try:
        async with serving(settings.model_copy(update=changed)):
            proxy = f"http://127.0.0.1:{port}"
            first = await client.post(
                f"{proxy}/v1/send-sms",
                json={
                    "destination": FREE,
                    "messageText": "Seu pedido saiu",
                    "correlationId": "o-1",
                },
                headers=ana,
            )
            assert first.status_code == 200, first.text
            message_id = first.json()["id"]
            for _ in range(100):
                shown = (await status_of(client, proxy, senders, [message_id]))[message_id]
                if shown["deliveredStatusCode"] == 4:
                    break
                await asyncio.sleep(0.1)
            for _ in range(100):
                detail = await client.get(
                    f"{proxy}/v1/sms/status/{message_id}", headers=admin_headers(senders)
                )
                if detail.json()["replies"]:
                    break
                await asyncio.sleep(0.1)
            second = await client.post(
                f"{proxy}/v1/send-sms",
                json={"destination": FREE, "messageText": "Promo", "correlationId": "o-2"},
                headers=ana,
            )
            searched = await client.post(
                f"http://127.0.0.1:{sandbox_port}/v1/sms/status/search",
                json={"ids": [message_id]},
                headers=ana,
            )
            anonymous = await client.post(
                f"http://127.0.0.1:{sandbox_port}/v1/sms/status/search",
                json={"ids": [message_id]},
            )
    finally:
        await stand_in.stop()

    assert (shown["sentStatusCode"], shown["deliveredStatusCode"], shown["subAccount"]) == (
        2,
        4,
        "acme",
    )
    assert [reply["messageText"] for reply in detail.json()["replies"]] == ["SAIR"]
    refused = await status_of(client, base_url, senders, [second.json()["id"]])
    assert refused[second.json()["id"]]["sentStatusCode"] == 204  # they opted out
    assert searched.json()["smsStatuses"][0]["deliveredStatusCode"] == 4
    assert anonymous.status_code == 401  # the sandbox's status search takes the service's users


@pytest.mark.slow
def test_serve_with_the_sandbox_runs_the_whole_flow_with_no_wavy_account(
    empty_database: str, tmp_path: Path
) -> None:
    """What the README's first steps show: serve --sandbox, a send with the admin it made, and
    Wavy's callbacks coming back through the webhooks."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": empty_database, "WAVY_FORWARDER": "off"}
    env |= {"WAVY_API_USERNAME": "admin", "WAVY_API_TOKEN": "not-checked-here"}
    service = Service(env, port, tmp_path, "--sandbox")
    try:
        output = service.wait_ready()
        token = re.search(r"AuthenticationToken\s+(\S+)", output)
        assert token, output
        admin = {"UserName": "admin", "AuthenticationToken": token.group(1)}
        numbers = [f"55199000011{n:02d}" for n in range(5)]
        sent = httpx.post(
            f"http://127.0.0.1:{port}/v1/send-bulk-sms",
            json={"messages": [{"destination": n} for n in numbers],
                  "defaultValues": {"messageText": "Oi!"}},
            headers=admin,
            timeout=30,
        )  # fmt: skip
        assert sent.status_code == 200, sent.text
        ids = [item["id"] for item in sent.json()["messages"]]
        called_back: list[Any] = []
        for _ in range(150):
            found = httpx.post(
                f"http://127.0.0.1:{port}/v1/sms/status/search", json={"ids": ids}, headers=admin
            ).json()["smsStatuses"]
            called_back = [item for item in found if item["sentStatusCode"] is not None]
            if len(called_back) >= 3:
                break
            time.sleep(0.1)
    finally:
        service.stop(signal.SIGTERM)
    # A few percent fail or are lost on purpose (docs/sending.md): most come back.
    assert len(called_back) >= 3, output
    # Reconciliation asks the sandbox, which plays Wavy, never Wavy itself.
    [said] = [line for line in output.splitlines() if line.startswith("Reconciliation")]
    assert said.startswith("Reconciliation  on: overdue statuses are asked of http://127.0.0.1:")
    assert {item["sentStatusCode"] for item in called_back} <= {2, 202}


def test_the_send_settings_are_read_from_the_variables_the_docs_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    documented = {
        "WAVY_API_URL": "http://127.0.0.1:9/",
        "WAVY_SEND_TIMEOUT_S": "3",
        "WAVY_SEND_STORE_TEXT": "false",
        "WAVY_SEND_MAX_RPS": "5",
        "WAVY_SEND_MAX_WAIT_S": "0.5",
    }
    for name, value in documented.items():
        monkeypatch.setenv(name, value)
    read = Settings()
    assert (read.api_url, read.send_timeout_s, read.send_store_text) == (
        "http://127.0.0.1:9/",
        3.0,
        False,
    )
    assert (read.send_max_rps, read.send_max_wait_s) == (5, 0.5)


async def test_a_callback_that_came_before_its_mt_was_recorded_still_merges_into_it(
    client: httpx.AsyncClient, proxy: str, wavy: StandIn, senders: Any, app: FastAPI
) -> None:
    """Wavy may call back before the send's own answer is committed here: the MT then fills
    in what the callback lacked, and the callback's status stays."""
    key = await add_key(app, "acme")
    early = {"id": "early-1", "sentStatusCode": 2, "carrierName": "TIM"}
    assert (
        await client.post(f"{proxy}/v1/webhooks/callback", params={"key": key}, json=early)
    ).status_code == 200
    wavy.answer = (200, {"id": "early-1", "correlationId": "c-early"}, {})
    sent = await client.post(
        f"{proxy}/v1/send-sms",
        json={"destination": FREE, "messageText": "x", "correlationId": "c-early"},
        headers=senders["ana@acme.example"],
    )
    assert sent.json()["id"] == "early-1"
    shown = (await status_of(client, proxy, senders, ["early-1"]))["early-1"]
    assert (shown["sentStatusCode"], shown["carrierName"]) == (2, "TIM")
    assert (shown["destination"], shown["correlationId"], shown["subAccount"]) == (
        FREE,
        "c-early",
        "acme",
    )


async def test_after_wavys_429_the_service_holds_its_sends_back_for_its_retry_after(
    client: httpx.AsyncClient, proxy: str, wavy: StandIn, senders: Any
) -> None:
    ana = senders["ana@acme.example"]
    body = {"destination": FREE, "messageText": "x"}
    wavy.answer = (429, {"errorCode": 429, "errorMessage": "slow down"}, {"Retry-After": "1"})
    refused = await client.post(f"{proxy}/v1/send-sms", json=body, headers=ana)
    wavy.answer = None
    later = await client.post(f"{proxy}/v1/send-sms", json=body, headers=ana)

    assert (refused.status_code, refused.headers["retry-after"]) == (429, "1")
    assert later.status_code == 200
    first, second = wavy.asked
    assert second.at - first.at >= 0.9  # it waited out Wavy's Retry-After before sending


async def test_an_intruders_tricks_on_the_send_api_are_refused(
    client: httpx.AsyncClient, proxy: str, wavy: StandIn, senders: Any, app: FastAPI
) -> None:
    """Found by an intruder's probe: another sub-account named inside a bulk, a second pair of
    credentials (checked the first, forwarded the last), JSON too deep to write again, a
    NUL in the correlationId of a refused send, a PUT on a send path."""
    ana, gil = senders["ana@acme.example"], senders["Gil da Globex"]
    inner = await client.post(
        f"{proxy}/v1/send-bulk-sms",
        json={"messages": [{"destination": FREE, "messageText": "x", "subAccount": "globex"}]},
        headers=ana,
    )
    in_defaults = await client.post(
        f"{proxy}/v1/send-bulk-sms",
        json={"messages": [{"destination": FREE}],
              "defaultValues": {"messageText": "x", "subAccount": "globex"}},
        headers=ana,
    )  # fmt: skip
    two_pairs = await client.post(
        f"{proxy}/v1/send-sms",
        json={"destination": FREE, "messageText": "x"},
        headers=[*ana.items(), *gil.items()],
    )
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    too_deep = await client.post(
        f"{proxy}/v1/send-sms",
        json={"destination": FREE, "messageText": "x", "params": deep},
        headers=ana,
    )
    put = await client.put(f"{proxy}/v1/send-sms", json={}, headers=ana)
    assert [a.status_code for a in (inner, in_defaults, two_pairs, too_deep, put)] == [
        400, 400, 400, 400, 405,
    ]  # fmt: skip
    assert all("errorCode" in a.json() for a in (inner, in_defaults, two_pairs, too_deep, put))
    assert wavy.asked == []


@pytest.mark.usefixtures("lists")
async def test_what_goes_to_wavy_is_the_number_that_was_checked(
    client: httpx.AsyncClient, proxy: str, wavy: StandIn, senders: Any, app: FastAPI
) -> None:
    """However a destination is written, Wavy gets the E.164 digits checked against the
    lists (a prefix read one way here and another way there cannot skip an opt-out), and a
    correlationId as text."""
    ana = senders["ana@acme.example"]
    for written in ("+55 (19) 90000-4444", "005519900004444", "(19) 90000-4444"):
        answer = await client.post(
            f"{proxy}/v1/send-sms",
            json={"destination": written, "messageText": "x", "correlationId": 7},
            headers=ana,
        )
        assert answer.status_code in (200, 400), answer.text
    rows = await fetch_all(app.state.engine, "SELECT destination FROM mts WHERE outcome = 'sent'")
    assert [asked.json["destination"] for asked in wavy.asked] == [r["destination"] for r in rows]
    assert all(asked.json["correlationId"] == "7" for asked in wavy.asked)
    nul = await client.post(
        f"{proxy}/v1/send-sms",
        json={"destination": OPTED_OUT, "messageText": "x", "correlationId": "a\u0000b"},
        headers=ana,
    )
    assert nul.status_code == 200, nul.text
    shown = await status_of(client, proxy, senders, [nul.json()["id"]])
    assert shown[nul.json()["id"]]["sentStatusCode"] == 204


async def test_a_cookie_wavy_sets_for_one_client_never_goes_out_with_another_clients_send(
    client: httpx.AsyncClient, proxy: str, wavy: StandIn, senders: Any, app: FastAPI
) -> None:
    """Every client's sends share one connection pool to Wavy. Wavy's host is a name, not an
    address (aiohttp keeps no cookie of a bare IP address), as it is in production."""
    real = app.state.wavy
    app.state.wavy = WavyClient(wavy.url.replace("127.0.0.1", "localhost"), timeout_s=2)
    body = {"destination": FREE, "messageText": "x"}
    try:
        wavy.answer = (200, {"id": "wavy-1"}, {"Set-Cookie": "session=ana-at-wavy; Path=/"})
        first = await client.post(
            f"{proxy}/v1/send-sms", json=body, headers=senders["ana@acme.example"]
        )
        wavy.answer = None
        second = await client.post(
            f"{proxy}/v1/send-sms", json=body, headers=senders["Gil da Globex"]
        )
    finally:
        await app.state.wavy.close()
        app.state.wavy = real

    assert (first.status_code, second.status_code) == (200, 200)
    assert "set-cookie" not in first.headers  # Wavy's cookie is not passed on either
    assert [asked.headers["username"] for asked in wavy.asked] == [
        "ana@acme.example",
        "Gil da Globex",
    ]
    assert "cookie" not in wavy.asked[1].headers


async def test_a_send_wavy_took_but_that_could_not_be_recorded_is_never_called_unsent(
    client: httpx.AsyncClient, proxy: str, wavy: StandIn, senders: Any, app: FastAPI
) -> None:
    """Wavy has the message: the answer must not say "nothing was sent", and a retry with the
    same Idempotency-Key must get that answer again rather than send a second SMS."""

    async def fails(*_: Any) -> list[None]:
        raise RuntimeError("the disk is full")

    real = app.state.mt_recorder
    connect = writer_connector(app.state.settings)
    app.state.mt_recorder = Batched(connect, fails, max_items=10, name="failing-recorder")
    headers = {**senders["ana@acme.example"], "Idempotency-Key": "not-recorded-1"}
    body = {"destination": FREE, "messageText": "x"}
    try:
        first = await client.post(f"{proxy}/v1/send-sms", json=body, headers=headers)
        again = await client.post(f"{proxy}/v1/send-sms", json=body, headers=headers)
    finally:
        await app.state.mt_recorder.stop()
        app.state.mt_recorder = real

    assert first.status_code == 503
    assert "do not send it again" in first.json()["errorMessage"]
    assert "nothing was sent" not in first.json()["errorMessage"]
    assert (again.status_code, again.headers["idempotent-replayed"]) == (503, "true")
    assert len(wavy.asked) == 1  # the retry sent nothing


@pytest.mark.usefixtures("lists")
async def test_a_bulk_wavy_refused_stores_nothing_not_even_its_refusals(
    client: httpx.AsyncClient, proxy: str, wavy: StandIn, senders: Any, app: FastAPI
) -> None:
    wavy.answer = (500, {"errorCode": 500, "errorMessage": "down"}, {})
    answer = await client.post(
        f"{proxy}/v1/send-bulk-sms",
        json={"messages": [{"destination": OPTED_OUT}, {"destination": FREE}],
              "defaultValues": {"messageText": "x"}},
        headers=senders["ana@acme.example"],
    )  # fmt: skip
    assert answer.status_code == 502
    assert await fetch_all(app.state.engine, "SELECT id FROM mts") == []
    assert await fetch_all(app.state.engine, "SELECT id FROM messages") == []


async def test_the_sandbox_answers_bad_bodies_with_wavys_400(
    client: httpx.AsyncClient, app: FastAPI, base_url: str, senders: Any
) -> None:
    stand_in = Sandbox(app.state.engine, base_url)
    port = await stand_in.start("127.0.0.1", 0)
    sandbox = f"http://127.0.0.1:{port}"
    ana = senders["ana@acme.example"]
    try:
        answers = [
            await client.post(f"{sandbox}{path}", content=body, headers=ana)
            for path in ("/v1/sms/status/search", "/v1/send-sms", "/v1/send-bulk-sms")
            for body in (b"not json", b"[1]", b'{"messages": [1]}')
        ]
        sent = await client.post(
            f"{sandbox}/v1/send-sms", json={"destination": FREE, "messageText": "x"}, headers=ana
        )
        lone = await client.post(
            f"{sandbox}/v1/sms/status/search", json={"ids": sent.json()["id"]}, headers=ana
        )
    finally:
        await stand_in.stop()

    assert {answer.status_code for answer in answers} <= {200, 400}  # never a 500
    assert [a.status_code for a in answers[:2]] == [400, 400]
    assert lone.json()["total"] == 1  # a lone id, not its characters
