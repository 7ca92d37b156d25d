"""Reconciliation against a stand-in of Wavy over real HTTP: a status whose webhook never came is
asked of Wavy's status search and merged as if it had been posted (marked reconciled), Oi and
Sercomtel are never asked for a DLR, Wavy's pace holds for every worker together, a send that
timed out is found by its correlationId, and what is never known is listed to its owner only."""

from __future__ import annotations

import asyncio
import itertools
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from app.db.sending import MtRow
from app.outbound.reconciler import Reconciler
from app.outbound.wavy import WavyAnswer, WavyClient
from app.settings import Settings
from tests.conftest import add_key, fetch_all
from tests.test_migrations_and_cli import run_cli
from tests.test_sending import FREE, admin_headers
from tests.wavy_stand_in import StandIn

pytestmark = pytest.mark.usefixtures("senders")


@pytest.fixture(autouse=True)
async def service_passes_paused(app: FastAPI) -> AsyncIterator[None]:
    """The service's own worker runs a pass every second; one that holds the state row while
    a test's pass looks makes that one skip (by design: one worker looks at a time). Paused
    while a test runs its own passes."""
    own: Reconciler = app.state.reconciler
    await own.stop()
    yield
    own.start()


ADMIN_AT_WAVY = "wavy-admin@acme.example"


def reconciling(settings: Settings, **changes: Any) -> Settings:
    """The settings of a worker that reconciles, with the account's admin at Wavy."""
    return settings.model_copy(
        update={"api_username": ADMIN_AT_WAVY, "api_token": SecretStr("s3cret"), **changes}
    )


def reconciler(app: FastAPI, settings: Settings, wavy: StandIn, **changes: Any) -> Reconciler:
    return Reconciler(
        app.state.engine,
        app.state.writer,
        reconciling(settings, **changes),
        WavyClient(wavy.url, timeout_s=2),
    )


def later(**delta: float) -> datetime:
    return datetime.now(UTC) + timedelta(**delta)


def wavy_status(message_id: str, carrier: str = "VIVO", **fields: Any) -> dict[str, Any]:
    """An item of Wavy's status search, as its live answers look."""
    return {
        "id": message_id,
        "correlationId": fields.pop("correlationId", None),
        "destination": FREE,
        "carrierId": 1,
        "carrierName": carrier,
        "sentStatusCode": 2,
        "sentStatus": "SENT_SUCCESS",
        "sentAt": int(datetime.now(UTC).timestamp() * 1000),
        **fields,
    }


