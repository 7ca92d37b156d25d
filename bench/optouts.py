"""Opt-out benchmark: checking numbers against a large list, and what keyword matching costs
MO ingestion.

    .venv/bin/python -m bench.optouts             # 1,000,000 opt-outs; 3 rounds of ingestion
    .venv/bin/python -m bench.optouts --smoke     # CI: small, brief, checks the answers only

1. ``POST /v1/optouts/check`` with 1000 numbers, as a user of one sub-account, against a store
   of ``--optouts`` entries (with as many history rows) spread over three sub-accounts and the
   account-wide list. Each request holds 50 numbers that are opted out and 950 that are not.
   Answers are checked first (through httpx: exits 1 if one is wrong), then timed by wrk over
   one connection (a sender checking list after list; 500 different requests in turn), for
   numbers written as Wavy writes them (5511987654321) and as people write them at home
   ((11) 98765-4321). Printed: wrk's p50/p90/p99.
2. MO ingestion (wrk, 64 connections, one worker; one reply in 20 is "Sair", one in 50
   "voltar") with opt-outs kept from the traffic and without (WAVY_OPTOUTS_FROM_TRAFFIC),
   alternating in ABBA order, each round on the same store. Printed: replies/s of each round
   and the median ratio. Exits 1 if the rounds with matching recorded no opt-out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.db import users
from app.db.engine import normalize_database_url
from app.rules.scope import Role
from bench.common import cli_webhook_key, running_service, scratch_database

LUA = Path(__file__).with_name("mo.lua")
CHECK_LUA = Path(__file__).with_name("check.lua")
LISTS = ("acme", "globex", "initech", "")  # '' is the account-wide list
CHECKED = 1000
OPTED_OUT_PER_CHECK = 50

# Entry g: list LISTS[g % 4], number +55 (11 + g % 79) 9 dddddddd, unique for g < 10^8
# (7919 is prime to 10^8).
SEED_OPTOUTS = text(
    """
    WITH seeded AS (
        SELECT g, (ARRAY['acme', 'globex', 'initech', ''])[1 + g % 4] AS sub_account,
               '+55' || (11 + g % 79)::text || '9' || lpad((g * 7919 % 100000000)::text, 8, '0')
                   AS e164,
               now() - (g % 2592000) * interval '1 second' AS at
        FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g),
    history AS (
        INSERT INTO optout_changes (sub_account, e164, opted_out, at, source, keyword, mo_id)
        SELECT sub_account, e164, true, at, 'mo', 'SAIR', 'mo-' || g FROM seeded),
    moved AS (
        INSERT INTO optout_transitions (sub_account, at, effect)
        SELECT sub_account, at, 1 FROM seeded)
    INSERT INTO optouts (sub_account, e164, opted_out, since, source, keyword, decided_at,
                         change_id)
    SELECT sub_account, e164, true, at, 'mo', 'SAIR', at, g FROM seeded
    """
)


def seeded_number(g: int) -> str:
    """Entry g's number as Wavy writes numbers (no '+')."""
    return f"55{11 + g % 79}9{g * 7919 % 100_000_000:08d}"


def national(number: str) -> str:
    """5511987654321 as (11) 98765-4321."""
    return f"({number[2:4]}) {number[4:9]}-{number[9:]}"


async def seed(engine: AsyncEngine, count: int) -> float:
    started = time.monotonic()
    step = 250_000
    for lo in range(1, count + 1, step):
        async with engine.begin() as conn:
            await conn.execute(SEED_OPTOUTS, {"lo": lo, "hi": min(count, lo + step - 1)})
    # As autovacuum would leave them (it is off on the benchmark machine), and the seed's
    # writes flushed before anything is timed.
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        for table in ("optouts", "optout_changes", "optout_transitions"):
            await conn.execute(text(f"VACUUM ANALYZE {table}"))
        for statement in ("CHECKPOINT",):
            await conn.execute(text(statement))
    return time.monotonic() - started


def check_request(count: int, rng: random.Random, national_form: bool) -> tuple[list[str], int]:
    """1000 numbers: 50 on acme's or the account-wide list, 950 on none; the count of those
    opted out for acme."""
    numbers: list[str] = []
    opted_out = 0
    for _ in range(OPTED_OUT_PER_CHECK):
        g = rng.randrange(1, count + 1)
        g -= g % 4  # acme's entries are g % 4 == 0 ...
        g += rng.choice((0, 3))  # ... and the account-wide ones g % 4 == 3
        if not 1 <= g <= count:
            g = 3
        numbers.append(seeded_number(g))
        opted_out += 1
    while len(numbers) < CHECKED:
        # Area code 10 is no entry's (entries use 11-89).
        numbers.append(f"55109{rng.randrange(100_000_000):08d}")
    rng.shuffle(numbers)
    if national_form:
        numbers = [national(number) for number in numbers]
    return numbers, opted_out


async def verify_checks(
    base: str, headers: dict[str, str], count: int, national_form: bool
) -> None:
    """A few checks through httpx, each answer compared with what was seeded."""
    rng = random.Random(7)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        for _ in range(10):
            numbers, expected = check_request(count, rng, national_form)
            answer = await client.post("/v1/optouts/check", json={"numbers": numbers})
            answer.raise_for_status()
            found = sum(1 for result in answer.json()["results"] if result["optedOut"])
            if found != expected:
                raise SystemExit(f"a check found {found} numbers opted out, not {expected}")


