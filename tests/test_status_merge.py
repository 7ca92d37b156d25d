"""Callbacks and DLRs of one message converge to one row whatever their order or repetition."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import driver_connection
from app.db.ingest import write_records
from app.payloads import EventKind, as_event_kind, validate_items
from app.rules.optouts import DEFAULT_MATCHER as OPTOUTS
from app.rules.records import EventRecord, build_event_records
from app.rules.status_merge import merge_status_events, status_from_event
from app.rules.webhook_body import items_as_json
from tests.conftest import add_key, fetch_all, records_of

SENT_2 = {"sentStatusCode": 2, "sentStatus": "SENT_SUCCESS", "sentAt": 1_000_000}
DATA_COLUMNS = (
    "sub_account",
    "correlation_id",
    "destination",
    "carrier_id",
    "carrier_name",
    "campaign_id",
    "extra_info",
    "sent_source",
    "sent_status_code",
    "sent_status",
    "sent_at",
    "delivered_status_code",
    "delivered_status",
    "delivered_at",
)


def callback(message_id: str = "m1", **fields: Any) -> dict[str, Any]:
    return {"id": message_id, **SENT_2, **fields}


def dlr(code: int, at_ms: int, message_id: str = "m1", **fields: Any) -> dict[str, Any]:
    names = {4: "DELIVERED_SUCCESS", 104: "NOT_DELIVERED"}
    return {
        "id": message_id,
        **SENT_2,
        "deliveredStatusCode": code,
        "deliveredStatus": names.get(code),
        "deliveredAt": at_ms,
        **fields,
    }


async def stored(engine: AsyncEngine, message_id: str = "m1") -> dict[str, Any]:
    [row] = await fetch_all(engine, "SELECT * FROM messages WHERE id = :id", id=message_id)
    return row


def ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, tz=UTC)


async def test_dlr_before_callback_keeps_delivery(hook: Any, engine: AsyncEngine) -> None:
    await hook("dlr", dlr(4, 2_000_000))
    await hook("callback", callback(carrierName="VIVO"))

    row = await stored(engine)
    assert (row["delivered_status_code"], row["delivered_status"]) == (4, "DELIVERED_SUCCESS")
    assert row["carrier_name"] == "VIVO"
    assert row["sent_source"] == 2  # the callback's own sent stage now


async def test_callback_retried_after_dlr_changes_nothing(hook: Any, engine: AsyncEngine) -> None:
    await hook("callback", callback())
    await hook("dlr", dlr(4, 2_000_000))
    before = await stored(engine)

    retry = await hook("callback", callback())

    assert retry.json() == {"received": 1, "duplicates": 1}
    assert await stored(engine) == before  # not even updated_at or the change sequence moved


async def test_later_delivered_success_replaces_not_delivered(
    hook: Any, engine: AsyncEngine
) -> None:
    await hook("dlr", dlr(104, 2_000_000))
    await hook("dlr", dlr(4, 3_000_000))

    row = await stored(engine)
    assert (row["delivered_status_code"], row["delivered_at"]) == (4, ms(3_000_000))
    events = await fetch_all(engine, "SELECT kind FROM events WHERE message_id = 'm1'")
    assert len(events) == 2  # both DLRs stay in the history


async def test_late_arriving_older_not_delivered_does_not_undo_success(
    hook: Any, engine: AsyncEngine
) -> None:
    await hook("dlr", dlr(4, 3_000_000))
    await hook("dlr", dlr(104, 2_000_000))

    assert (await stored(engine))["delivered_status_code"] == 4


async def test_delivered_tie_on_time_is_broken_towards_success(
    hook: Any, engine: AsyncEngine
) -> None:
    await hook("dlr", dlr(4, 2_000_000))
    await hook("dlr", dlr(104, 2_000_000))

    assert (await stored(engine))["delivered_status_code"] == 4


async def test_dlr_fills_the_sent_stage_when_no_callback_came(
    hook: Any, engine: AsyncEngine
) -> None:
    await hook("dlr", dlr(4, 2_000_000))

    row = await stored(engine)
    assert (row["sent_status_code"], row["sent_status"], row["sent_at"]) == (
        2,
        "SENT_SUCCESS",
        ms(1_000_000),
    )
    assert row["sent_source"] == 1


async def test_null_never_erases_a_known_field(hook: Any, engine: AsyncEngine) -> None:
    await hook("callback", callback(correlationId="order-1", destination="5511900009999"))
    await hook("dlr", dlr(4, 2_000_000, correlationId=None, destination=""))

    row = await stored(engine)
    assert (row["correlation_id"], row["destination"]) == ("order-1", "5511900009999")


async def test_first_seen_and_last_update_times_are_kept(hook: Any, engine: AsyncEngine) -> None:
    await hook("callback", callback())
    first = await stored(engine)
    await asyncio.sleep(0.01)
    await hook("dlr", dlr(4, 2_000_000))

    row = await stored(engine)
    assert row["first_seen_at"] == first["first_seen_at"]
    assert row["updated_at"] > first["updated_at"]
    assert row["change_seq"] > first["change_seq"]


async def test_a_retry_keeps_the_first_copy_in_the_history_and_fills_what_it_lacked(
    hook: Any, engine: AsyncEngine
) -> None:
    await hook("dlr", dlr(4, 2_000_000))
    retry = await hook("dlr", dlr(4, 2_000_000, carrierName="TIM", destination="5511900000001"))

    assert retry.json() == {"received": 1, "duplicates": 1}
    row = await stored(engine)
    assert (row["carrier_name"], row["destination"]) == ("TIM", "5511900000001")
    [event] = await fetch_all(engine, "SELECT payload FROM events")
    assert "carrierName" not in event["payload"]


async def test_in_one_array_a_later_copy_fills_what_the_first_lacked(
    hook: Any, engine: AsyncEngine
) -> None:
    response = await hook("dlr", [dlr(4, 2_000_000), dlr(4, 2_000_000, carrierName="TIM")])

    assert response.json() == {"received": 2, "duplicates": 1}
    row = await stored(engine)
    assert (row["delivered_at"], row["carrier_name"]) == (ms(2_000_000), "TIM")


async def test_exact_retries_in_one_array_are_one_event(hook: Any, engine: AsyncEngine) -> None:
    response = await hook("dlr", [dlr(4, 2_000_000)] * 3)

    assert response.json() == {"received": 3, "duplicates": 2}
    assert len(await fetch_all(engine, "SELECT id FROM events")) == 1


# --- property: any order, repetition and batching of the same events gives the same row -------

event_fields = st.fixed_dictionaries(
    {},
    optional={
        "correlationId": st.sampled_from([None, "", "a", "b", "B", "é"]),
        "carrierId": st.sampled_from([None, 1, 2]),
        "carrierName": st.sampled_from([None, "VIVO", "TIM", "vivo"]),
        "destination": st.sampled_from(["5511900000001", "5511900000002"]),
        "campaignId": st.sampled_from([None, "64", 64, "x"]),
        "extraInfo": st.sampled_from(["", "z", "Z"]),
        "sentStatusCode": st.sampled_from([None, 2, 101]),
        "sentStatus": st.sampled_from([None, "SENT_SUCCESS", "EXPIRED"]),
        "sentAt": st.sampled_from([None, 1_000, 2_000]),
        "sentDate": st.sampled_from(["1970-01-01T00:00:01Z", "1970-01-01T00:00:03+0000"]),
    },
)
delivered_fields = st.fixed_dictionaries(
    {},
    optional={
        # Few values on purpose: ties (same time, other code) are where merges go wrong.
        "deliveredStatusCode": st.sampled_from([4, 104, 777]),
        "deliveredStatus": st.sampled_from([None, "NOT_DELIVERED"]),
        "deliveredAt": st.sampled_from([5_000, 6_000]),
    },
)
an_event = st.one_of(
    st.tuples(st.just("callback"), event_fields, st.sampled_from(["acme", None])),
    st.tuples(
        st.just("dlr"),
        st.builds(lambda a, b: {**a, **b}, event_fields, delivered_fields),
        st.sampled_from(["acme", None]),
    ),
)


def retry_key(event: tuple[str, dict[str, Any], str | None]) -> tuple[Any, ...]:
    kind, fields, _ = event
    return (kind, fields.get("sentStatusCode"), fields.get("deliveredStatusCode"))


def expected_row(events: list[tuple[str, dict[str, Any], str | None]]) -> dict[str, Any]:
    """The Python rules' answer, the reference the SQL path must match."""
    now = datetime.now(UTC)
    statuses = [
        status_from_event(
            validate_items(as_event_kind(kind), [{"id": "m", **fields}])[0],
            sub_account=sub,
            received_at=now,
        )
        for kind, fields, sub in events
    ]
    [merged] = merge_status_events(statuses)
    return {column: getattr(merged, column) for column in DATA_COLUMNS}


