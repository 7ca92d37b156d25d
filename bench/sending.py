"""The send API as deployed, against a stand-in of Wavy that answers at once, each server in a
session of its own (``python -m bench.sending``; ``--smoke`` for CI):

1. single sends with wrk (one thread, 64 connections): sends/s with one worker as fast as it
   goes; then the p99 the service adds over calling the stand-in directly at 64 connections
   sending at Wavy's rate (each pausing a random 0 to 182 ms: about 700 sends/s offered, the
   most the service passes on, WAVY_SEND_MAX_RPS), in the same run; and at 4 connections;
2. bulks of 1000 (four at a time): messages/s;
3. the opt-out check of a send's destinations against 1,000,000 numbers on the lists: time per
   message (the query a bulk of 1000 makes).

Every answer must be 200, and every MT answered must be recorded. WAVY_SEND_MAX_RPS is set out
of the way (the limit is Wavy's, not the service's capacity)."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.db import optouts as optout_queries
from app.db import users
from app.db.engine import normalize_database_url
from app.rules.scope import Role
from bench.common import (
    calibration_line,
    free_port,
    host_line,
    running_service,
    scratch_database,
    stop,
    wait_until_answering,
)
from bench.optouts import seed, seeded_number

LUA = Path(__file__).with_name("send.lua")
USER = "bench-sender"


def start_stand_in() -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.wavy_fast", str(port)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    wait_until_answering(f"{base}/", process, "the stand-in of Wavy")
    return base, process


async def add_sender(url: str) -> str:
    engine = create_async_engine(normalize_database_url(url))
    try:
        async with engine.begin() as conn:
            return await users.add_user(
                conn, username=USER, role=Role.USER, sub_account="acme", email=None, token=None
            )
    finally:
        await engine.dispose()


# 64 connections each pausing this long on average offer about 700 sends/s: Wavy's rate.
AT_WAVYS_RATE_PAUSE_MS = 91


def wrk(
    url: str, token: str, seconds: float, connections: int = 64, pause_ms: int = 0
) -> tuple[float, float, int]:
    """Requests/s, p99 in ms, and non-2xx answers."""
    env = {
        **os.environ,
        "WAVY_BENCH_USER": USER,
        "WAVY_BENCH_TOKEN": token,
        "WAVY_BENCH_PAUSE_MS": str(pause_ms),
    }
    done = subprocess.run(
        [
            *("wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"),
            *("-s", str(LUA), url),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    )
    rate = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", done.stdout)
    if rate is None or p99 is None:
        raise SystemExit(f"wrk said:\n{done.stdout}{done.stderr}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", done.stdout)
    return float(rate.group(1)), float(p99.group(1)) * scale, int(errors.group(1)) if errors else 0


async def bulks(base: str, token: str, seconds: float) -> tuple[float, int]:
    """Messages/s of bulks of 1000, four at a time; and how many were answered."""
    headers = {"username": USER, "authenticationtoken": token}
    answered = 0
    deadline = time.monotonic() + seconds
    started = time.monotonic()

    async def sender(session: aiohttp.ClientSession, lane: int) -> None:
        nonlocal answered
        n = 0
        while time.monotonic() < deadline:
            n += 1
            body = {
                "messages": [
                    {
                        "destination": f"55319{lane}{n % 1000:03d}{i:04d}",
                        "correlationId": f"{lane}-{n}-{i}",
                    }
                    for i in range(1000)
                ],
                "defaultValues": {"messageText": "Promoção de hoje"},
            }
            async with session.post(
                f"{base}/v1/send-bulk-sms", json=body, headers=headers
            ) as answer:
                if answer.status != 200:
                    raise SystemExit(f"a bulk was answered {answer.status}: {await answer.text()}")
                answered += len((await answer.json())["messages"])

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(sender(session, lane) for lane in range(4)))
    return answered / (time.monotonic() - started), answered


async def check_per_message(url: str, entries: int, rounds: int) -> tuple[float, float]:
    """p50 and p99, in microseconds per message, of a bulk's opt-out check (1000
    destinations, 50 of them on acme's or the account-wide list) over ``entries`` numbers."""
    engine = create_async_engine(normalize_database_url(url))
    try:
        await seed(engine, entries)
        timings = []
        for r in range(rounds):
            numbers = ["+" + seeded_number(g) for g in range(r * 20 + 1, r * 20 + 1 + 50)]
            numbers += [f"+5531988{r:03d}{i:04d}" for i in range(950)]
            async with engine.connect() as conn:
                started = time.perf_counter()
                await optout_queries.opted_out_entries(conn, ["acme", ""], sorted(numbers))
                timings.append((time.perf_counter() - started) / len(numbers) * 1e6)
        cut = statistics.quantiles(timings, n=100, method="inclusive")
        return cut[49], cut[98]
    finally:
        await engine.dispose()


