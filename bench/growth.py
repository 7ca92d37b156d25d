"""Cost as the store grows: the same measurements on an empty store and on one seeded with
millions of messages (each with its DLR event) and replies, ids scattered as Wavy's UUIDs.

    .venv/bin/python -m bench.growth                                  # 10M messages, 2M MOs
    .venv/bin/python -m bench.growth --messages 20000 --mos 4000      # CI: that it works

Measured on each store: single DLRs (64 connections) and 1000-DLR arrays (8 connections)
through wrk, with the zero-missing check of bench.ingest; then, on the seeded store, a status
lookup's p99 (by id, as an admin), an admin's month of stats (`groupBy=day`), and array
ingestion while the retention purge removes the oldest day. Last, the store's size per million
messages (docs/scaling.md's sizing table).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.db.engine import normalize_database_url
from app.db.retention import purge_older_than
from app.db.stats import fold_stats_deltas
from bench.common import (
    calibration_line,
    host_line,
    key_of,
    percentiles,
    running_service,
    scratch_database,
)
from bench.ingest import ARRAY_CONNECTIONS, Result, Scenario, measure, run_wrk
from bench.read_api import message_id
from bench.stats_api import make_users

DAYS = 30
STEP = 200_000

# Messages as campaigns make them (three sub-accounts, five carriers, most delivered), ids as
# md5 UUIDs: scattered over every index keyed by id, as Wavy's are.
SEED_MESSAGES = text(
    """
    INSERT INTO messages (id, sub_account, correlation_id, destination, carrier_id, carrier_name,
        campaign_id, sent_source, sent_status_code, sent_status, sent_at,
        delivered_status_code, delivered_status, delivered_at, first_seen_at, updated_at)
    SELECT md5(g::text)::uuid::text, sub, 'corr-' || g, '5511' || lpad(g::text, 9, '0'),
        1 + g % 5, (ARRAY['VIVO','TIM','CLARO','OI','SERCOMTEL'])[1 + g % 5],
        sub || '-' || to_char(t, 'YYYYMMDD'), 2, 2, 'SENT_SUCCESS', t,
        CASE WHEN g % 10 < 8 THEN 4 ELSE 104 END,
        CASE WHEN g % 10 < 8 THEN 'DELIVERED_SUCCESS' ELSE 'NOT_DELIVERED' END,
        t + interval '7 seconds', t, t + interval '7 seconds'
    FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g,
         LATERAL (SELECT CAST(:now AS timestamptz)
                         - (g * 7919 % (CAST(:days AS int) * 86400)) * interval '1 second' AS t,
                         (ARRAY['acme','globex','initech'])[1 + g % 3] AS sub) AS x
    """
)
SEED_EVENTS = text(
    """
    INSERT INTO events (kind, message_id, sub_account, sent_status_code, delivered_status_code,
                        received_at, payload)
    SELECT 'dlr', md5(g::text)::uuid::text, (ARRAY['acme','globex','initech'])[1 + g % 3], 2,
           CASE WHEN g % 10 < 8 THEN 4 ELSE 104 END, t,
           json_build_object('id', md5(g::text)::uuid::text, 'sentStatusCode', 2)
    FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g,
         LATERAL (SELECT CAST(:now AS timestamptz)
                         - (g * 7919 % (CAST(:days AS int) * 86400)) * interval '1 second'
                         + interval '7 seconds' AS t) AS x
    """
)
SEED_MOS = text(
    """
    INSERT INTO mos (id, sub_account, campaign_alias, carrier_id, carrier_name, source,
                     short_code, message_text, received_at, mt_id, stored_at)
    SELECT 'mo-' || md5(g::text), (ARRAY['acme','globex','initech'])[1 + g % 3], 'promo',
           1 + g % 5, 'VIVO', '5516' || lpad(g::text, 9, '0'), '28128', 'reply number ' || g, t,
           md5((g * 5)::text)::uuid::text, t
    FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g,
         LATERAL (SELECT CAST(:now AS timestamptz)
                         - (g * 104729 % (CAST(:days AS int) * 86400)) * interval '1 second'
                         AS t) AS x
    """
)


async def seed(engine: AsyncEngine, messages: int, mos: int) -> float:
    """Insert in steps, each its own transaction (the stats triggers run as for any write)."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    for statement, total in ((SEED_MESSAGES, messages), (SEED_EVENTS, messages), (SEED_MOS, mos)):
        for lo in range(0, total, STEP):
            params = {"lo": lo, "hi": min(lo + STEP, total) - 1, "now": now, "days": DAYS}
            async with engine.begin() as conn:
                await conn.execute(statement, params)
            await fold_stats_deltas(engine)
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE messages, events, mos, stats_rollup"))
    return time.perf_counter() - started


def ingest(database_url: str, seconds: int) -> tuple[Result, Result]:
    single = measure(
        database_url,
        Scenario("single-1w", 1, 64, 1),
        seconds,
        ceiling=False,
        key=key_of(database_url),
        scatter=True,
    )
    array = measure(
        database_url,
        Scenario("array-1w", 1000, ARRAY_CONNECTIONS, 1),
        seconds,
        ceiling=False,
        key=key_of(database_url),
        scatter=True,
    )
    return single, array