def time_checks(
    base: str, headers: dict[str, str], count: int, seconds: float, national_form: bool
) -> str:
    """wrk's latency (C, one connection: a sender checking list after list), over 500
    different requests taken in turn; its summary line."""
    rng = random.Random(22)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as bodies:
        for _ in range(500):
            numbers, _ = check_request(count, rng, national_form)
            bodies.write(json.dumps({"numbers": numbers}) + "\n")
    env = {
        **os.environ,
        "WAVY_BENCH_BODIES": bodies.name,
        "WAVY_BENCH_USER": headers["UserName"],
        "WAVY_BENCH_TOKEN": headers["AuthenticationToken"],
    }
    try:
        done = subprocess.run(
            ["wrk", "-t1", "-c1", f"-d{seconds}s", "--latency", "-s", str(CHECK_LUA),
             f"{base}/v1/optouts/check"],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
    finally:
        os.unlink(bodies.name)
    if "Non-2xx" in done.stdout:
        raise SystemExit(f"some checks failed:\n{done.stdout}")
    cut = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)$", done.stdout, re.MULTILINE))
    requests = re.search(r"(\d+) requests in", done.stdout)
    return (
        f"p50 {cut.get('50')}   p90 {cut.get('90')}   p99 {cut.get('99')}   "
        f"({requests.group(1) if requests else '?'} requests)"
    )


async def measure_checks(url: str, count: int, seconds: float) -> None:
    engine = create_async_engine(normalize_database_url(url))
    took = await seed(engine, count)
    async with engine.begin() as conn:
        token = await users.add_user(
            conn, username="ana", role=Role.USER, sub_account="acme", email=None, token=None
        )
    await engine.dispose()
    headers = {"UserName": "ana", "AuthenticationToken": token}
    print(f"## check: {count:,} opt-outs stored (seeded in {took:.0f} s), 1000 numbers a request")
    with running_service(url) as (base, _):
        for national_form in (False, True):
            await verify_checks(base, headers, count, national_form)
        wavy = time_checks(base, headers, count, seconds, national_form=False)
        local = time_checks(base, headers, count, seconds, national_form=True)
    print(f"  as Wavy writes them (5511987654321)   {wavy}")
    print(f"  national form ((11) 98765-4321)      {local}")


def wrk_rate(base: str, key: str, seconds: float, run_id: str) -> float:
    """Replies acknowledged per second (wrk's requests/s; any non-2xx fails the run)."""
    env = {**os.environ, "WAVY_BENCH_RUN": run_id}
    done = subprocess.run(
        ["wrk", "-t1", "-c64", f"-d{seconds}s", "-s", str(LUA), f"{base}/v1/webhooks/mo?key={key}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    if "Non-2xx" in done.stdout:
        raise SystemExit(f"some replies were refused:\n{done.stdout}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    if found is None:
        raise SystemExit(f"wrk said:\n{done.stdout}{done.stderr}")
    return float(found.group(1))


async def count_optouts(url: str) -> int:
    engine = create_async_engine(normalize_database_url(url))
    async with engine.connect() as conn:
        found = (await conn.execute(text("SELECT count(*) FROM optout_changes"))).scalar_one()
    await engine.dispose()
    return int(found)


def measure_ingestion(url: str, rounds: int, seconds: float) -> None:
    print(f"## MO ingestion, 1 worker, 64 connections, {seconds:g} s a round")
    rates: dict[bool, list[float]] = {True: [], False: []}
    key = cli_webhook_key(url, "acme")  # the replies name acme, as a tenant's key posts them
    for n in range(rounds):
        for matching in (False, True) if n % 2 == 0 else (True, False):
            env = {"WAVY_OPTOUTS_FROM_TRAFFIC": "true" if matching else "false"}
            with running_service(url, extra_env=env) as (base, _):
                rate = wrk_rate(base, key, seconds, f"r{n}{'m' if matching else 'p'}")
            rates[matching].append(rate)
            print(f"  round {n + 1}, {'with' if matching else 'without'} matching: {rate:,.0f}/s")
    ratios = [a / b for a, b in zip(rates[True], rates[False], strict=True)]
    print(
        f"  median with/without: {statistics.median(rates[True]):,.0f} / "
        f"{statistics.median(rates[False]):,.0f} replies/s; ratio per round "
        f"{', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}"
    )
    recorded = asyncio.run(count_optouts(url))
    print(f"  opt-out changes recorded: {recorded:,}")
    if recorded == 0:
        raise SystemExit("the rounds with matching recorded no opt-out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--optouts", type=int, default=1_000_000)
    parser.add_argument("--check-seconds", type=float, default=10, help="wrk's time per form")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--smoke", action="store_true", help="CI: small and brief")
    args = parser.parse_args()
    if args.smoke:
        args.optouts, args.check_seconds, args.rounds, args.seconds = 20_000, 1, 1, 2
    with scratch_database("wavy_bench_optouts") as url:
        asyncio.run(measure_checks(url, args.optouts, args.check_seconds))
    with scratch_database("wavy_bench_optouts_mo") as url:
        measure_ingestion(url, args.rounds, args.seconds)


if __name__ == "__main__":
    main()
