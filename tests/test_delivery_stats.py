"""GET /v1/stats against hand-computed figures on a crafted campaign, with out-of-order and
repeated events that must not be counted twice."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import users
from app.db.engine import driver_connection
from app.db.ingest import write_records
from app.db.stats import REPAIR_LOCK, fold_stats_deltas, rollup_differences
from app.rules.delivery_stats import (
    CARRIERS_WITHOUT_DLR,
    LATENCY_BUCKETS_S,
    OPEN_BUCKET,
    carrier_sends_dlr,
    latency_percentile,
)
from app.rules.optouts import DEFAULT_MATCHER as OPTOUTS
from app.rules.scope import Role
from app.settings import Settings
from tests.conftest import add_key, records_of, writes_going_to
from tests.test_migrations_and_cli import run_cli

T = 1_764_000_000_000  # sentAt of every message (epoch ms)


def callback(message_id: str, code: int, carrier: str, campaign: str = "c1") -> dict[str, Any]:
    return {
        "id": message_id,
        "sentStatusCode": code,
        "sentAt": T,
        "carrierName": carrier,
        "campaignId": campaign,
    }


def dlr(message_id: str, code: int, after_s: int, carrier: str) -> dict[str, Any]:
    return {
        "id": message_id,
        "sentStatusCode": 2,
        "sentAt": T,
        "deliveredStatusCode": code,
        "deliveredAt": T + after_s * 1000,
        "carrierName": carrier,
        "campaignId": "c1",
    }


async def totals_once_a_reply_counts(stats: Stats, replies: int = 1) -> dict[str, Any]:
    """The totals as soon as they count ``replies`` replies (recounts run in the background),
    or after 10 s."""
    for _ in range(100):
        totals: dict[str, Any] = (await stats.get("ana"))["totals"]
        if totals["replies"] >= replies:
            break
        await asyncio.sleep(0.1)
    return totals


def mo(mo_id: str, answers: str | None) -> dict[str, Any]:
    return {
        "id": mo_id,
        "subAccount": "acme",
        "carrierName": "VIVO",
        "messageText": "ok",
        **({"mt": {"id": answers}} if answers else {}),
    }


class Stats:
    def __init__(self, client: httpx.AsyncClient, headers: dict[str, dict[str, str]]) -> None:
        self.client = client
        self.headers = headers

    async def get(self, who: str, **params: Any) -> Any:
        response = await self.client.get("/v1/stats", params=params, headers=self.headers[who])
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
async def stats(app: FastAPI, client: httpx.AsyncClient) -> Stats:
    headers = {}
    async with app.state.engine.begin() as conn:
        for name, role, sub in (("boss", Role.ADMIN, None), ("ana", Role.USER, "acme")):
            token = await users.add_user(
                conn, username=name, role=role, sub_account=sub, email=None, token=None
            )
            headers[name] = {"UserName": name, "AuthenticationToken": token}
    return Stats(client, headers)


@pytest.fixture
async def campaign(app: FastAPI, hook: Any, client: httpx.AsyncClient) -> None:
    """Six messages of acme, told out of order and with retries, and four replies."""
    posts = [
        ("callback", callback("m1", 2, "VIVO")),
        ("dlr", dlr("m1", 4, 10, "VIVO")),
        ("dlr", dlr("m1", 4, 10, "VIVO")),  # exact retry
        ("dlr", dlr("m2", 4, 100, "VIVO")),  # the DLR before its callback
        ("callback", callback("m2", 2, "VIVO")),
        ("callback", callback("m2", 2, "VIVO")),  # exact retry
        ("callback", callback("m3", 2, "OI")),  # Oi never sends DLRs
        ("callback", callback("m4", 2, "TIM")),  # still waiting
        ("callback", callback("m5", 2, "CLARO")),
        ("dlr", dlr("m5", 104, 300, "CLARO")),  # not delivered
        ("callback", callback("m6", 101, "CLARO")),  # refused before the carrier
        ("mo", [mo("r1", "m1"), mo("r2", "m1"), mo("r3", "m4"), mo("r4", None)]),
        ("mo", mo("r1", "m1")),  # exact retry of a reply
    ]
    for kind, body in posts:
        assert (await hook(kind, body)).status_code == 200
    # Another sub-account's traffic, invisible to acme's user.
    globex = await add_key(app, "globex")
    response = await client.post(
        "/v1/webhooks/callback", params={"key": globex}, json=callback("g1", 2, "VIVO")
    )
    assert response.status_code == 200


EXPECTED_TOTALS = {
    "messages": 6,
    "sentStatusCodes": {"2": 5, "101": 1},
    "deliveredStatusCodes": {"none": 3, "4": 2, "104": 1},
    "deliveryRate": 0.4,
    "waitingForDlr": {"carrierSendsDlr": 1, "carrierWithoutDlr": 1},
    "mosReceived": 4,
    "replies": 3,
    "repliedMessages": 2,
    "replyRate": 0.3333,
}


async def test_a_reply_stored_before_its_message_counts_once_the_message_arrives(
    hook: Any, stats: Stats
) -> None:
    assert (await hook("mo", [mo("early", "m9"), mo("early-2", "m9")])).status_code == 200
    assert (await hook("callback", callback("m9", 2, "VIVO"))).status_code == 200
    assert (await hook("mo", mo("late", "m9"))).status_code == 200
    assert (await hook("dlr", dlr("m9", 4, 5, "VIVO"))).status_code == 200

    totals = (await stats.get("ana"))["totals"]

    assert (totals["messages"], totals["mosReceived"]) == (1, 3)
    assert (totals["replies"], totals["repliedMessages"], totals["replyRate"]) == (3, 1, 1.0)


async def test_a_reply_committed_while_another_writer_creates_its_message_still_counts(
    app: FastAPI, hook: Any, stats: Stats
) -> None:
    """Another writer (another worker, say) is creating message m7 in a transaction it has not
    committed yet when a reply to m7 is stored: neither can see the other's rows. The reply
    must still count once both have committed."""
    async with app.state.engine.connect() as conn:
        other_writer = await driver_connection(conn)
        async with other_writer.transaction():
            await write_records(
                other_writer, records_of("callback", callback("m7", 2, "VIVO")), OPTOUTS
            )
            assert (await hook("mo", mo("r7", "m7"))).status_code == 200
            await asyncio.sleep(0.5)  # the recount must wait for this transaction to end

    totals = await totals_once_a_reply_counts(stats)
    assert (totals["messages"], totals["mosReceived"]) == (1, 1)
    assert (totals["replies"], totals["repliedMessages"], totals["replyRate"]) == (1, 1, 1.0)


async def store_a_reply_and_its_message_at_the_same_moment(
    app: FastAPI, message_id: str, reply_id: str
) -> None:
    """Two writers outside any worker: one creates the message while the other stores the
    reply, so neither sees the other's row and the count is left to a queued recount."""
    engine = app.state.engine
    async with engine.connect() as message_conn, engine.connect() as reply_conn:
        message_writer, reply_writer = (
            await driver_connection(message_conn),
            await driver_connection(reply_conn),
        )
        async with message_writer.transaction():
            message = callback(message_id, 2, "VIVO")
            await write_records(message_writer, records_of("callback", message), OPTOUTS)
            await write_records(reply_writer, records_of("mo", mo(reply_id, message_id)), OPTOUTS)


