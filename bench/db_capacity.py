"""What one PostgreSQL takes: the writer's own statements (events and statuses in one
statement per batch, as the writer sends them), driven directly with no HTTP in front, from 1,
2 and 4 concurrent connections. This is the ceiling the database puts on ingestion, whatever
the app does.

    .venv/bin/python -m bench.db_capacity                 # 200 batches of 1000 DLRs per run
    .venv/bin/python -m bench.db_capacity --batch 100
    .venv/bin/python -m bench.db_capacity --lifecycle     # callbacks, then their DLRs
    .venv/bin/python -m bench.db_capacity --floor         # the least a message row costs

Ids and phone numbers are scattered over the indexes as Wavy's are (runs before 2026-11-25,
evening, used ids that clustered and one phone number, and flattered PostgreSQL). The default
run posts DLRs of new message ids, as the ingest benchmark does. ``--lifecycle``
measures a campaign's real order instead: the callbacks create the messages, then the DLRs
rewrite them, and it reports how many of those rewrites PostgreSQL could make in place (HOT).
``--floor`` measures what no writer of this schema can go below: bare tables holding only a
message row, with no event log, merge, retry check or stats, filled the cheapest ways
PostgreSQL takes rows, and what their CPU per row leaves of the machine's cores at a target
rate.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import orjson

from app.db.ingest import write_records
from app.db.json_batches import rows_from, select_list
from app.payloads import Callback, Dlr
from app.rules.optouts import DEFAULT_MATCHER
from app.rules.records import EventRecord, build_event_records
from app.rules.webhook_body import items_as_json
from bench.common import (
    calibration_line,
    host_line,
    postgres_cpu_seconds,
    scratch_database,
)


def _scattered(prefix: str, n: int) -> str:
    """Ten digits that put item ``n`` of a batch anywhere in an index, as Wavy's random UUIDs
    and a campaign's phone numbers land (the ingest benchmark's dlr.lua does the same)."""
    digest = hashlib.blake2b(f"{prefix}-{n}".encode(), digest_size=8).digest()
    return f"{int.from_bytes(digest, 'big') % 10**10:010d}"


def callback(message_id: str, hashed: str) -> dict[str, object]:
    return {
        "id": message_id,
        "correlationId": f"c-{message_id}",
        "carrierId": 5,
        "carrierName": "TIM",
        "destination": f"55{hashed}",
        "sentStatusCode": 2,
        "sentStatus": "SENT_SUCCESS",
        "sentStatusAt": 1420732929252,
        "campaignId": 1234,
    }


def callback_batch(prefix: str, size: int) -> list[dict[str, object]]:
    hashes = [_scattered(prefix, n) for n in range(size)]
    return [callback(f"{hashed}-{prefix}-{n}", hashed) for n, hashed in enumerate(hashes)]


def dlr_batch(prefix: str, size: int) -> list[dict[str, object]]:
    """The callbacks of ``callback_batch(prefix, size)``, delivered."""
    delivered = {
        "deliveredStatusCode": 4,
        "deliveredStatus": "DELIVERED_SUCCESS",
        "deliveredAt": 1420732954000,
    }
    return [{**callback, **delivered} for callback in callback_batch(prefix, size)]


def build_batches(
    count: int, size: int, tag: str, kind: Literal["callback", "dlr"] = "dlr"
) -> list[list[EventRecord]]:
    """Records as the service builds them, made before the clock starts: the run then times
    PostgreSQL (and the driver), not pydantic."""
    model, make_batch = (Dlr, dlr_batch) if kind == "dlr" else (Callback, callback_batch)
    batches = []
    for n in range(count):
        raw = make_batch(f"{tag}-{n}", size)
        payloads = [model.model_validate(item) for item in raw]
        batches.append(
            build_event_records(
                kind,
                payloads,
                items_as_json(raw),
                sub_account="acme",
                received_at=datetime.now(UTC),
            )
        )
    return batches


async def drive(dsn: str, connections: int, batches: list[list[EventRecord]]) -> tuple[int, float]:
    """Commit every batch, from ``connections`` connections; events committed and seconds."""
    queue = iter(batches)
    committed = 0

    async def one_connection() -> None:
        nonlocal committed
        conn = await asyncpg.connect(dsn)
        try:
            for records in queue:
                # One statement, as the writer sends it (DLRs: no opt-out list changes).
                await write_records(conn, records, DEFAULT_MATCHER)
                committed += len(records)
        finally:
            await conn.close()

    started = time.monotonic()
    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return committed, time.monotonic() - started


async def messages_rewritten(dsn: str) -> tuple[int, int]:
    """Rows of ``messages`` updated so far, and how many of those in place (HOT: no new index
    entries, no dead ones for VACUUM)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_stat_force_next_flush()")
        row = await conn.fetchrow(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'messages'"
        )
    finally:
        await conn.close()
    assert row is not None
    return int(row["n_tup_upd"]), int(row["n_tup_hot_upd"])


