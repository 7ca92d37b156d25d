"""Read-API benchmark: seed a store, then time Wavy-style lookups against the running service.

    .venv/bin/python -m bench.read_api                 # 100k then 1M messages (the issue's size)
    .venv/bin/python -m bench.read_api --sizes 20000   # quick

For each size it prints p50/p99 of: a status lookup by id (GET /v1/sms/status/{id}), a
1000-id search (POST /v1/sms/status/search), and a 1000-MO page of /v1/sms/receive/search, and
the query plans, so it is visible that the lookups stay index scans as the tables grow. Then
it downloads the CSV export of every status (GET /v1/sms/status/export, as an admin) and
prints its rows/s and the service's largest RSS meanwhile: a download of the whole store must
stream, not gather.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.db import users
from app.db.engine import normalize_database_url
from app.db.stats import fold_stats_deltas
from app.rules.scope import Role
from bench.common import fmt, percentiles, running_service, scratch_database
from bench.ingest import RssWatcher

DAYS = 30
SUBS = ("acme", "globex", "initech")

SEED_MESSAGES = text(
    """
    INSERT INTO messages (id, sub_account, correlation_id, destination, carrier_id, carrier_name,
        campaign_id, sent_source, sent_status_code, sent_status, sent_at,
        delivered_status_code, delivered_status, delivered_at, first_seen_at, updated_at)
    SELECT md5(g::text)::uuid::text, (ARRAY['acme','globex','initech'])[1 + g % 3],
        'corr-' || g, '5511' || lpad((g % 1000000000)::text, 9, '0'), 1 + g % 5,
        (ARRAY['VIVO','TIM','CLARO','OI','NEXTEL'])[1 + g % 5], (g % 40)::text, 2, 2,
        'SENT_SUCCESS', t, CASE WHEN g % 10 < 8 THEN 4 ELSE 104 END,
        CASE WHEN g % 10 < 8 THEN 'DELIVERED_SUCCESS' ELSE 'NOT_DELIVERED' END,
        t + interval '7 seconds', t, t + interval '7 seconds'
    FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g,
         LATERAL (SELECT CAST(:now AS timestamptz)
                         - (g * 7919 % (CAST(:days AS int) * 86400)) * interval '1 second'
                         AS t) AS x
    """
)
SEED_EVENTS = text(
    """
    INSERT INTO events (kind, message_id, sub_account, sent_status_code, delivered_status_code,
                        received_at, payload)
    SELECT 'dlr', id, sub_account, 2, delivered_status_code, updated_at,
           jsonb_build_object('id', id, 'correlationId', correlation_id,
                              'sentStatusCode', 2, 'deliveredStatusCode', delivered_status_code,
                              'deliveredAt', (extract(epoch FROM delivered_at) * 1000)::bigint)
    FROM messages WHERE id = ANY(
        SELECT md5(g::text)::uuid::text
        FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g)
    """
)
SEED_MOS = text(
    """
    INSERT INTO mos (id, sub_account, campaign_alias, carrier_id, carrier_name, source,
                     short_code, message_text, received_at, mt_id, stored_at)
    SELECT 'mo-' || md5(g::text), (ARRAY['acme','globex','initech'])[1 + g % 3], 'promo',
           1 + g % 5, 'VIVO', '5516' || lpad(g::text, 9, '0'), '28128', 'reply number ' || g,
           CAST(:now AS timestamptz)
               - (g * 104729 % (CAST(:days AS int) * 86400)) * interval '1 second',
           md5((g * 5)::text)::uuid::text, now()
    FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g
    """
)


async def seed(engine: AsyncEngine, messages: tuple[int, int], mos: tuple[int, int]) -> float:
    started = time.perf_counter()
    now = datetime.now(UTC)
    step = 100_000
    async with engine.begin() as conn:
        for lo in range(messages[0], messages[1], step):
            hi = min(lo + step - 1, messages[1] - 1)
            params = {"lo": lo, "hi": hi, "now": now, "days": DAYS}
            await conn.execute(SEED_MESSAGES, params)
            await conn.execute(SEED_EVENTS, {"lo": lo, "hi": hi})
        for lo in range(mos[0], mos[1], step):
            hi = min(lo + step - 1, mos[1] - 1)
            await conn.execute(SEED_MOS, {"lo": lo, "hi": hi, "now": now, "days": DAYS})
    # What a running service folds within seconds of the inserts: left to the service, the
    # fold of a million seeded rows would compete with the first timed requests.
    await fold_stats_deltas(engine)
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE messages, events, mos, stats_rollup"))
    return time.perf_counter() - started


def message_id(g: int) -> str:
    import hashlib
    import uuid

    return str(uuid.UUID(hashlib.md5(str(g).encode()).hexdigest()))  # noqa: S324


async def timed(client: httpx.AsyncClient, method: str, url: str, **kwargs: object) -> float:
    started = time.perf_counter()
    response = await client.request(method, url, **kwargs)  # type: ignore[arg-type]
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{method} {url}: {response.status_code} {response.text[:200]}")
    return elapsed


async def measure(
    base: str, admin: dict[str, str], user: dict[str, str], size: int, rng: random.Random
) -> dict[str, dict[str, float]]:
    results: dict[str, list[float]] = {
        "lookup": [],
        "search": [],
        "receive_user": [],
        "receive_admin": [],
        "receive_keyword": [],
    }
    now = datetime.now(UTC)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for _ in range(200):  # warm-up: connections, caches, prepared statements
            await client.get(f"/v1/sms/status/{message_id(rng.randrange(size))}", headers=admin)
        for _ in range(2000):
            results["lookup"].append(
                await timed(
                    client,
                    "GET",
                    f"/v1/sms/status/{message_id(rng.randrange(size))}",
                    headers=admin,
                )
            )
        for _ in range(100):
            ids = [message_id(rng.randrange(size)) for _ in range(1000)]
            results["search"].append(
                await timed(
                    client, "POST", "/v1/sms/status/search", headers=admin, json={"ids": ids}
                )
            )
        for who, headers in (("receive_user", user), ("receive_admin", admin)):
            for _ in range(100):
                start = now - timedelta(days=rng.uniform(1, DAYS - 1))
                params = {
                    "start": start.isoformat(),
                    "end": (start + timedelta(days=1)).isoformat(),
                    "limit": 1000,
                }
                results[who].append(
                    await timed(
                        client, "GET", "/v1/sms/receive/search", headers=headers, params=params
                    )
                )
        for _ in range(50):
            # A keyword no seeded reply holds: every reply of the user's default window (five
            # days) is read to find that out, the dearest keyword search there is.
            params = {"text": "SAIR", "limit": 1000}
            results["receive_keyword"].append(
                await timed(client, "GET", "/v1/sms/receive/search", headers=user, params=params)
            )
    return {name: percentiles(samples) for name, samples in results.items()}


async def export_everything(base: str, admin: dict[str, str]) -> tuple[int, float]:
    """Rows of the admin's CSV export of every status (header excluded), and the seconds it
    took, read as it streams."""
    started = time.perf_counter()
    lines = 0
    async with (
        httpx.AsyncClient(base_url=base, timeout=60) as client,
        client.stream("GET", "/v1/sms/status/export", headers=admin) as response,
    ):
        response.raise_for_status()
        async for chunk in response.aiter_bytes():
            lines += chunk.count(b"\n")  # not CRLF: a chunk may end between the two
    return lines - 1, time.perf_counter() - started


PLANS = {
    "lookup by id": "SELECT * FROM messages WHERE id = '{id}'",
    "history of one message": "SELECT * FROM events WHERE message_id = '{id}' AND kind <> 'mo' "
    "ORDER BY received_at, id",
    "replies to one message": "SELECT * FROM mos WHERE mt_id = '{id}' ORDER BY received_at, seq",
    "1000-id search": "SELECT * FROM messages WHERE id = ANY(ARRAY[{ids}]) "
    "ORDER BY first_seen_at, id",
    "receive/search page (user)": (
        "SELECT * FROM mos WHERE received_at >= now() - interval '3 days' "
        "AND received_at <= now() - interval '2 days' AND sub_account = 'acme' "
        "ORDER BY received_at, seq LIMIT 1001"
    ),
}


async def show_plans(engine: AsyncEngine, size: int, rng: random.Random) -> None:
    ids = ", ".join(f"'{message_id(rng.randrange(size))}'" for _ in range(1000))
    async with engine.connect() as conn:
        for name, sql in PLANS.items():
            plan = await conn.execute(
                text(
                    "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) "
                    + sql.format(id=message_id(rng.randrange(size)), ids=ids)
                )
            )
            lines = [row[0] for row in plan]
            print(f"  plan, {name}:")
            for line in lines:
                print(f"      {line[:150]}{'…' if len(line) > 150 else ''}")


async def main_async(url: str, sizes: list[int]) -> None:
    rng = random.Random(7)
    engine = create_async_engine(normalize_database_url(url))
    async with engine.begin() as conn:
        admin_token = await users.add_user(
            conn, username="boss", role=Role.ADMIN, sub_account=None, email=None, token=None
        )
        user_token = await users.add_user(
            conn, username="ana", role=Role.USER, sub_account="acme", email=None, token=None
        )
    admin = {"UserName": "boss", "AuthenticationToken": admin_token}
    user = {"UserName": "ana", "AuthenticationToken": user_token}
    seeded = 0
    for size in sizes:
        mo_count = size // 5
        took = await seed(engine, (seeded, size), (seeded // 5, mo_count))
        seeded = size
        print(
            f"\n## {size:,} messages (with {size:,} events) and {mo_count:,} MOs "
            f"(seeded in {took:.0f} s)"
        )
        with running_service(url) as (base, process):
            stats = await measure(base, admin, user, size, rng)
            with RssWatcher(process.pid) as rss:
                rows, seconds = await export_everything(base, admin)
        print(f"  GET  /v1/sms/status/{{id}}            {fmt(stats['lookup'])}")
        print(f"  POST /v1/sms/status/search (1000 ids) {fmt(stats['search'])}")
        print(f"  GET  /v1/sms/receive/search, user     {fmt(stats['receive_user'])}")
        print(f"  GET  /v1/sms/receive/search, admin    {fmt(stats['receive_admin'])}")
        print(f"  GET  /v1/sms/receive/search, keyword  {fmt(stats['receive_keyword'])}")
        print(
            f"  GET  /v1/sms/status/export (all, CSV)  {rows:,} rows in {seconds:.1f} s "
            f"({rows / seconds:,.0f} rows/s), service max RSS {rss.max_rss / 2**20:.0f} MB"
        )
        if rows != size:
            raise SystemExit(f"the export held {rows:,} rows, the store {size:,}")
        await show_plans(engine, size, rng)
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[100_000, 1_000_000],
        help="message counts to measure at, ascending (MOs are a fifth)",
    )
    sizes = parser.parse_args().sizes
    with scratch_database("wavy_bench_read") as url:
        asyncio.run(main_async(url, sizes))


if __name__ == "__main__":
    main()