async def test_a_reply_count_left_short_by_a_worker_killed_before_its_recount_is_corrected(
    app: FastAPI, settings: Settings, database_url: str, stats: Stats
) -> None:
    """The same race, but the worker that stored the reply dies before its recount (here the
    reply is written without any worker's writer, so no worker's memory knows of it). The
    recount it queued with the reply is taken by another worker: one starting, here."""
    await store_a_reply_and_its_message_at_the_same_moment(app, "m8", "r8")

    async with writes_going_to(app, settings, database_url):
        totals = await totals_once_a_reply_counts(stats)
    assert (totals["messages"], totals["mosReceived"]) == (1, 1)
    assert (totals["replies"], totals["repliedMessages"]) == (1, 1)


async def test_an_operators_idle_session_does_not_hold_reply_recounts_back(
    app: FastAPI, settings: Settings, database_url: str, stats: Stats
) -> None:
    """A recount waits for transactions older than its replies' commit, since one of them may
    be creating their message; a session that has written nothing cannot be, so an operator's
    psql left idle in a transaction must not delay the recount (by up to a minute)."""
    await store_a_reply_and_its_message_at_the_same_moment(app, "m9", "r9")
    async with app.state.engine.connect() as operator:
        await operator.execute(text("SELECT count(*) FROM messages"))  # BEGIN, then idle

        async with writes_going_to(app, settings, database_url):
            totals = await totals_once_a_reply_counts(stats)
        assert operator.in_transaction()
    assert (totals["replies"], totals["repliedMessages"]) == (1, 1)


