"""What one PostgreSQL takes: the writer's own statements (events and statuses in one
statement per batch, as the writer sends them), driven directly with no HTTP in front, from 1,
2 and 4 concurrent connections. This is the ceiling the database puts on ingestion, whatever
the app does.

    .venv/bin/python -m bench.db_capacity                 # 200 batches of 1000 DLRs per run
    .venv/bin/python -m bench.db_capacity --batch 100
    .venv/bin/python -m bench.db_capacity --lifecycle     # callbacks, then their DLRs

Ids and phone numbers are scattered over the indexes as Wavy's are (runs before 2026-11-25,
evening, used ids that clustered and one phone number, and flattered PostgreSQL). The default
run posts DLRs of new message ids, as the ingest benchmark does. ``--lifecycle``
measures a campaign's real order instead: the callbacks create the messages, then the DLRs
rewrite them, and it reports how many of those rewrites PostgreSQL could make in place (HOT).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
from datetime import UTC, datetime
from typing import Literal

import asyncpg

from app.db.ingest import write_records
from app.payloads import Callback, Dlr
from app.rules.records import EventRecord, build_event_records
from app.rules.webhook_body import items_as_json
from bench.common import scratch_database


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
                await write_records(conn, records)  # one statement, as the writer sends it
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


def main() -> None:
    parser = argparse.ArgumentParser(description="events/s one PostgreSQL takes via the writer")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--events", type=int, default=200_000, help="per run")
    parser.add_argument(
        "--lifecycle",
        action="store_true",
        help="callbacks of new messages, then the DLRs of those messages (2 connections)",
    )
    args = parser.parse_args()
    count = max(1, args.events // args.batch)
    with scratch_database("wavy_bench_capacity") as url:
        dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        if args.lifecycle:
            measure_lifecycle(dsn, count, args.batch)
            return
        print(f"{count} batches of {args.batch} new DLRs per run, records built beforehand")
        for connections in (1, 2, 4):
            batches = build_batches(count, args.batch, f"cap{connections}")
            events, took = asyncio.run(drive(dsn, connections, batches))
            print(f"  {connections} connection(s): {events / took:9,.0f} events/s", flush=True)


if __name__ == "__main__":
    main()
