"""A campaign's callbacks, DLRs and the replies to its messages, posted at once by many
clients to several workers, in random order: every request must be answered 200 (writers of
one campaign must not deadlock over its counters or its messages), and afterwards every
message's reply count and the delivery stats must equal a count from the stored rows.

    .venv/bin/python -m bench.replies                     # 4000 messages, 2 workers
    .venv/bin/python -m bench.replies --messages 1000     # CI's smoke run

Exits 1 if a request got anything but 200, PostgreSQL reported a deadlock, or a count is
wrong. Speed is printed, not checked: the client (httpx, one process) is the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from app.db.engine import normalize_database_url
from app.db.stats import rollup_differences
from bench.common import cli_webhook_key, percentiles, running_service, scratch_database

T = TypeVar("T")

SENT_AT = 1_764_000_000_000

DEADLOCKS = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
WRONG_REPLY_COUNTS = """
    SELECT count(*) FROM messages AS m
    WHERE m.reply_count <> (SELECT count(*) FROM mos WHERE mos.mt_id = m.id)
"""


def campaign_requests(messages: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """Each message's callback, its DLR and one to three replies to it, shuffled."""
    requests: list[tuple[str, dict[str, Any]]] = []
    for n in range(messages):
        message_id = f"msg-{n}"
        requests.append(
            (
                "callback",
                {
                    "id": message_id,
                    "sentStatusCode": 2,
                    "sentAt": SENT_AT,
                    "carrierName": "VIVO",
                    "campaignId": "bench",
                },
            )
        )
        requests.append(
            (
                "dlr",
                {
                    "id": message_id,
                    "sentStatusCode": 2,
                    "sentAt": SENT_AT,
                    "deliveredStatusCode": 104 if n % 10 == 0 else 4,
                    "deliveredAt": SENT_AT + 1000 + n % 60_000,
                    "carrierName": "VIVO",
                    "campaignId": "bench",
                },
            )
        )
        for reply in range(1 + n % 3):
            requests.append(
                (
                    "mo",
                    {
                        "id": f"mo-{n}-{reply}",
                        "carrierName": "VIVO",
                        "messageText": "ok",
                        "mt": {"id": message_id},
                    },
                )
            )
    random.Random(seed).shuffle(requests)
    return requests


async def post_all(
    base: str, key: str, requests: list[tuple[str, dict[str, Any]]], connections: int
) -> tuple[Counter[int], list[float]]:
    codes: Counter[int] = Counter()
    latencies_ms: list[float] = []
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base, params={"key": key}, timeout=30) as http:
            while not queue.empty():
                kind, body = queue.get_nowait()
                started = time.perf_counter()
                response = await http.post(f"/v1/webhooks/{kind}", json=body)
                latencies_ms.append((time.perf_counter() - started) * 1000)
                codes[response.status_code] += 1

    await asyncio.gather(*(client() for _ in range(connections)))
    return codes, latencies_ms


async def wait_for_counts(conn: AsyncConnection) -> tuple[int, bool]:
    """Wrong reply counts and whether the rollup matches, once the background recounts have
    had their chance (they wait for older transactions; give them 15 s)."""
    for _ in range(150):
        wrong = int((await conn.execute(text(WRONG_REPLY_COUNTS))).scalar_one())
        matches = not await rollup_differences(conn)
        if wrong == 0 and matches:
            break
        await asyncio.sleep(0.1)
    return wrong, matches


async def in_database(url: str, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    engine = create_async_engine(normalize_database_url(url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            return await work(conn)
    finally:
        await engine.dispose()


async def deadlocks_so_far(conn: AsyncConnection) -> int:
    return int((await conn.execute(text(DEADLOCKS))).scalar_one())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    requests = campaign_requests(args.messages, args.seed)
    with (
        scratch_database("wavy_bench_replies") as url,
        running_service(url, workers=args.workers) as (base, _),
    ):
        deadlocks_before = asyncio.run(in_database(url, deadlocks_so_far))
        started = time.perf_counter()
        codes, latencies_ms = asyncio.run(
            post_all(base, cli_webhook_key(url, "acme"), requests, args.connections)
        )
        elapsed = time.perf_counter() - started
        deadlocks = asyncio.run(in_database(url, deadlocks_so_far)) - deadlocks_before
        wrong, matches = asyncio.run(in_database(url, wait_for_counts))

    lat = percentiles(latencies_ms)
    print(
        f"{len(requests):,} requests ({args.messages:,} callbacks and DLRs each, the rest "
        f"replies) from {args.connections} clients to {args.workers} worker(s) in "
        f"{elapsed:.1f} s "
        f"({len(requests) / elapsed:,.0f}/s), p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms"
    )
    print(f"  answers: {dict(sorted(codes.items()))}; PostgreSQL deadlocks: {deadlocks}")
    print(f"  wrong reply counts: {wrong}; stats rollup equals a count of the rows: {matches}")
    failed = set(codes) != {200} or deadlocks or wrong or not matches
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
