"""Reconciliation's overdue scan on a large store (``python -m bench.reconcile``; ``--smoke``
for CI).

The store holds ``--messages`` MTs sent through the service over the last two days, each with
its status row: 1 in 100 never got a callback, 1 in 50 of the rest no DLR, 1 in 10 from Oi or
Sercomtel (no DLR awaited), and 1 in 100 already in the overdue table. A pass, as each worker
runs it every second:

1. looks at the MTs that passed each age since the previous pass (``--per-pass`` of them per
   age, what a second of sending at Wavy's 700/s brings) and adds the overdue among them;
2. gives up what is past the window;
3. claims what is due (a batch of 100), as the worker whose turn it is.

Each round runs one pass in a transaction rolled back afterwards, from a random place in the
store (so most of what it reads is not in PostgreSQL's cache, unlike the MTs of a quarter of
an hour ago that a live pass reads): p50 and p99 of a pass over ``--rounds`` rounds after 5
not counted (the first ones prepare the statements), and of the dashboard's counts.
The target (issue #35): a pass under 50 ms at 1,000,000 messages."""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.db import reconcile as queries
from app.db.engine import normalize_database_url
from app.db.reconcile import Ages
from app.main import tune_garbage_collector
from app.rules.reconcile import ASK_BATCH, CLAIM_LEASE
from app.rules.scope import Scope
from bench.common import calibration_line, host_line, scratch_database

AGES = Ages(
    callback_after=timedelta(seconds=900),
    dlr_after=timedelta(seconds=14_400),
    window=timedelta(days=3),
    no_dlr_carriers=("OI", "SERCOMTEL"),
)
SPAN = timedelta(days=2)  # the store's MTs were sent over this span, evenly
WARM_UP = 5  # passes not counted

SEED = text(
    """
    WITH seeded AS (
        SELECT g, 'mt' || g AS mt_id, 'm' || g AS message_id,
               (ARRAY['acme', 'globex', 'initech'])[1 + g % 3] AS sub_account,
               '5511' || lpad(g::text, 9, '0') AS destination,
               CAST(:start AS timestamptz) + g * CAST(:step AS interval) AS at
        FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g),
    sent AS (
        INSERT INTO mts (id, message_id, sub_account, username, destination, outcome,
                         wavy_status, submitted_at)
        SELECT mt_id, message_id, sub_account, 'bench', destination, 'sent', 200, at
        FROM seeded)
    INSERT INTO messages (id, sub_account, destination, carrier_name, sent_source,
                          sent_status_code, sent_at, delivered_status_code, delivered_at,
                          first_seen_at, updated_at)
    SELECT message_id, sub_account, destination,
           CASE WHEN g % 10 = 0 THEN 'OI' ELSE 'VIVO' END,
           CASE WHEN g % 100 = 1 THEN 0 ELSE 2 END,
           CASE WHEN g % 100 = 1 THEN NULL ELSE 2 END,
           CASE WHEN g % 100 = 1 THEN NULL ELSE at + interval '2 seconds' END,
           CASE WHEN g % 100 = 1 OR g % 50 = 2 OR g % 10 = 0 THEN NULL ELSE 4 END,
           CASE WHEN g % 100 = 1 OR g % 50 = 2 OR g % 10 = 0 THEN NULL
                ELSE at + interval '9 seconds' END,
           at, at
    FROM seeded
    """
)
OVERDUE_SEED = text(
    "INSERT INTO overdue (mt_id, kind, message_id, sub_account, sent_at, waiting_since, checks, "
    "last_checked_at, next_check_at) "
    "SELECT id, 'callback', message_id, sub_account, submitted_at, submitted_at, 3, now(), "
    "now() + interval '1 hour' FROM mts "
    "WHERE id LIKE '%01' ON CONFLICT DO NOTHING"
)