async def reads(
    url: str, database_url: str, messages: int
) -> tuple[dict[str, float], dict[str, float]]:
    """A status lookup by id, and an admin's month of stats by day, as an admin."""
    engine = create_async_engine(normalize_database_url(database_url))
    headers = (await make_users(engine))["boss"]
    await engine.dispose()
    rng = random.Random(7)
    lookups, months = [], []
    month = {"from": (datetime.now(UTC) - timedelta(days=DAYS)).isoformat(), "groupBy": "day"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        for n in range(500):
            started = time.perf_counter()
            answer = await client.get(f"/v1/sms/status/{message_id(rng.randrange(messages))}")
            if n >= 100:  # the first 100 warm up connections and caches
                lookups.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200, answer.text
        for n in range(23):
            started = time.perf_counter()
            answer = await client.get("/v1/stats", params=month)
            if n >= 3:
                months.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200, answer.text
    return percentiles(lookups), percentiles(months)


def ingest_while_purging(database_url: str, seconds: int) -> tuple[float, dict[str, int]]:
    """Arrays through wrk while the retention purge removes the store's oldest day."""
    report: dict[str, int] = {}

    def purge() -> None:
        engine = create_async_engine(normalize_database_url(database_url))
        done = asyncio.run(purge_older_than(engine, timedelta(days=DAYS - 1)))
        report.update(done.deleted)

    scenario = Scenario("array-purge", 1000, ARRAY_CONNECTIONS, 1)
    with running_service(database_url) as (url, _process):
        time.sleep(1)
        purging = threading.Thread(target=purge)
        purging.start()
        summary, _ = run_wrk(
            url, scenario, f"purge-{time.monotonic_ns()}", seconds, key_of(database_url)
        )
        purging.join()
    events_per_s = (
        (summary["requests"] - summary["non_2xx"]) * 1000 / (summary["duration_us"] / 1e6)
    )
    return events_per_s, report


async def sizes(database_url: str) -> tuple[dict[str, int], int]:
    """Each table's size on disk (indexes and TOAST included), and the messages it holds."""
    engine = create_async_engine(normalize_database_url(database_url))
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT relname, pg_total_relation_size(oid) FROM pg_class "
                "WHERE relname IN ('messages', 'events', 'mos', 'stats_rollup') "
                "AND relkind = 'r'"
            )
        )
        found = {name: int(size) for name, size in rows}
        messages = int((await conn.execute(text("SELECT count(*) FROM messages"))).scalar_one())
    await engine.dispose()
    return found, messages


async def seeded(database_url: str, messages: int, mos: int) -> float:
    engine = create_async_engine(normalize_database_url(database_url))
    try:
        return await seed(engine, messages, mos)
    finally:
        await engine.dispose()


async def memory_settings(database_url: str) -> str:
    """The server's settings that decide how much of the indexes stays in memory."""
    engine = create_async_engine(normalize_database_url(database_url))
    try:
        async with engine.connect() as conn:
            names = ("shared_buffers", "effective_cache_size", "max_wal_size")
            values = [await conn.scalar(text(f"SHOW {name}")) for name in names]
    finally:
        await engine.dispose()
    return ", ".join(f"{name} {value}" for name, value in zip(names, values, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description="cost as the store grows")
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--mos", type=int, default=2_000_000)
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    args = parser.parse_args()
    print(host_line(), calibration_line(), sep="\n", flush=True)
    with scratch_database("wavy_bench_growth") as database_url:
        print(f"PostgreSQL: {asyncio.run(memory_settings(database_url))}", flush=True)
        empty_single, empty_array = ingest(database_url, args.seconds)
        print(
            f"empty store: single {empty_single.events_per_s:,.0f} events/s (p99 "
            f"{empty_single.p99_ms:.0f} ms), arrays {empty_array.events_per_s:,.0f} events/s; "
            f"missing {(empty_single.missing or 0) + (empty_array.missing or 0)}",
            flush=True,
        )
        took = asyncio.run(seeded(database_url, args.messages, args.mos))
        print(
            f"seeded {args.messages:,} messages with their events and {args.mos:,} replies "
            f"in {took:.0f} s",
            flush=True,
        )
        single, array = ingest(database_url, args.seconds)
        print(
            f"seeded store: single {single.events_per_s:,.0f} events/s (p99 "
            f"{single.p99_ms:.0f} ms, {single.events_per_s / empty_single.events_per_s:.2f} of "
            f"empty), arrays {array.events_per_s:,.0f} events/s "
            f"({array.events_per_s / empty_array.events_per_s:.2f} of empty); "
            f"missing {(single.missing or 0) + (array.missing or 0)}",
            flush=True,
        )
        with running_service(database_url) as (url, _process):
            lookup, month = asyncio.run(reads(url, database_url, args.messages))
        print(
            f"status lookup p50 {lookup['p50']:.1f} ms, p99 {lookup['p99']:.1f} ms; an "
            f"admin's month of stats p50 {month['p50']:.0f} ms, p99 {month['p99']:.0f} ms",
            flush=True,
        )
        during, purged = ingest_while_purging(database_url, args.seconds)
        print(
            f"arrays while the purge removed the oldest day {purged}: {during:,.0f} events/s "
            f"({during / array.events_per_s:.2f} of the seeded store's rate)",
            flush=True,
        )
        stored, count = asyncio.run(sizes(database_url))
        per_million = 1e6 / max(count, 1)
        print(
            f"size per million messages ({count:,} stored, each with its event; MOs in "
            "proportion): "
            + ", ".join(
                f"{name} {size * per_million / 2**20:,.0f} MB"
                for name, size in sorted(stored.items())
            ),
            flush=True,
        )
        if (
            (single.missing or 0)
            + (array.missing or 0)
            + (empty_single.missing or 0)
            + (empty_array.missing or 0)
        ):
            raise SystemExit("acknowledged DLRs are missing")


if __name__ == "__main__":
    main()