def measure_lifecycle(dsn: str, count: int, size: int) -> None:
    """A campaign's order on 2 connections: callbacks create the messages, DLRs rewrite them."""
    callbacks = build_batches(count, size, "life", "callback")
    dlrs = build_batches(count, size, "life", "dlr")
    print(f"{count} batches of {size} per step, 2 connections, records built beforehand")
    events, took = asyncio.run(drive(dsn, 2, callbacks))
    print(f"  callbacks of new messages:      {events / took:9,.0f} events/s", flush=True)
    events, took = asyncio.run(drive(dsn, 2, dlrs))
    print(f"  DLRs of those messages:         {events / took:9,.0f} events/s", flush=True)
    updated, in_place = asyncio.run(messages_rewritten(dsn))
    print(f"  message rows rewritten: {updated:,}, in place (HOT): {in_place:,}")


# The floor's table: a message row's columns, keys collated "C" as in app.db.tables.
_FLOOR_TABLE = """
    CREATE TABLE floor_messages (
        id text COLLATE "C" PRIMARY KEY, correlation_id text COLLATE "C",
        destination text COLLATE "C", sent_status_code int, delivered_status_code int,
        delivered_status text, delivered_at timestamptz, first_seen_at timestamptz,
        tx_id bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
        change_seq bigint GENERATED ALWAYS AS IDENTITY, payload text)
"""
_FLOOR_COLUMNS: dict[str, str] = {
    "id": "text",
    "correlation_id": "text",
    "destination": "text",
    "sent_status_code": "int",
    "delivered_status_code": "int",
    "delivered_status": "text",
    "delivered_at": "timestamptz",
    "first_seen_at": "timestamptz",
    "payload": "text",
}
# Each message's event row, as app.db.tables keys the event log: the purge's and history's
# order, and the exact-retry key.
_FLOOR_EVENTS_TABLE = """
    CREATE TABLE floor_events (
        id bigint GENERATED ALWAYS AS IDENTITY, kind text COLLATE "C" NOT NULL,
        message_id text COLLATE "C" NOT NULL, sub_account text COLLATE "C",
        sent_status_code int, delivered_status_code int, received_at timestamptz NOT NULL,
        payload json NOT NULL, PRIMARY KEY (received_at, id),
        UNIQUE NULLS NOT DISTINCT (message_id, kind, sent_status_code, delivered_status_code))
"""
_FLOOR_EVENT_COLUMNS = (
    "kind",
    "message_id",
    "sent_status_code",
    "delivered_status_code",
    "received_at",
    "payload",
)
# The writer's encoding, built by the writer's own helpers (one JSON array per column,
# app.db.ingest), with the least conflict handling an idempotent receiver needs.
_FLOOR_INSERT = (
    f"INSERT INTO floor_messages ({', '.join(_FLOOR_COLUMNS)}) "  # noqa: S608 - constants
    f"SELECT {select_list(_FLOOR_COLUMNS, 'u')} FROM {rows_from(_FLOOR_COLUMNS, 'u')} "
    "ON CONFLICT (id) DO NOTHING"
)
# The same with each row's event row, in one statement: the least an idempotent receiver
# sends PostgreSQL for an array of DLRs (no merge, owner check, reply count or stats).
_FLOOR_INSERT_WITH_EVENTS = (
    f"WITH u AS (SELECT {select_list(_FLOOR_COLUMNS, 'u')} "  # noqa: S608 - constants
    f"FROM {rows_from(_FLOOR_COLUMNS, 'u')}), "
    f"e AS (INSERT INTO floor_events ({', '.join(_FLOOR_EVENT_COLUMNS)}) "
    "SELECT 'dlr', id, sent_status_code, delivered_status_code, first_seen_at, payload::json "
    "FROM u ON CONFLICT DO NOTHING) "
    f"INSERT INTO floor_messages ({', '.join(_FLOOR_COLUMNS)}) "
    f"SELECT {', '.join(_FLOOR_COLUMNS)} FROM u ON CONFLICT (id) DO NOTHING"
)
# Indexes of messages, cumulatively: the key; then the searches by correlationId and by
# destination (Wavy's status search, the listing's filter); then the listing's and the status
# feed's orders (right-edge keys).
_FLOOR_INDEXES: list[tuple[str, list[str]]] = [
    ("the key only", []),
    ("+ correlation id, destination", ["correlation_id", "destination"]),
    ("+ listing and feed orders", ["first_seen_at, id", "tx_id, change_seq"]),
]
# The last step of the floor adds each message's event row: what an array of DLRs stores at
# the least. By COPY it is the floor the service's arrays are measured against (bench.ingest);
# by the writer's encoding with ON CONFLICT, the least an idempotent receiver can send.
WITH_EVENTS = "+ their event rows"
FloorRow = tuple[Any, ...]