async def post_in_random_batches(
    client: httpx.AsyncClient,
    keys: dict[str | None, str],
    message_id: str,
    events: list[tuple[str, dict[str, Any], str | None]],
    rng: random.Random,
) -> None:
    """Send events as single objects and arrays, some concurrently, so merges happen both in one
    batch (Python) and across batches (SQL)."""
    requests = []
    i = 0
    while i < len(events):
        size = rng.randint(1, 3)
        chunk = events[i : i + size]
        i += size
        for kind, sub in {(kind, sub) for kind, _, sub in chunk}:
            bodies = [
                {"id": message_id, **fields} for k, fields, s in chunk if (k, s) == (kind, sub)
            ]
            body = bodies if len(bodies) > 1 or rng.random() < 0.5 else bodies[0]
            requests.append((kind, keys[sub], body))
    for start in range(0, len(requests), 3):
        responses = await asyncio.gather(
            *(
                client.post(f"/v1/webhooks/{kind}", params={"key": key}, json=body)
                for kind, key, body in requests[start : start + 3]
            )
        )
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    events=st.lists(an_event, min_size=1, max_size=8),
    seed=st.integers(min_value=0, max_value=2**32),
)
async def test_any_order_repetition_and_batching_give_the_same_row(
    app: FastAPI,
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    events: list[tuple[str, dict[str, Any], str | None]],
    seed: int,
) -> None:
    rng = random.Random(seed)
    keys = {sub: await add_key(app, sub) for sub in ("acme", None)}
    # Same kind and codes is, by definition, a retry of the same event: keep one per retry key.
    events = list({retry_key(event): event for event in reversed(events)}.values())
    shuffled = events + rng.sample(events, k=rng.randint(0, len(events)))  # repetitions
    rng.shuffle(shuffled)
    # Hypothesis examples share the test's (uncleaned) tables: fresh ids keep them apart.
    ids = (f"prop-{uuid.uuid4()}", f"prop-{uuid.uuid4()}")

    await post_in_random_batches(client, keys, ids[0], events, rng)
    await post_in_random_batches(client, keys, ids[1], shuffled, rng)

    rows = [await stored(engine, message_id) for message_id in ids]
    in_order, shuffled_row = ({c: row[c] for c in DATA_COLUMNS} for row in rows)
    assert in_order == shuffled_row
    assert in_order == expected_row(events)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(first=an_event, second=an_event)