async def seed(engine: AsyncEngine, messages: int, now: datetime) -> timedelta:
    """The store; returns the time between two MTs."""
    step = SPAN / messages
    chunk = 100_000
    for lo in range(1, messages + 1, chunk):
        hi = min(lo + chunk - 1, messages)
        async with engine.begin() as conn:
            await conn.execute(
                SEED, {"lo": lo, "hi": hi, "start": now - SPAN - timedelta(hours=1), "step": step}
            )
    async with engine.begin() as conn:
        await conn.execute(OVERDUE_SEED)
    # As a store that has been running: vacuumed and analysed, its writes checkpointed (not
    # a million fresh rows that autovacuum and the checkpointer would be busy with meanwhile).
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        for table in ("mts", "messages", "overdue"):
            await conn.execute(text(f"VACUUM ANALYZE {table}"))
        await conn.execute(text("CHECKPOINT"))
    return step


async def one_pass(engine: AsyncEngine, now: datetime, behind: timedelta) -> tuple[float, int]:
    """A pass whose marks are ``behind`` each age; seconds it took, and MTs it found overdue.
    Rolled back: every round starts from the same store."""
    async with engine.connect() as conn:
        transaction = await conn.begin()
        await conn.execute(
            text(
                "UPDATE reconcile_state SET callback_mark_at = :c, callback_mark_id = '', "
                "dlr_mark_at = :d, dlr_mark_id = '', next_ask_at = 'epoch' WHERE id = 1"
            ),
            {"c": now - AGES.callback_after - behind, "d": now - AGES.dlr_after - behind},
        )
        started = time.perf_counter()
        added = await queries.examine(conn, now, AGES)
        await queries.give_up(conn, now, AGES.window)
        if await queries.take_turn(conn, now, 1.0):
            await queries.claim_due(conn, now, ASK_BATCH, CLAIM_LEASE)
        took = time.perf_counter() - started
        await transaction.rollback()
        return took, added


async def measure(url: str, messages: int, per_pass: int, rounds: int) -> None:
    engine = create_async_engine(normalize_database_url(url))
    try:
        now = datetime.now(UTC)
        started = time.perf_counter()
        step = await seed(engine, messages, now)
        tune_garbage_collector()  # as in a worker of the service, which runs the passes
        seeded_s = time.perf_counter() - started
        print(f"seeded {messages:,} MTs with their statuses in {seeded_s:.0f} s")
        behind = step * per_pass
        randomness = random.Random(7)
        passes, found = [], []
        # The first passes prepare the statements on the connection (once per worker).
        for number in range(WARM_UP + rounds):
            # Somewhere in the store's last day and a half, so both ages have MTs to look at.
            moment = now - timedelta(seconds=randomness.uniform(0, SPAN.total_seconds() * 0.6))
            took, added = await one_pass(engine, moment, behind)
            if number >= WARM_UP:
                passes.append(took * 1000)
                found.append(added)
        counts = []
        async with engine.connect() as conn:
            for _ in range(rounds):
                started = time.perf_counter()
                await queries.counts(conn, Scope("acme"), now, AGES, now - timedelta(hours=12))
                counts.append((time.perf_counter() - started) * 1000)
            overdue = await conn.scalar(text("SELECT count(*) FROM overdue"))
    finally:
        await engine.dispose()
    cut = statistics.quantiles(passes, n=100, method="inclusive")
    cut_counts = statistics.quantiles(counts, n=100, method="inclusive")
    print(
        f"a pass over {messages:,} MTs ({per_pass} per age per pass, {overdue:,} overdue "
        f"rows): p50 {cut[49]:.1f} ms, p99 {cut[98]:.1f} ms; overdue found per pass "
        f"{statistics.mean(found):.1f}"
    )
    print(
        f"the counts (a sub-account's, as the dashboard asks): p50 {cut_counts[49]:.1f} ms, "
        f"p99 {cut_counts[98]:.1f} ms"
    )
    if sum(found) == 0:
        raise SystemExit("no pass found anything overdue: the seed or the marks are wrong")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--per-pass", type=int, default=700)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--smoke", action="store_true", help="a small store, a few rounds")
    args = parser.parse_args()
    if args.smoke:
        args.messages, args.rounds = 20_000, 10
    print(host_line())
    print(calibration_line())
    with scratch_database("wavy_bench_reconcile") as url:
        asyncio.run(measure(url, args.messages, args.per_pass, args.rounds))


if __name__ == "__main__":
    main()