def floor_rows(prefix: str, size: int) -> list[FloorRow]:
    """A batch of new DLRs as message rows, ids and numbers scattered as in dlr_batch."""
    now = datetime.now(UTC)
    rows = []
    for n in range(size):
        hashed = _scattered(prefix, n)
        message_id = f"{hashed}-{prefix}-{n}"
        payload = orjson.dumps(
            {"id": message_id, "sentStatusCode": 2, "deliveredStatusCode": 4}
        ).decode()
        status = (2, 4, "DELIVERED_SUCCESS", now, now)
        rows.append((message_id, f"c-{message_id}", f"55{hashed}", *status, payload))
    return rows


def _as_json_columns(rows: list[FloorRow]) -> list[str]:
    return [orjson.dumps(list(column)).decode() for column in zip(*rows, strict=True)]


def _event_rows(rows: list[FloorRow]) -> list[FloorRow]:
    """Each message row's DLR event, as the writer logs it."""
    return [("dlr", row[0], row[3], row[4], row[7], row[8]) for row in rows]


async def create_floor_tables(dsn: str, indexes: list[str], *, events: bool) -> None:
    """New floor tables (``floor_events`` too, with ``events``) with these indexes."""
    admin = await asyncpg.connect(dsn)
    await admin.execute("DROP TABLE IF EXISTS floor_messages")
    await admin.execute("DROP TABLE IF EXISTS floor_events")
    await admin.execute(_FLOOR_TABLE)
    if events:
        await admin.execute(_FLOOR_EVENTS_TABLE)
    for columns in indexes:
        await admin.execute(f"CREATE INDEX ON floor_messages ({columns})")
    await admin.execute("CHECKPOINT")  # each run starts with the same WAL state
    await admin.close()


async def insert_floor_rows(conn: asyncpg.Connection, rows: list[FloorRow]) -> None:
    """The idempotent floor's statement: message rows and their event rows, autocommitted."""
    await conn.execute(_FLOOR_INSERT_WITH_EVENTS, *_as_json_columns(rows))


# Every index of the read API's on the floor's messages, as the idempotent floor has them.
ALL_FLOOR_INDEXES = [column for _, more in _FLOOR_INDEXES for column in more]


async def floor_run(
    dsn: str,
    indexes: list[str],
    batches: list[list[FloorRow]],
    way: str,
    *,
    events: bool = False,
    connections: int = 2,
) -> tuple[float, float]:
    """Rows/s and PostgreSQL's CPU per row, filling a new floor table from ``connections``
    connections (with ``events``, each row's event row too, in the same transaction)."""
    await create_floor_tables(dsn, indexes, events=events)

    async def by_insert(conn: asyncpg.Connection, rows: list[FloorRow]) -> None:
        await conn.execute(_FLOOR_INSERT, *_as_json_columns(rows))

    async def by_copy(conn: asyncpg.Connection, rows: list[FloorRow]) -> None:
        await conn.copy_records_to_table(
            "floor_messages", records=rows, columns=list(_FLOOR_COLUMNS)
        )

    async def by_copy_with_events(conn: asyncpg.Connection, rows: list[FloorRow]) -> None:
        async with conn.transaction():
            await by_copy(conn, rows)
            await conn.copy_records_to_table(
                "floor_events", records=_event_rows(rows), columns=list(_FLOOR_EVENT_COLUMNS)
            )

    async def by_insert_with_events(conn: asyncpg.Connection, rows: list[FloorRow]) -> None:
        await insert_floor_rows(conn, rows)

    ways = {
        ("insert", False): by_insert,
        ("insert", True): by_insert_with_events,
        ("copy", False): by_copy,
        ("copy", True): by_copy_with_events,
    }
    write: Callable[[asyncpg.Connection, list[FloorRow]], Awaitable[None]] = ways[way, events]
    queue = iter(batches)
    # Open before the first reading.
    opened = [await asyncpg.connect(dsn) for _ in range(connections)]

    async def one_connection(conn: asyncpg.Connection) -> None:
        for rows in queue:
            await write(conn, rows)

    cpu_before, started = postgres_cpu_seconds(), time.monotonic()
    await asyncio.gather(*(one_connection(conn) for conn in opened))
    took, cpu = time.monotonic() - started, postgres_cpu_seconds() - cpu_before
    for conn in opened:
        await conn.close()
    rows = sum(len(batch) for batch in batches)
    return rows / took, cpu / rows * 1e6