async def test_sql_merge_of_two_separate_events_matches_the_rules(
    app: FastAPI,
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    first: tuple[str, dict[str, Any], str | None],
    second: tuple[str, dict[str, Any], str | None],
) -> None:
    if retry_key(first) == retry_key(second):
        second = first  # a retry is the same event
    keys = {sub: await add_key(app, sub) for sub in ("acme", None)}
    message_id = f"pair-{uuid.uuid4()}"

    for kind, fields, sub in (first, second):
        response = await client.post(
            f"/v1/webhooks/{kind}", params={"key": keys[sub]}, json={"id": message_id, **fields}
        )
        assert response.status_code == 200

    row = await stored(engine, message_id)
    assert {c: row[c] for c in DATA_COLUMNS} == expected_row([first, second])


async def test_each_field_of_an_event_lands_in_its_own_column(
    app: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Every field of a DLR, each with a value of its own, is stored in its own column of the
    message and of its event (the records are built positionally, for speed)."""
    message_id = f"fields-{uuid.uuid4()}"
    item = {
        "id": message_id,
        "correlationId": "corr-1",
        "destination": "5511912345678",
        "carrierId": 7,
        "carrierName": "Vivo",
        "campaignId": 99,
        "extraInfo": "extra",
        "sentStatusCode": 2,
        "sentAt": 1_000_000,
        "deliveredStatusCode": 104,
        "deliveredStatus": "NOT_DELIVERED_HERE",
        "deliveredAt": 2_000_000,
    }
    response = await client.post(
        "/v1/webhooks/dlr", params={"key": await add_key(app, "acme")}, json=item
    )
    assert response.status_code == 200

    row = await stored(engine, message_id)
    assert {c: row[c] for c in DATA_COLUMNS} == {
        "sub_account": "acme",
        "correlation_id": "corr-1",
        "destination": "5511912345678",
        "carrier_id": 7,
        "carrier_name": "Vivo",
        "campaign_id": "99",
        "extra_info": "extra",
        "sent_source": 1,  # the sent stage as a DLR echoes it
        "sent_status_code": 2,
        "sent_status": "SENT_SUCCESS",  # the documented name of the code
        "sent_at": ms(1_000_000),
        "delivered_status_code": 104,
        "delivered_status": "NOT_DELIVERED_HERE",
        "delivered_at": ms(2_000_000),
    }
    assert row["first_seen_at"] == row["updated_at"]
    [event] = await fetch_all(
        engine,
        "SELECT kind, sub_account, sent_status_code, delivered_status_code, received_at, "
        "payload->>'carrierName' AS carrier FROM events WHERE message_id = :id",
        id=message_id,
    )
    assert event == {
        "kind": "dlr",
        "sub_account": "acme",
        "sent_status_code": 2,
        "delivered_status_code": 104,
        "received_at": row["first_seen_at"],
        "carrier": "Vivo",
    }


@given(event=an_event)
def test_a_status_carries_its_events_key_columns(
    event: tuple[str, dict[str, Any], str | None],
) -> None:
    """The one-statement write reads a status's sub-account, codes and times from its event
    row instead of sending them twice: the two must always agree."""
    kind, fields, sub = event
    now = datetime.now(UTC)
    item = {"id": "m", **fields}
    [record] = build_event_records(
        as_event_kind(kind),
        validate_items(as_event_kind(kind), [item]),
        items_as_json([item]),
        sub_account=sub,
        received_at=now,
    )
    status = record.status
    assert status is not None
    assert (status.id, status.sub_account) == (record.message_id, record.sub_account)
    assert status.sent_status_code == record.sent_status_code
    assert status.delivered_status_code == record.delivered_status_code
    assert status.first_seen_at == status.updated_at == record.received_at


async def test_a_reply_whose_id_equals_a_message_id_in_the_same_batch_is_kept_apart(
    engine: AsyncEngine,
) -> None:
    """MO ids and MT ids are separate namespaces: a batch holding a DLR of message "x" and a
    reply whose own id is "x" stores one message row, one reply and both events."""
    now = datetime.now(UTC)
    dlr_item = {"id": "x", **SENT_2, "deliveredStatusCode": 4, "deliveredAt": 2_000_000}
    mo_item = {"id": "x", "messageText": "hi", "mt": {"id": "x"}}
    records = [
        *build_event_records(
            "dlr",
            validate_items("dlr", [dlr_item]),
            items_as_json([dlr_item]),
            sub_account="acme",
            received_at=now,
        ),
        *build_event_records(
            "mo",
            validate_items("mo", [mo_item]),
            items_as_json([mo_item]),
            sub_account="acme",
            received_at=now,
        ),
    ]
    async with engine.connect() as conn:
        outcome = await write_records(await driver_connection(conn), records, OPTOUTS)
        await conn.commit()

    assert outcome.new == {0, 1}
    [row] = await fetch_all(engine, "SELECT delivered_status_code, reply_count FROM messages")
    assert row == {"delivered_status_code": 4, "reply_count": 1}
    kinds = await fetch_all(engine, "SELECT kind FROM events ORDER BY kind")
    assert [k["kind"] for k in kinds] == ["dlr", "mo"]


async def test_each_message_of_a_mixed_batch_keeps_its_own_fields(engine: AsyncEngine) -> None:
    """A batch of replies and DLRs whose ids interleave (a reply's id sorting first): every
    message row gets its own DLR's carrier and destination, none a neighbour's."""
    now = datetime.now(UTC)
    items: list[tuple[EventKind, dict[str, Any]]] = [
        ("mo", {"id": "mix-a", "messageText": "hi"}),
        ("dlr", {**dlr(4, 2_000_000, "mix-b"), "carrierName": "B", "destination": "5511"}),
        ("mo", {"id": "mix-c", "messageText": "yo"}),
        ("dlr", {**dlr(4, 2_000_000, "mix-d"), "carrierName": "D", "destination": "5522"}),
    ]
    records = [
        record
        for kind, item in items
        for record in build_event_records(
            kind,
            validate_items(kind, [item]),
            items_as_json([item]),
            sub_account=None,
            received_at=now,
        )
    ]
    async with engine.connect() as conn:
        outcome = await write_records(await driver_connection(conn), records, OPTOUTS)
        await conn.commit()

    assert outcome.new == {0, 1, 2, 3}
    rows = await fetch_all(
        engine,
        "SELECT id, carrier_name, destination FROM messages WHERE id LIKE 'mix-%' ORDER BY id",
    )
    assert rows == [
        {"id": "mix-b", "carrier_name": "B", "destination": "5511"},
        {"id": "mix-d", "carrier_name": "D", "destination": "5522"},
    ]


def batch_of(items: list[tuple[EventKind, dict[str, Any]]]) -> list[EventRecord]:
    """What the webhooks would hand the writer for these (kind, item) pairs, as one batch."""
    return [record for kind, item in items for record in records_of(kind, item)]


async def test_batches_holding_the_same_messages_in_opposite_shapes_do_not_deadlock(
    engine: AsyncEngine,
) -> None:
    """Two writers at once (two workers, say): one batch holds a message's callback and DLR
    and another message's DLR, the other batch the same the other way round. Each must take
    its message rows in one order, or each waits for the other's until PostgreSQL fails one
    with a deadlock (a 503 to Wavy)."""

    async def write_alone(records: list[EventRecord]) -> None:
        async with engine.connect() as conn:
            await write_records(await driver_connection(conn), records, OPTOUTS)
            await conn.commit()

    for round_ in range(5):
        x, y = f"x{round_}", f"y{round_}"
        await asyncio.wait_for(
            asyncio.gather(
                write_alone(
                    batch_of(
                        [
                            ("callback", callback(x)),
                            ("dlr", dlr(4, 2_000_000, x)),
                            ("dlr", dlr(104, 2_000_000, y)),
                        ]
                    )
                ),
                write_alone(
                    batch_of(
                        [
                            ("callback", callback(y)),
                            ("dlr", dlr(4, 2_000_000, y)),
                            ("dlr", dlr(104, 2_000_000, x)),
                        ]
                    )
                ),
            ),
            timeout=10,
        )
        for message_id in (x, y):
            assert (await stored(engine, message_id))["delivered_status_code"] == 4