async def test_writers_storing_replies_to_each_others_messages_do_not_wait_for_each_other(
    app: FastAPI, settings: Settings, database_url: str, hook: Any, stats: Stats
) -> None:
    """Two writers' transactions (two workers, say), each holding the DLR of one message, store
    a reply to the message the other holds. Counting a reply on its message there and then
    would wait for the other's row lock, each for the other's, until PostgreSQL broke the
    deadlock (a 503 to Wavy). Neither may wait, and both replies must still count."""
    for message_id in ("mx", "my"):
        assert (await hook("callback", callback(message_id, 2, "VIVO"))).status_code == 200
    engine = app.state.engine
    async with engine.connect() as conn_a, engine.connect() as conn_b:
        writer_a, writer_b = await driver_connection(conn_a), await driver_connection(conn_b)
        async with writer_a.transaction(), writer_b.transaction():
            await write_records(writer_a, records_of("dlr", dlr("mx", 4, 5, "VIVO")), OPTOUTS)
            await write_records(writer_b, records_of("dlr", dlr("my", 4, 5, "VIVO")), OPTOUTS)
            await asyncio.wait_for(
                asyncio.gather(
                    write_records(writer_a, records_of("mo", mo("ry", "my")), OPTOUTS),
                    write_records(writer_b, records_of("mo", mo("rx", "mx")), OPTOUTS),
                ),
                timeout=0.9,  # below PostgreSQL's deadlock_timeout (1 s): no waiting at all
            )

    async with writes_going_to(app, settings, database_url):  # a worker's sweep, at once
        totals = await totals_once_a_reply_counts(stats, replies=2)
    assert (totals["deliveredStatusCodes"], totals["mosReceived"]) == ({"4": 2}, 2)
    assert (totals["replies"], totals["repliedMessages"], totals["replyRate"]) == (2, 2, 1.0)


@pytest.mark.usefixtures("campaign")
async def test_totals_match_the_hand_count_despite_retries_and_disorder(stats: Stats) -> None:
    answer = await stats.get("ana")

    totals = answer["totals"]
    assert {key: totals[key] for key in EXPECTED_TOTALS} == EXPECTED_TOTALS
    latency = totals["timeToDeliver"]
    assert latency["count"] == 2
    # 10 s falls in [10, 15), 100 s in [60, 120): interpolated inside those buckets.
    assert (latency["p50"], latency["p90"], latency["p99"]) == (15.0, 108.0, 118.8)
    assert {b["le"]: b["count"] for b in latency["histogram"] if b["count"]} == {15: 1, 120: 1}


@pytest.mark.usefixtures("campaign")
async def test_per_carrier_delivery_and_replies(stats: Stats) -> None:
    answer = await stats.get("ana", groupBy="carrier")

    by_carrier = {group["key"]: group for group in answer["groups"]}
    assert set(by_carrier) == {"VIVO", "OI", "TIM", "CLARO"}
    vivo, claro, oi = by_carrier["VIVO"], by_carrier["CLARO"], by_carrier["OI"]
    assert (vivo["messages"], vivo["deliveryRate"], vivo["repliedMessages"]) == (2, 1.0, 1)
    assert vivo["mosReceived"] == 4  # MOs count under their own carrier
    assert claro["sentStatusCodes"] == {"2": 1, "101": 1}
    assert claro["deliveredStatusCodes"] == {"104": 1, "none": 1}
    assert claro["deliveryRate"] == 0.0
    assert oi["waitingForDlr"] == {"carrierSendsDlr": 0, "carrierWithoutDlr": 1}
    assert (oi["carrierSendsDlr"], vivo["carrierSendsDlr"]) == (False, True)


