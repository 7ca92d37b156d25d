"""What one PostgreSQL takes: the writer's own statements (events and statuses in one
statement per batch, as the writer sends them), driven directly with no HTTP in front, from 1,
2 and 4 concurrent connections. This is the ceiling the database puts on ingestion, whatever
the app does.

    .venv/bin/python -m bench.db_capacity                 # 200 batches of 1000 DLRs per run
    .venv/bin/python -m bench.db_capacity --batch 100
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime

import asyncpg

from app.db.writer import write_records
from app.payloads import Dlr
from app.rules.records import EventRecord, build_event_records
from app.rules.webhook_body import items_as_json
from bench.common import scratch_database


def dlr_batch(prefix: str, size: int) -> list[dict[str, object]]:
    return [
        {
            "id": f"{prefix}-{n}",
            "correlationId": f"c-{prefix}-{n}",
            "carrierId": 5,
            "carrierName": "TIM",
            "destination": "5519900001111",
            "sentStatusCode": 2,
            "sentStatus": "SENT_SUCCESS",
            "sentStatusAt": 1420732929252,
            "deliveredStatusCode": 4,
            "deliveredStatus": "DELIVERED_SUCCESS",
            "deliveredAt": 1420732954000,
            "campaignId": 1234,
        }
        for n in range(size)
    ]


def build_batches(count: int, size: int, tag: str) -> list[list[EventRecord]]:
    """Records as the service builds them, made before the clock starts: the run then times
    PostgreSQL (and the driver), not pydantic."""
    batches = []
    for n in range(count):
        raw = dlr_batch(f"{tag}-{n}", size)
        payloads = [Dlr.model_validate(item) for item in raw]
        batches.append(
            build_event_records(
                "dlr",
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


def main() -> None:
    parser = argparse.ArgumentParser(description="events/s one PostgreSQL takes via the writer")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--events", type=int, default=200_000, help="per run")
    args = parser.parse_args()
    count = max(1, args.events // args.batch)
    with scratch_database("wavy_bench_capacity") as url:
        dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        print(f"{count} batches of {args.batch} new DLRs per run, records built beforehand")
        for connections in (1, 2, 4):
            batches = build_batches(count, args.batch, f"cap{connections}")
            events, took = asyncio.run(drive(dsn, connections, batches))
            print(f"  {connections} connection(s): {events / took:9,.0f} events/s", flush=True)


if __name__ == "__main__":
    main()
