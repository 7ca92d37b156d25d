"""Stats benchmark: GET /v1/stats over 1,000,000 messages spread across 30 days.

    .venv/bin/python -m bench.stats_api                    # 1M messages, 200k MOs (≈ 3 minutes)
    .venv/bin/python -m bench.stats_api --messages 100000  # quick

The store is seeded with SQL (the rollup triggers run as for any insert), in campaigns as
they happen: each sub-account runs one campaign at a time, six hours long, over five
carriers; 95% of messages are accepted by the carrier, of those most are delivered within ten
minutes, some fail, some still wait; one in twenty gets a reply. Then `wavy-webhooks serve`
runs in its own process and every request is timed from here, over HTTP, authenticated.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime
from typing import get_args

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.db import users
from app.db.engine import normalize_database_url
from app.db.stats import fold_stats_deltas, rollup_differences
from app.rules.delivery_stats import GroupBy
from app.rules.scope import Role
from bench.common import fmt, percentiles, running_service, scratch_database
from bench.read_api import SEED_MOS

DAYS = 30

SEED_CAMPAIGN_MESSAGES = text(
    """
    INSERT INTO messages (id, sub_account, correlation_id, destination, carrier_id, carrier_name,
        campaign_id, sent_source, sent_status_code, sent_status, sent_at,
        delivered_status_code, delivered_status, delivered_at, first_seen_at, updated_at,
        reply_count)
    SELECT 'm-' || g, sub, 'corr-' || g, '5511' || lpad(g::text, 9, '0'), 1 + g % 5,
        (ARRAY['VIVO','TIM','CLARO','OI','SERCOMTEL'])[1 + g % 5],
        sub || '-' || to_char(t, 'YYYYMMDD') || '-' || (extract(hour FROM t)::int / 6),
        2, sent, CASE WHEN sent = 2 THEN 'SENT_SUCCESS' ELSE 'REJECTED_BY_CARRIER' END, t,
        delivered, CASE delivered WHEN 4 THEN 'DELIVERED_SUCCESS' WHEN 104 THEN 'NOT_DELIVERED'
                   END,
        CASE WHEN delivered IS NOT NULL THEN t + (g % 600) * interval '1 second' END,
        t, t, CASE WHEN g % 20 = 0 THEN 1 ELSE 0 END
    FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g,
         LATERAL (SELECT CAST(:now AS timestamptz)
                         - (g * 7919 % (CAST(:days AS int) * 86400)) * interval '1 second' AS t,
                         (ARRAY['acme','globex','initech'])[1 + g % 3] AS sub,
                         CASE WHEN g % 20 = 7 THEN 103 ELSE 2 END AS sent,
                         CASE WHEN g % 20 = 7 OR g % 5 >= 3 AND g % 11 = 0 THEN NULL
                              WHEN g % 17 = 0 THEN 104 ELSE 4 END AS delivered) AS x
    """
)


async def seed(engine: AsyncEngine, messages: int, mos: int) -> float:
    started = time.perf_counter()
    now = datetime.now(UTC)
    step = 100_000
    for lo in range(0, messages, step):
        async with engine.begin() as conn:
            params = {"lo": lo, "hi": min(lo + step, messages) - 1, "now": now, "days": DAYS}
            await conn.execute(SEED_CAMPAIGN_MESSAGES, params)
    for lo in range(0, mos, step):
        async with engine.begin() as conn:
            params = {"lo": lo, "hi": min(lo + step, mos) - 1, "now": now, "days": DAYS}
            await conn.execute(SEED_MOS, params)
    await fold_stats_deltas(engine)  # what the service does within seconds of the inserts
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE messages, mos, stats_rollup, stats_deltas"))
    return time.perf_counter() - started


async def make_users(engine: AsyncEngine) -> dict[str, dict[str, str]]:
    headers = {}
    async with engine.begin() as conn:
        for name, role, sub in (("boss", Role.ADMIN, None), ("ana", Role.USER, "acme")):
            token = await users.add_user(
                conn, username=name, role=role, sub_account=sub, email=None, token=None
            )
            headers[name] = {"UserName": name, "AuthenticationToken": token}
    return headers


async def time_requests(
    base: str, headers: dict[str, str], params: dict[str, str], rounds: int
) -> tuple[dict[str, float], dict[str, object]]:
    samples = []
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        for _ in range(3):  # warm-up
            await client.get("/v1/stats", params=params, headers=headers)
        for _ in range(rounds):
            started = time.perf_counter()
            response = await client.get("/v1/stats", params=params, headers=headers)
            samples.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
    return percentiles(samples), response.json()


async def prepare(
    url: str, messages: int, mos: int
) -> tuple[float, int, dict[str, dict[str, str]]]:
    engine = create_async_engine(normalize_database_url(url))
    try:
        took = await seed(engine, messages, mos)
        async with engine.connect() as conn:
            rollup_rows = (await conn.execute(text("SELECT count(*) FROM stats_rollup"))).scalar()
        return took, int(rollup_rows or 0), await make_users(engine)
    finally:
        await engine.dispose()


async def time_verify(url: str) -> tuple[float, int]:
    """What ``wavy-webhooks stats verify`` costs over the seeded store, and what it found."""
    engine = create_async_engine(normalize_database_url(url))
    try:
        async with engine.connect() as conn:
            started = time.perf_counter()
            differences = await rollup_differences(conn)
            return time.perf_counter() - started, len(differences)
    finally:
        await engine.dispose()


def run(messages: int, mos: int, rounds: int) -> None:
    with scratch_database("wavy_bench_stats") as url:
        took, rollup_rows, headers = asyncio.run(prepare(url, messages, mos))
        print(f"seeded {messages:,} messages and {mos:,} MOs over {DAYS} days in {took:.0f} s")
        print(f"stats_rollup rows: {rollup_rows:,}", flush=True)
        took, wrong = asyncio.run(time_verify(url))
        print(f"stats verify: {wrong} count(s) differ from the rows, in {took:.1f} s\n", flush=True)
        if wrong:
            raise SystemExit("the rollup does not equal a count of the rows")
        # The whole month (and a day before it): every message is in the window.
        start = datetime.now(UTC).timestamp() - (DAYS + 1) * 86400
        window = {"from": datetime.fromtimestamp(start, UTC).isoformat()}
        with running_service(url) as (base, _process):
            for who in ("boss", "ana"):
                for group_by in get_args(GroupBy):
                    stats, body = asyncio.run(
                        time_requests(base, headers[who], {**window, "groupBy": group_by}, rounds)
                    )
                    groups = len(body["groups"])  # type: ignore[arg-type]
                    total = body["totals"]["messages"]  # type: ignore[index]
                    label = f"{who:4} groupBy={group_by:10}"
                    print(f"  {label} {groups:5} groups {total:>9,} msgs  {fmt(stats)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="GET /v1/stats over a month of messages")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--mos", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    run(args.messages, args.mos, args.rounds)


if __name__ == "__main__":
    main()