@pytest.mark.usefixtures("campaign")
async def test_admin_sees_every_sub_account_and_can_narrow(stats: Stats) -> None:
    everything = await stats.get("boss")
    acme = await stats.get("boss", subAccount="acme")

    assert everything["totals"]["messages"] == 7
    assert acme["totals"]["messages"] == 6


@pytest.mark.usefixtures("campaign")
async def test_a_user_cannot_ask_for_another_sub_account(stats: Stats) -> None:
    response = await stats.client.get(
        "/v1/stats", params={"subAccount": "globex"}, headers=stats.headers["ana"]
    )

    assert response.status_code == 403


@pytest.mark.usefixtures("campaign")
async def test_hours_and_days_follow_when_messages_were_first_seen(
    stats: Stats, engine: AsyncEngine
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE messages SET first_seen_at = first_seen_at - interval '3 days' "
                "WHERE id = 'm6'"
            )
        )

    by_day = await stats.get("ana", groupBy="day")
    by_hour = await stats.get("ana", groupBy="hour")
    long_ago = await stats.get("ana", **{"from": "2000-01-01T00:00Z", "to": "2000-01-02T00:00Z"})

    assert sorted(group["messages"] for group in by_day["groups"]) == [1, 5]
    assert sorted(group["messages"] for group in by_hour["groups"]) == [1, 5]
    assert by_day["totals"]["messages"] == 6
    assert long_ago["groups"] == []
    assert long_ago["totals"]["messages"] == 0


@pytest.mark.usefixtures("campaign")
async def test_days_are_the_callers_own_in_the_time_zone_it_names(
    stats: Stats, engine: AsyncEngine
) -> None:
    # 01:30 and 04:30 UTC on New Year's Day: in São Paulo (UTC-3) the first is still the
    # evening of 31 December.
    async with engine.begin() as conn:
        for message_id, hour in (("m1", 1), ("m2", 4)):
            first_seen = datetime(2026, 1, 1, hour, 30, tzinfo=UTC)
            await conn.execute(
                text("UPDATE messages SET first_seen_at = :t WHERE id = :id"),
                {"t": first_seen, "id": message_id},
            )
    window = {"from": "2025-12-31T00:00Z", "to": "2026-01-01T23:00Z"}

    in_utc = await stats.get("ana", **window, groupBy="day")
    in_sao_paulo = await stats.get("ana", **window, groupBy="day", tz="America/Sao_Paulo")
    hours = await stats.get("ana", **window, groupBy="hour", tz="America/Sao_Paulo")
    unknown = await stats.client.get(
        "/v1/stats", params={"tz": "Mars/Olympus"}, headers=stats.headers["ana"]
    )

    assert {g["key"]: g["messages"] for g in in_utc["groups"]} == {"2026-01-01": 2}
    assert {g["key"]: g["messages"] for g in in_sao_paulo["groups"]} == {
        "2025-12-31": 1,
        "2026-01-01": 1,
    }
    assert (in_utc["tz"], in_sao_paulo["tz"]) == ("UTC", "America/Sao_Paulo")
    assert [g["key"] for g in hours["groups"]] == [
        "2025-12-31T22:00:00-03:00",
        "2026-01-01T01:00:00-03:00",
    ]
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (422, "validation_failed")


@pytest.mark.usefixtures("campaign")
async def test_campaign_filter_and_grouping(stats: Stats, hook: Any) -> None:
    await hook("callback", callback("x1", 2, "VIVO", campaign="c2"))

    only_c2 = await stats.get("ana", campaignId="c2")
    by_campaign = await stats.get("ana", groupBy="campaign")

    assert only_c2["totals"]["messages"] == 1
    assert {g["key"]: g["messages"] for g in by_campaign["groups"]} == {"c1": 6, "c2": 1, "": 0}