async def recorded(url: str) -> tuple[int, int]:
    """The single MTs recorded (send.lua's correlation ids start with "b-"), and the bulks'."""
    engine = create_async_engine(normalize_database_url(url))
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT count(*) FILTER (WHERE correlation_id LIKE 'b-%'), "
                        "count(*) FILTER (WHERE correlation_id NOT LIKE 'b-%') FROM mts"
                    )
                )
            ).one()
            return int(row[0]), int(row[1])
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--smoke", action="store_true", help="a few seconds, a small list")
    args = parser.parse_args()
    seconds, entries = (2.0, 20_000) if args.smoke else (args.seconds, args.entries)
    print(host_line())
    print(calibration_line())
    stand_in, stand_in_process = start_stand_in()
    try:
        with scratch_database("wavy_bench_send") as url:
            token = asyncio.run(add_sender(url))
            env = {"WAVY_API_URL": stand_in, "WAVY_SEND_MAX_RPS": "100000", "WAVY_FORWARDER": "off"}
            with running_service(url, extra_env=env) as (base, _):
                direct_rate, direct_p99, _ = wrk(f"{stand_in}/v1/send-sms", token, seconds)
                rate, p99, refused = wrk(f"{base}/v1/send-sms", token, seconds)
                paced = AT_WAVYS_RATE_PAUSE_MS
                paced_direct = wrk(f"{stand_in}/v1/send-sms", token, seconds, pause_ms=paced)
                paced_service = wrk(f"{base}/v1/send-sms", token, seconds, pause_ms=paced)
                refused += paced_service[2]
                # Below saturation: what the service adds when it is not queueing.
                few_direct = wrk(f"{stand_in}/v1/send-sms", token, seconds, connections=4)
                few = wrk(f"{base}/v1/send-sms", token, seconds, connections=4)
                refused += few[2]
                bulk_rate, bulk_answered = asyncio.run(bulks(base, token, seconds))
            singles, in_bulks = asyncio.run(recorded(url))
            check_p50, check_p99 = asyncio.run(
                check_per_message(url, entries, 20 if args.smoke else 100)
            )
    finally:
        stop(stand_in_process, timeout_s=10)
    print("single sends, 1 worker, 64 connections, as fast as they go:")
    print(f"  the stand-in alone  {direct_rate:9,.0f} sends/s  p99 {direct_p99:7.2f} ms")
    added = p99 - direct_p99
    print(f"  through the service {rate:9,.0f} sends/s  p99 {p99:7.2f} ms  (adds {added:.2f} ms)")
    print("single sends, 1 worker, 64 connections at about Wavy's rate (700/s offered):")
    print(f"  the stand-in alone  {paced_direct[0]:9,.0f} sends/s  p99 {paced_direct[1]:7.2f} ms")
    print(
        f"  through the service {paced_service[0]:9,.0f} sends/s  p99 {paced_service[1]:7.2f} ms  "
        f"(adds {paced_service[1] - paced_direct[1]:.2f} ms)"
    )
    print("single sends, 1 worker, 4 connections:")
    print(f"  the stand-in alone  {few_direct[0]:9,.0f} sends/s  p99 {few_direct[1]:7.2f} ms")
    print(
        f"  through the service {few[0]:9,.0f} sends/s  p99 {few[1]:7.2f} ms  "
        f"(adds {few[1] - few_direct[1]:.2f} ms)"
    )
    print(f"bulks of 1000, four at a time: {bulk_rate:,.0f} messages/s")
    print(
        f"opt-out check of a bulk's destinations, {entries:,} numbers on the lists: "
        f"p50 {check_p50:.2f} us, p99 {check_p99:.2f} us per message"
    )
    print(f"recorded: {singles:,} single MTs, {in_bulks:,} of bulks ({bulk_answered:,} answered)")
    if refused:
        raise SystemExit(f"{refused} single sends were not answered 200")
    if in_bulks != bulk_answered:
        raise SystemExit("some bulk MTs were answered and not recorded")


if __name__ == "__main__":
    main()