def measure_floor(dsn: str, count: int, size: int, target: int) -> None:
    """The least PostgreSQL spends per new message row, against a target rate's CPU budget."""
    cores = os.cpu_count() or 1
    print(
        f"{count} batches of {size} new message rows per run, 2 connections, ids scattered; "
        f"at {target:,} events/s this machine's {cores} cores leave {cores * 1e6 / target:.0f} "
        "us of CPU per event for the service, the load generator and PostgreSQL together"
    )
    indexes: list[str] = []
    steps = [(label, more, False) for label, more in _FLOOR_INDEXES] + [(WITH_EVENTS, [], True)]
    for label, more, events in steps:
        indexes += more
        for way in ("insert", "copy"):
            prefix = f"floor-{way}-{len(indexes)}-{'events' if events else 'rows'}"
            batches = [floor_rows(f"{prefix}-{n}", size) for n in range(count)]
            per_s, cpu_us = asyncio.run(floor_run(dsn, indexes, batches, way, events=events))
            how = "JSON columns, ON CONFLICT" if way == "insert" else "binary COPY"
            print(
                f"  {label:31} {how:26} {per_s:9,.0f} rows/s  PostgreSQL {cpu_us:5.1f} us/row",
                flush=True,
            )


def copy_floor(dsn: str, count: int, size: int) -> tuple[float, float]:
    """The floor under an array of DLRs: message rows with every index above and their event
    rows, by binary COPY from 2 connections: rows/s and PostgreSQL's CPU per row."""
    batches = [floor_rows(f"floor-events-{time.monotonic_ns()}-{n}", size) for n in range(count)]
    return asyncio.run(floor_run(dsn, ALL_FLOOR_INDEXES, batches, "copy", events=True))


def idempotent_floor(dsn: str, count: int, size: int) -> tuple[float, float]:
    """The least an idempotent receiver sends for an array of DLRs: the same message rows with
    every index and their event rows, in one INSERT ... ON CONFLICT statement per batch from
    ONE asyncpg connection: rows/s and PostgreSQL's CPU per row."""
    batches = [floor_rows(f"floor-idem-{time.monotonic_ns()}-{n}", size) for n in range(count)]
    return asyncio.run(
        floor_run(dsn, ALL_FLOOR_INDEXES, batches, "insert", events=True, connections=1)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="events/s one PostgreSQL takes via the writer")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--events", type=int, default=200_000, help="per run")
    parser.add_argument(
        "--lifecycle",
        action="store_true",
        help="callbacks of new messages, then the DLRs of those messages (2 connections)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="bare message rows (no event log, merge or stats), by INSERT and by COPY",
    )
    parser.add_argument("--target", type=int, default=50_000, help="events/s, for --floor")
    args = parser.parse_args()
    count = max(1, args.events // args.batch)
    print(host_line(), calibration_line(), sep="\n", flush=True)
    with scratch_database("wavy_bench_capacity") as url:
        dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        if args.lifecycle:
            measure_lifecycle(dsn, count, args.batch)
            return
        if args.floor:
            measure_floor(dsn, count, args.batch, args.target)
            return
        print(f"{count} batches of {args.batch} new DLRs per run, records built beforehand")
        for connections in (1, 2, 4):
            batches = build_batches(count, args.batch, f"cap{connections}")
            events, took = asyncio.run(drive(dsn, connections, batches))
            print(f"  {connections} connection(s): {events / took:9,.0f} events/s", flush=True)


if __name__ == "__main__":
    main()