@pytest.mark.usefixtures("campaign")
async def test_an_admin_sees_each_sub_account_as_a_cost_centre_and_a_user_only_their_own(
    app: FastAPI, client: httpx.AsyncClient, stats: Stats
) -> None:
    # Beside the fixture's acme and globex: a message whose key has no sub-account.
    no_sub_account = await add_key(app, None)
    sent = await client.post(
        "/v1/webhooks/callback", params={"key": no_sub_account}, json=callback("n1", 2, "VIVO")
    )
    assert sent.status_code == 200

    await totals_once_a_reply_counts(stats, replies=3)  # recounts run in the background
    admin = await stats.get("boss", groupBy="subAccount")
    user = await stats.get("ana", groupBy="subAccount")

    messages = {group["key"]: group["messages"] for group in admin["groups"]}
    assert messages == {"acme": 6, "globex": 1, "": 1}  # "": messages of no sub-account
    assert admin["totals"]["messages"] == 8
    acme = next(group for group in admin["groups"] if group["key"] == "acme")
    assert (acme["replies"], acme["deliveredStatusCodes"]["4"]) == (3, 2)
    assert [group["key"] for group in user["groups"]] == ["acme"]


async def test_a_window_the_wrong_way_round_is_refused(stats: Stats) -> None:
    response = await stats.client.get(
        "/v1/stats",
        params={"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        headers=stats.headers["ana"],
    )

    assert response.status_code == 422


async def test_the_database_buckets_times_as_the_rules_say(engine: AsyncEngine) -> None:
    """The migration's SQL copy of the bucket bounds against app.rules.delivery_stats."""
    probes = [bound - 0.5 for bound in LATENCY_BUCKETS_S] + [LATENCY_BUCKETS_S[-1] + 1]
    async with engine.connect() as conn:
        buckets = [
            (await conn.execute(text("SELECT stats_latency_bucket(:s)"), {"s": s})).scalar_one()
            for s in probes
        ]

    assert buckets == [*LATENCY_BUCKETS_S, OPEN_BUCKET]


def test_percentiles_interpolate_inside_a_bucket_and_floor_the_open_one() -> None:
    assert latency_percentile({}, 0.5) is None
    assert latency_percentile({10: 4}, 0.5) == 7.5  # half-way through [5, 10)
    assert latency_percentile({OPEN_BUCKET: 1}, 0.99) == float(LATENCY_BUCKETS_S[-1])


@pytest.mark.usefixtures("campaign")
async def test_purged_messages_leave_the_figures(stats: Stats, engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM messages WHERE id IN ('m5', 'm6')"))
        await conn.execute(text("DELETE FROM mos WHERE id = 'r4'"))

    totals = (await stats.get("ana"))["totals"]

    assert totals["messages"] == 4
    assert totals["sentStatusCodes"] == {"2": 4}
    assert totals["mosReceived"] == 3


async def test_the_database_knows_the_same_carriers_without_dlr(hook: Any, stats: Stats) -> None:
    """The migrations' SQL copy of CARRIERS_WITHOUT_DLR against app.rules.delivery_stats,
    written as Wavy might (any case, stray spaces)."""
    carriers = [f" {name.lower()} " for name in sorted(CARRIERS_WITHOUT_DLR)]
    for n, carrier in enumerate([*carriers, "VIVO"]):
        await hook("callback", callback(f"w{n}", 2, carrier))

    waiting = (await stats.get("ana"))["totals"]["waitingForDlr"]

    assert waiting == {"carrierSendsDlr": 1, "carrierWithoutDlr": len(CARRIERS_WITHOUT_DLR)}
    assert [carrier_sends_dlr(c) for c in carriers] == [False] * len(carriers)


async def test_rollup_kept_batch_by_batch_equals_a_recount_of_the_tables(
    hook: Any, engine: AsyncEngine
) -> None:
    """The trigger counts a statement's rows by profile before expanding them: arrays where
    many messages contribute alike, updates of stored rows and deletes must still add up to a
    recount of messages and mos from scratch."""
    carriers = ["VIVO", "TIM", "OI"]
    callbacks = [callback(f"b{n}", 2 if n % 5 else 101, carriers[n % 3]) for n in range(40)]
    dlrs = [dlr(f"b{n}", 4 if n % 4 else 104, 10 + n % 7 * 50, carriers[n % 3]) for n in range(25)]
    early = [dlr(f"e{n}", 4, 30, "VIVO") for n in range(10)]  # DLRs of messages not yet seen
    assert (await hook("callback", callbacks[:20])).status_code == 200
    assert (await hook("dlr", dlrs + early + dlrs[:5])).status_code == 200  # retries inside
    assert (await hook("callback", callbacks[20:] + callbacks[:3])).status_code == 200
    assert (await hook("mo", [mo(f"r{n}", f"b{n % 6}") for n in range(12)])).status_code == 200
    # The replies' recount runs in the background; done after the deletes, it would rewrite
    # reply counts, and so append deltas, after the fold below.
    await replies_recounted(engine)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM messages WHERE id IN ('b1', 'b2', 'e3')"))
        await conn.execute(text("DELETE FROM mos WHERE id IN ('r0', 'r7')"))

    async with engine.connect() as conn:
        kept_wrong = await rollup_differences(conn)
    await fold_all_deltas(engine)
    async with engine.connect() as conn:
        folded_wrong = await rollup_differences(conn)
        pending = (await conn.execute(text("SELECT count(*) FROM stats_deltas"))).scalar()
        messages = (await conn.execute(text(MESSAGES_IN_ROLLUP))).scalar()

    assert (kept_wrong, folded_wrong, pending) == ([], [], 0)
    assert messages == 40 + 10 - 3


async def replies_recounted(engine: AsyncEngine) -> None:
    """Once the writer's sweep has taken every queued recount (it deletes what it recounts)."""
    for _ in range(200):
        async with engine.connect() as conn:
            if not (await conn.execute(text("SELECT count(*) FROM reply_recounts"))).scalar():
                return
        await asyncio.sleep(0.05)
    raise AssertionError("the queued reply recounts were never taken")


async def fold_all_deltas(engine: AsyncEngine) -> None:
    for _ in range(100):  # None: the service's own fold was running; then ours comes next
        if await fold_stats_deltas(engine) is not None:
            return
        await asyncio.sleep(0.05)


MESSAGES_IN_ROLLUP = "SELECT sum(count) FROM stats_rollup WHERE metric = 'messages'"


async def test_an_operator_finds_and_repairs_rollup_counts_gone_wrong(
    hook: Any, engine: AsyncEngine, database_url: str, stats: Stats
) -> None:
    """``stats verify`` lists every count that is not what the stored rows add up to, and
    exits 1; ``stats repair`` corrects them, while the service runs."""
    assert (await hook("callback", [callback(f"v{n}", 2, "VIVO") for n in range(3)])).is_success
    assert (await hook("dlr", dlr("v0", 4, 5, "VIVO"))).is_success
    healthy = await asyncio.to_thread(run_cli, "stats", "verify", database_url=database_url)
    await fold_all_deltas(engine)
    async with engine.begin() as conn:  # a lost update, say, and a count with no rows behind it
        await conn.execute(
            text("UPDATE stats_rollup SET count = count + 5 WHERE metric = 'messages'")
        )
        await conn.execute(
            text(
                "INSERT INTO stats_deltas SELECT sub_account, hour, campaign_id, 'TIM', metric, "
                "value, 2 FROM stats_rollup WHERE metric = 'messages'"
            )
        )
    wrong_totals = (await stats.get("ana"))["totals"]

    found = await asyncio.to_thread(run_cli, "stats", "verify", database_url=database_url)
    repaired = await asyncio.to_thread(run_cli, "stats", "repair", database_url=database_url)
    again = await asyncio.to_thread(run_cli, "stats", "verify", database_url=database_url)

    assert healthy.returncode == 0
    assert healthy.stdout == "the stats rollup equals a count of the stored rows\n"
    assert wrong_totals["messages"] == 3 + 5 + 2
    assert found.returncode == 1
    assert "2 rollup count(s) differ from the stored rows" in found.stdout
    assert re.search(r"acme .* VIVO +messages +0 +8 +3", found.stdout), found.stdout
    assert re.search(r"acme .* TIM +messages +0 +2 +0", found.stdout), found.stdout
    assert (repaired.returncode, repaired.stdout) == (0, "2 rollup count(s) corrected\n")
    assert again.returncode == 0
    assert (await stats.get("ana"))["totals"]["messages"] == 3


async def test_a_repair_while_a_campaign_streams_in_leaves_every_count_exact(
    hook: Any, engine: AsyncEngine, database_url: str
) -> None:
    """A repair that locks no writer out: what writers commit meanwhile adds to the stored
    rows and to the rollup alike, so a repair reading both in one snapshot corrects exactly
    the two counts that were wrong, and the rollup ends equal to the rows."""
    assert (await hook("callback", [callback(f"s{n}", 2, "VIVO") for n in range(20)])).is_success
    async with engine.begin() as conn:  # counts gone wrong before the repair
        await conn.execute(
            text(
                "INSERT INTO stats_deltas VALUES "
                "('acme', date_trunc('hour', now()), 'c1', 'VIVO', 'messages', 0, 3), "
                "('acme', date_trunc('hour', now()), 'c9', 'OI', 'messages', 0, 2)"
            )
        )

    async def campaign_streaming_in() -> None:
        for n in range(20):
            await asyncio.gather(
                hook("dlr", dlr(f"s{n}", 4 if n % 3 else 104, 5 + n, "VIVO")),
                hook("callback", callback(f"t{n}", 2, "TIM")),
                hook("mo", mo(f"rs{n}", f"s{n % 7}")),
            )

    repaired, _ = await asyncio.gather(
        asyncio.to_thread(run_cli, "stats", "repair", database_url=database_url),
        campaign_streaming_in(),
    )
    async with engine.connect() as conn:
        wrong = await rollup_differences(conn)

    assert repaired.returncode == 0, repaired.stderr
    assert repaired.stdout == "2 rollup count(s) corrected\n"
    assert wrong == []


async def test_a_repair_waits_for_one_already_running_past_the_webhooks_statement_timeout(
    engine: AsyncEngine, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Operators' commands are not held to the 0.5 s a webhook's statement may take here: a
    check over a million messages takes 20 s (docs/benchmarks.md), and a second repair waits
    for the first."""
    monkeypatch.setenv("WAVY_WRITER_TIMEOUT_S", "0.5")
    async with engine.connect() as conn:
        await conn.execute(text(REPAIR_LOCK))  # another repair, running for 1.5 s
        repair = asyncio.create_task(
            asyncio.to_thread(run_cli, "stats", "repair", database_url=database_url)
        )
        await asyncio.sleep(1.5)
        await conn.rollback()
    repaired = await repair

    assert (repaired.returncode, repaired.stdout) == (0, "0 rollup count(s) corrected\n")


async def test_writers_storing_replies_and_statuses_of_one_campaign_at_once_do_not_deadlock(
    app: FastAPI, stats: Stats
) -> None:
    """Two writers' transactions (two workers, say), each storing replies and callbacks of the
    same campaign and hour in turn: both touch the same delivery counters, in opposite order.
    Neither may wait for the other, let alone fail with a deadlock (a 503 to Wavy)."""
    engine = app.state.engine
    async with engine.connect() as conn_a, engine.connect() as conn_b:
        writer_a, writer_b = await driver_connection(conn_a), await driver_connection(conn_b)
        async with writer_a.transaction(), writer_b.transaction():
            await write_records(writer_a, records_of("mo", mo("ra", None)), OPTOUTS)
            await write_records(
                writer_b, records_of("callback", callback("mb", 2, "VIVO")), OPTOUTS
            )
            await asyncio.wait_for(
                asyncio.gather(
                    write_records(writer_b, records_of("mo", mo("rb", None)), OPTOUTS),
                    write_records(
                        writer_a, records_of("callback", callback("ma", 2, "VIVO")), OPTOUTS
                    ),
                ),
                timeout=0.9,  # below PostgreSQL's deadlock_timeout (1 s): no waiting at all
            )

    totals = (await stats.get("ana"))["totals"]
    assert (totals["messages"], totals["mosReceived"]) == (2, 2)