async def send(client: httpx.AsyncClient, who: dict[str, str], **body: Any) -> dict[str, Any]:
    answer = await client.post(
        "/v1/send-sms", json={"destination": FREE, "messageText": "Oi", **body}, headers=who
    )
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def post_callback(app: FastAPI, client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    key = await add_key(app, "acme")
    answer = await client.post(f"/v1/webhooks/callback?key={key}", json=body)
    assert answer.status_code == 200, answer.text


async def old_mts(app: FastAPI, count: int, sub_account: str, hours_ago: float = 1) -> list[str]:
    """MTs sent ``hours_ago`` (written as the send API writes them), whose statuses never came."""
    at = datetime.now(UTC) - timedelta(hours=hours_ago)
    rows = [
        MtRow(
            id=uuid.uuid4().hex,
            message_id=f"old-{sub_account}-{n}-{uuid.uuid4().hex[:6]}",
            sub_account=sub_account,
            username="someone",
            destination=FREE,
            correlation_id=f"c-{n}",
            message_text=None,
            outcome="sent",
            wavy_status=200,
            submitted_at=at + timedelta(milliseconds=n),
        )
        for n in range(count)
    ]
    await app.state.mt_recorder(rows)  # as a send records them
    return [str(row.message_id) for row in rows]


async def timed_out_send(
    client: httpx.AsyncClient, wavy: StandIn, who: dict[str, str], correlation_id: str
) -> None:
    wavy.delay_s = 1.5  # past the test app's send timeout
    answer = await client.post(
        "/v1/send-sms",
        json={"destination": FREE, "messageText": "x", "correlationId": correlation_id},
        headers=who,
    )
    wavy.delay_s = 0
    assert answer.status_code == 504


async def test_a_lost_callback_is_asked_of_wavy_and_merged_as_if_posted(
    app: FastAPI, client: httpx.AsyncClient, wavy: StandIn, senders: Any, settings: Settings
) -> None:
    sent = await send(client, senders["ana@acme.example"], correlationId="order-7")
    wavy.statuses[sent["id"]] = wavy_status(
        sent["id"],
        correlationId="order-7",
        deliveredStatusCode=4,
        deliveredStatus="DELIVERED_SUCCESS",
        deliveredAt=int(datetime.now(UTC).timestamp() * 1000) + 5000,
    )
    worker = reconciler(app, settings, wavy)
    try:
        early = await worker.run_once(later(minutes=5))  # not overdue yet: nobody asked
        done = await worker.run_once(later(minutes=16))
    finally:
        await worker.stop()

    assert early.asked == 0
    assert (done.asked, done.recovered) == (1, 1)
    [search] = wavy.searches()
    assert search.json == {"ids": [sent["id"]]}
    assert search.headers["username"] == ADMIN_AT_WAVY  # the account's admin, not the sender
    assert search.headers["authenticationtoken"] == "s3cret"
    admin = admin_headers(senders)
    detail = (await client.get(f"/v1/sms/status/{sent['id']}", headers=admin)).json()
    assert (detail["sentStatusCode"], detail["deliveredStatusCode"]) == (2, 4)
    assert (detail["carrierName"], detail["subAccount"]) == ("VIVO", "acme")
    assert [(e["kind"], e["reconciled"]) for e in detail["events"]] == [
        ("callback", True),
        ("dlr", True),
    ]
    # The change feed, which forwarding follows, has it as for a posted status.
    changes = (await client.get("/v1/sms/status/changes", headers=admin)).json()
    assert [item["deliveredStatusCode"] for item in changes["items"]] == [4]
    summary = (await client.get("/v1/reconciliation", headers=admin)).json()
    assert summary["recoveredToday"] == 1
    assert summary["timeZone"] == "UTC"
    assert summary["overdue"] == {"callback": 0, "dlr": 0}


async def test_a_status_that_came_by_webhook_is_not_asked_of_wavy(
    app: FastAPI, client: httpx.AsyncClient, wavy: StandIn, senders: Any, settings: Settings
) -> None:
    admin = admin_headers(senders)
    on_time, late = await old_mts(app, 2, "acme")
    await post_callback(app, client, wavy_status(on_time, carrier="OI"))
    worker = reconciler(app, settings, wavy)
    try:
        await worker.run_once()
        [asked] = wavy.searches()
        assert asked.json == {"ids": [late]}  # Wavy did not know it yet
        listed = (await client.get("/v1/sms/status/overdue", headers=admin)).json()
        assert [item["id"] for item in listed["items"]] == [late]
        assert (listed["items"][0]["checks"], listed["items"][0]["givenUp"]) == (1, False)

        await post_callback(app, client, wavy_status(late, carrier="Oi Móvel"))
        listed = (await client.get("/v1/sms/status/overdue", headers=admin)).json()
        done = await worker.run_once(later(minutes=2))
    finally:
        await worker.stop()

    assert listed["total"] == 0  # off the list as soon as its webhook came
    assert (done.asked, done.recovered) == (0, 0)
    assert len(wavy.searches()) == 1


async def test_oi_and_sercomtel_are_never_asked_for_a_dlr(
    app: FastAPI, client: httpx.AsyncClient, wavy: StandIn, senders: Any, settings: Settings
) -> None:
    ana = senders["ana@acme.example"]
    carriers = ["OI", "Sercomtel", " sercomtel s.a.", "VIVO"]
    sent = [await send(client, ana) for _ in carriers]
    for message, carrier in zip(sent, carriers, strict=True):
        await post_callback(app, client, wavy_status(message["id"], carrier=carrier))
    worker = reconciler(app, settings, wavy)
    try:
        before = await worker.run_once(later(hours=3))
        done = await worker.run_once(later(hours=4, minutes=1))
    finally:
        await worker.stop()

    assert before.asked == 0  # a DLR is overdue only after WAVY_RECONCILE_DLR_AFTER
    assert done.asked == 1
    [search] = wavy.searches()
    assert search.json == {"ids": [sent[-1]["id"]]}  # VIVO's only


async def test_wavy_is_asked_again_at_growing_intervals(
    app: FastAPI, client: httpx.AsyncClient, wavy: StandIn, senders: Any, settings: Settings
) -> None:
    await send(client, senders["ana@acme.example"])
    start = later(minutes=16)
    worker = reconciler(app, settings, wavy)
    try:
        asked = [
            (await worker.run_once(start + timedelta(seconds=s))).asked
            for s in (0, 30, 61, 120, 182)
        ]
    finally:
        await worker.stop()

    assert asked == [1, 0, 1, 0, 1]  # after 1 min, then 2


async def test_what_wavy_no_longer_knows_is_given_up_and_still_listed(
    app: FastAPI, client: httpx.AsyncClient, wavy: StandIn, senders: Any, settings: Settings
) -> None:
    [message_id] = await old_mts(app, 1, "acme", hours_ago=71)
    worker = reconciler(app, settings, wavy)
    try:
        first = await worker.run_once()
        gave_up = await worker.run_once(later(hours=2))
        after = await worker.run_once(later(hours=3))
    finally:
        await worker.stop()

    assert (first.asked, gave_up.given_up, after.asked) == (1, 1, 0)
    admin = admin_headers(senders)
    listed = (await client.get("/v1/sms/status/overdue", headers=admin)).json()
    [item] = listed["items"]
    assert (item["id"], item["givenUp"], item["checks"]) == (message_id, True, 1)
    summary = (await client.get("/v1/reconciliation", headers=admin)).json()
    assert (summary["givenUp"]["callback"], summary["overdue"]["callback"]) == (1, 0)


async def test_wavys_429_holds_back_every_worker(
    app: FastAPI, client: httpx.AsyncClient, wavy: StandIn, senders: Any, settings: Settings
) -> None:
    await send(client, senders["ana@acme.example"])
    wavy.answer = (429, {"errorCode": 429, "errorMessage": "slow down"}, {"Retry-After": "7"})
    one, other = reconciler(app, settings, wavy), reconciler(app, settings, wavy)
    start = later(minutes=16)
    try:
        first = await one.run_once(start)
        held = await other.run_once(start + timedelta(seconds=5))
        wavy.answer = None
        again = await other.run_once(start + timedelta(seconds=8))
    finally:
        await one.stop()
        await other.stop()

    assert (first.asked, first.wavy_status) == (1, 429)
    assert held.asked == 0  # the other worker waits out Wavy's Retry-After too
    assert (again.asked, again.wavy_status) == (1, 200)


async def test_a_5xx_backs_off_and_the_message_is_asked_again(
    app: FastAPI, client: httpx.AsyncClient, wavy: StandIn, senders: Any, settings: Settings
) -> None:
    sent = await send(client, senders["ana@acme.example"])
    wavy.answer = (503, {"errorCode": 503, "errorMessage": "down"}, {})
    worker = reconciler(app, settings, wavy)
    start = later(minutes=16)
    try:
        failed = await worker.run_once(start)
        wavy.answer = None
        wavy.statuses[sent["id"]] = wavy_status(sent["id"])
        held = await worker.run_once(start + timedelta(seconds=1))
        recovered = await worker.run_once(start + timedelta(seconds=3))
    finally:
        await worker.stop()

    assert (failed.asked, failed.wavy_status, held.asked) == (1, 503, 0)
    assert recovered.recovered == 1  # not counted as a check Wavy answered


class CountingClient(WavyClient):
    def __init__(self, base_url: str) -> None:
        super().__init__(base_url, timeout_s=2)
        self.posts = 0

    async def post(self, path: str, headers: Any, body: bytes) -> WavyAnswer:
        self.posts += 1
        return await super().post(path, headers, body)


async def test_the_pace_holds_for_two_workers_together(
    app: FastAPI, wavy: StandIn, settings: Settings
) -> None:
    await old_mts(app, 1500, "acme")  # more than the run can ask about
    clients = [CountingClient(wavy.url), CountingClient(wavy.url)]
    workers = [
        Reconciler(
            app.state.engine,
            app.state.writer,
            reconciling(settings, reconcile_max_rps=4.0),
            client,
        )
        for client in clients
    ]
    for worker in workers:
        worker.start()
    await asyncio.sleep(3.2)
    for worker in workers:
        await worker.stop()

    times = sorted(asked.at for asked in wavy.searches())
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 4 <= len(times) <= 4 * 3.2 + 1
    assert min(gaps) >= 0.25 - 0.05  # never two requests closer than 1/WAVY_RECONCILE_MAX_RPS
    assert all(client.posts > 0 for client in clients)  # both workers took turns


async def test_a_send_that_timed_out_is_found_by_its_correlation_id(
    app: FastAPI, client: httpx.AsyncClient, wavy: StandIn, senders: Any, settings: Settings
) -> None:
    ana = senders["ana@acme.example"]
    await timed_out_send(client, wavy, ana, "order-9")
    wavy.reset()
    wavy.statuses["wavy-9"] = wavy_status("wavy-9", correlationId="order-9")
    wavy.statuses["other"] = wavy_status("other", correlationId="order-9", destination="55119")
    worker = reconciler(app, settings, wavy)
    try:
        done = await worker.run_once(later(minutes=16))
    finally:
        await worker.stop()

    [search] = wavy.searches()
    assert search.json == {"correlationIds": ["order-9"]}
    assert done.recovered == 1
    found = await client.post(
        "/v1/sms/status/search", json={"correlationIds": ["order-9"]}, headers=ana
    )
    [item] = found.json()["smsStatuses"]
    assert (item["id"], item["sentStatusCode"], item["subAccount"]) == ("wavy-9", 2, "acme")


async def test_a_reconciled_opt_out_status_keeps_the_opt_out_rule(
    app: FastAPI, client: httpx.AsyncClient, wavy: StandIn, senders: Any, settings: Settings
) -> None:
    ana = senders["ana@acme.example"]
    sent = await send(client, ana)
    wavy.statuses[sent["id"]] = wavy_status(
        sent["id"], sentStatusCode=204, sentStatus="DESTINATION_BLOCKED_BY_OPTOUT"
    )
    worker = reconciler(app, settings, wavy)
    try:
        await worker.run_once(later(minutes=16))
    finally:
        await worker.stop()

    checked = await client.get(f"/v1/optouts/{FREE}", headers=ana)
    assert checked.json()["optedOut"] is True  # Wavy's 204 puts it on acme's list


async def test_the_overdue_list_is_shown_to_its_owner_only(
    app: FastAPI, client: httpx.AsyncClient, wavy: StandIn, senders: Any, settings: Settings
) -> None:
    acme = await old_mts(app, 3, "acme")
    globex = await old_mts(app, 2, "globex")
    await app.state.reconciler.run_once()  # the service's own worker looks (nothing asked)
    ana, gil = senders["ana@acme.example"], senders["Gil da Globex"]

    mine = (await client.get("/v1/sms/status/overdue?limit=2", headers=ana)).json()
    rest = (
        await client.get(f"/v1/sms/status/overdue?limit=2&cursor={mine['next']}", headers=ana)
    ).json()
    theirs = (await client.get("/v1/sms/status/overdue", headers=gil)).json()
    peeking = await client.get("/v1/sms/status/overdue?subAccount=globex", headers=ana)
    everyone = (await client.get("/v1/sms/status/overdue", headers=admin_headers(senders))).json()
    counts = (await client.get("/v1/reconciliation", headers=gil)).json()

    assert (mine["total"], mine["subAccount"]) == (3, "acme")
    assert [item["id"] for item in mine["items"] + rest["items"]] == acme
    assert rest["next"] is None
    assert [item["id"] for item in theirs["items"]] == globex
    assert peeking.status_code == 403
    assert (everyone["total"], everyone["subAccount"]) == (5, None)
    assert (counts["subAccount"], counts["overdue"]["callback"], counts["enabled"]) == (
        "globex",
        2,
        False,
    )
    assert "nextAskAt" not in counts  # the account's pace is for admins
    assert wavy.searches() == []  # the service itself has no Wavy admin set: nothing asked


async def test_the_cli_shows_what_is_overdue_and_runs_a_pass_sharing_the_pace(
    app: FastAPI, wavy: StandIn, database_url: str
) -> None:
    [message_id] = await old_mts(app, 1, "acme")
    wavy.statuses[message_id] = wavy_status(message_id)
    await app.state.reconciler.run_once()  # the service's own pass: listed, nothing asked
    off = await asyncio.to_thread(run_cli, "reconcile", database_url=database_url)
    on = await asyncio.to_thread(
        run_cli,
        "reconcile",
        "--now",
        database_url=database_url,
        WAVY_API_URL=wavy.url,
        WAVY_API_USERNAME=ADMIN_AT_WAVY,
        WAVY_API_TOKEN="s3cret",
    )

    assert off.returncode == 0, off.stderr
    assert "Reconciliation  off: set WAVY_API_USERNAME and WAVY_API_TOKEN" in off.stdout
    assert re.search(r"overdue, asked\s+1\s+0", off.stdout), off.stdout
    assert on.returncode == 0, on.stderr
    assert "Reconciliation  on" in on.stdout
    assert "1 asked of Wavy (answered 200), 1 recovered" in on.stdout
    assert re.search(r"overdue, asked\s+0\s+0", on.stdout), on.stdout
    assert "recovered today (UTC): 1" in on.stdout
    assert "s3cret" not in on.stdout + on.stderr


async def test_a_timed_out_send_never_takes_another_sub_accounts_message_by_its_correlation_id(
    app: FastAPI, client: httpx.AsyncClient, wavy: StandIn, senders: Any, settings: Settings
) -> None:
    """Wavy's admin sees every sub-account: globex's message with the same correlationId and
    destination must not become acme's lost send."""
    [theirs] = await old_mts(app, 1, "globex", hours_ago=0)
    await timed_out_send(client, wavy, senders["ana@acme.example"], "c-0")
    wavy.reset()
    wavy.statuses[theirs] = wavy_status(theirs, correlationId="c-0")  # old_mts' first one
    worker = reconciler(app, settings, wavy)
    try:
        done = await worker.run_once(later(minutes=16))
    finally:
        await worker.stop()

    assert done.recovered == 1  # globex's own, asked by its id
    [mine] = await fetch_all(
        app.state.engine, "SELECT message_id, outcome FROM mts WHERE sub_account = 'acme'"
    )
    assert (mine["message_id"], mine["outcome"]) == (None, "unknown")  # still not found
    found = await client.post(
        "/v1/sms/status/search", json={"ids": [theirs]}, headers=senders["ana@acme.example"]
    )
    assert found.json()["smsStatuses"] == []  # still globex's, not acme's


async def ids_of_mts(app: FastAPI) -> dict[str, list[str | None]]:
    rows = await fetch_all(
        app.state.engine, "SELECT sub_account, message_id FROM mts ORDER BY message_id"
    )
    found: dict[str, list[str | None]] = {}
    for row in rows:
        found.setdefault(row["sub_account"], []).append(row["message_id"])
    return found


async def test_two_sub_accounts_timed_out_with_one_correlation_id_are_matched_to_neither(
    app: FastAPI, client: httpx.AsyncClient, wavy: StandIn, senders: Any, settings: Settings
) -> None:
    """Nothing in Wavy's answer tells which message is whose: neither takes one (both stay
    overdue), rather than one tenant's message becoming the other's."""
    await timed_out_send(client, wavy, senders["Gil da Globex"], "order-101")
    await timed_out_send(client, wavy, senders["ana@acme.example"], "order-101")
    wavy.reset()
    for wavy_id in ("w-1", "w-2"):
        wavy.statuses[wavy_id] = wavy_status(wavy_id, correlationId="order-101")
    worker = reconciler(app, settings, wavy)
    try:
        done = await worker.run_once(later(minutes=16))
    finally:
        await worker.stop()

    assert (done.asked, done.recovered) == (2, 0)
    assert await ids_of_mts(app) == {"acme": [None], "globex": [None]}


async def test_a_retried_send_finds_its_own_message_past_another_sub_accounts(
    app: FastAPI, client: httpx.AsyncClient, wavy: StandIn, senders: Any, settings: Settings
) -> None:
    ana, gil = senders["ana@acme.example"], senders["Gil da Globex"]
    acmes = await send(client, ana, correlationId="order-404")
    await timed_out_send(client, wavy, gil, "order-404")
    await timed_out_send(client, wavy, gil, "order-404")  # the client retried the 504
    wavy.reset()
    # Wavy lists acme's first: it must be passed over, not block globex's own.
    wavy.statuses[acmes["id"]] = wavy_status(acmes["id"], correlationId="order-404")
    for wavy_id in ("g-1", "g-2"):
        wavy.statuses[wavy_id] = wavy_status(wavy_id, correlationId="order-404")
    worker = reconciler(app, settings, wavy)
    try:
        await worker.run_once(later(minutes=16))
    finally:
        await worker.stop()

    found = await ids_of_mts(app)
    assert found["acme"] == [acmes["id"]]
    assert found["globex"] == ["g-1", "g-2"]  # one each, both its own
