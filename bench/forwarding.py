"""Forwarding benchmark: deliveries to a local endpoint (bench.receiver, its own process).

    .venv/bin/python -m bench.forwarding            # the full run (about 6 minutes)
    .venv/bin/python -m bench.forwarding --smoke    # a few seconds; CI checks nothing is lost

1. Throughput: a backlog of DLRs is stored while the endpoint is disabled; the endpoint is
   enabled and the time until the last delivery arrives gives deliveries/s (an endpoint that
   answers 200 at once, nothing else running), with 1 and 2 workers.
2. Latency: single DLRs posted at a steady rate; the time from each change's stored time
   (its ``timestamp``) to its arrival at the endpoint, p50 and p99.
3. Ingestion beside forwarding: single DLRs from wrk (64 connections, 1 worker) with no
   endpoint, with one healthy endpoint and with one that never answers, in turn, three
   times; the ratio of each median to the median without an endpoint. With a healthy
   endpoint it also says how long after the load its last delivery arrived (the forwarder
   runs at a lower CPU priority: under a load that fills the CPU it falls behind).

Every run checks that each stored change arrived once: no message missing, no webhook id
twice (no fault is struck here; bench.failures strikes them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.db.endpoints import add_endpoint
from app.db.engine import normalize_database_url
from bench.common import (
    free_port,
    key_of,
    running_service,
    scratch_database,
    stop,
    wait_until_answering,
)
from bench.ingest import Scenario, acked_request_count, count_missing, run_wrk

# Concurrent senders of the steady-rate run: enough that a slow answer delays no other.
STEADY_SENDERS = 32
# The service as a benchmark runs it: endpoints on 127.0.0.1 allowed.
FORWARD_ENV = {"WAVY_FORWARD_ALLOW_PRIVATE": "true"}


@contextmanager
def receiver(mode: str = "ok") -> Iterator[str]:
    """bench.receiver in its own process; yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.receiver", "--port", str(port), "--mode", mode],
        start_new_session=True,  # as a deployed endpoint runs
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{url}/stats", process, "bench.receiver")
        yield url
    finally:
        stop(process, timeout_s=5)


def receiver_stats(url: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{url}/stats", timeout=10).json()
    return stats


async def _sql(database_url: str, statement: str, **params: Any) -> None:
    engine = create_async_engine(normalize_database_url(database_url))
    try:
        async with engine.begin() as conn:
            await conn.execute(text(statement), params)
    finally:
        await engine.dispose()


async def _add_endpoint(database_url: str, url: str) -> int:
    engine = create_async_engine(normalize_database_url(database_url))
    try:
        async with engine.begin() as conn:
            endpoint_id, _ = await add_endpoint(
                conn,
                url=f"{url}/hooks",
                sub_account=None,
                events=["status.updated", "mo.received"],
                created_by="bench",
            )
    finally:
        await engine.dispose()
    return endpoint_id


def new_endpoint(database_url: str, url: str, *, disabled: bool = False) -> int:
    """Every earlier endpoint removed; a new one to ``url``."""
    asyncio.run(_sql(database_url, "DELETE FROM endpoints"))
    endpoint_id = asyncio.run(_add_endpoint(database_url, url))
    if disabled:
        set_disabled(database_url, endpoint_id, True)
    return endpoint_id


def set_disabled(database_url: str, endpoint_id: int, disabled: bool) -> None:
    asyncio.run(
        _sql(
            database_url,
            "UPDATE endpoints SET disabled_at = CASE WHEN :off THEN now() END, "
            "disabled_reason = CASE WHEN :off THEN 'manual' END WHERE id = :id",
            off=disabled,
            id=endpoint_id,
        )
    )


def store_dlrs(service: str, key: str, run_id: str, count: int, per_request: int = 1000) -> None:
    with httpx.Client(base_url=service, params={"key": key}, timeout=60) as client:
        for first in range(0, count, per_request):
            batch = [
                {"id": f"{run_id}-{n}", "sentStatusCode": 2, "deliveredStatusCode": 4}
                for n in range(first, min(count, first + per_request))
            ]
            answer = client.post("/v1/webhooks/dlr", json=batch)
            answer.raise_for_status()


def wait_for_deliveries(url: str, count: int, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        stats = receiver_stats(url)
        if stats["message_ids"] >= count or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


@dataclass
class Check:
    problems: list[str]

    def delivered_once(self, stats: dict[str, Any], expected: int, label: str) -> None:
        if stats["message_ids"] != expected:
            self.problems.append(f"{label}: {expected - stats['message_ids']} changes missing")
        if stats["deliveries"] != stats["webhook_ids"]:
            duplicates = stats["deliveries"] - stats["webhook_ids"]
            self.problems.append(f"{label}: {duplicates} deliveries arrived twice")


def throughput(database_url: str, events: int, workers: int, check: Check) -> None:
    run_id = f"tp{workers}-{time.monotonic_ns()}"
    with (
        receiver() as endpoint_url,
        running_service(database_url, workers=workers, extra_env=FORWARD_ENV) as (service, _),
    ):
        endpoint_id = new_endpoint(database_url, endpoint_url, disabled=True)
        store_dlrs(service, key_of(database_url), run_id, events)
        time.sleep(1)
        started = time.time()
        set_disabled(database_url, endpoint_id, False)
        stats = wait_for_deliveries(endpoint_url, events, timeout_s=120)
    took = (stats["last_at"] or started) - started
    rate = stats["message_ids"] / took if took > 0 else 0.0
    print(
        f"  {workers} worker(s): {events:,} deliveries in {took:.2f} s = {rate:,.0f} deliveries/s"
        f" (target 2,000); arrived {stats['deliveries']:,}, distinct webhook ids "
        f"{stats['webhook_ids']:,}",
        flush=True,
    )
    check.delivered_once(stats, events, f"throughput, {workers} worker(s)")


async def _post_steadily(service: str, key: str, run_id: str, rate: int, seconds: float) -> int:
    """Single DLRs, one every 1/rate seconds, from a few senders (more tasks than that would
    cost the client more than the service)."""
    count = int(rate * seconds)
    started = time.monotonic()
    next_number = iter(range(count))

    async def sender(client: aiohttp.ClientSession) -> None:
        for n in next_number:
            await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
            body = {"id": f"{run_id}-{n}", "deliveredStatusCode": 4}
            async with client.post(
                f"{service}/v1/webhooks/dlr", params={"key": key}, json=body
            ) as answer:
                answer.raise_for_status()

    async with aiohttp.ClientSession() as client:
        await asyncio.gather(*(sender(client) for _ in range(STEADY_SENDERS)))
    return count


def latency(database_url: str, rate: int, seconds: float, check: Check) -> None:
    run_id = f"lat-{time.monotonic_ns()}"
    with (
        receiver() as endpoint_url,
        running_service(database_url, extra_env=FORWARD_ENV) as (service, _),
    ):
        new_endpoint(database_url, endpoint_url)
        time.sleep(1)
        count = asyncio.run(_post_steadily(service, key_of(database_url), run_id, rate, seconds))
        stats = wait_for_deliveries(endpoint_url, count, timeout_s=60)
    print(
        f"  {rate} DLRs/s for {seconds:.0f} s: commit to arrival p50 {stats['p50_ms']:.0f} ms, "
        f"p99 {stats['p99_ms']:.0f} ms, max {stats['max_ms']:.0f} ms "
        f"(targets: p50 < 100 ms, p99 < 1 s; {stats['deliveries']:,} deliveries)",
        flush=True,
    )
    check.delivered_once(stats, count, "latency")


def ingest_rate(
    database_url: str, seconds: int, endpoint_mode: str | None, check: Check
) -> tuple[float, int]:
    """Single DLRs from wrk: events/s acknowledged, and how many of them are missing. With a
    healthy endpoint, also how long after the load its last delivery arrived."""
    scenario = Scenario("single", 1, 64, 1)
    run_id = f"fwd-{endpoint_mode or 'none'}-{time.monotonic_ns()}"
    with (
        receiver(endpoint_mode or "ok") as endpoint_url,
        running_service(database_url, extra_env=FORWARD_ENV) as (service, _),
    ):
        if endpoint_mode is None:
            asyncio.run(_sql(database_url, "DELETE FROM endpoints"))
        else:
            new_endpoint(database_url, endpoint_url)
        time.sleep(1)
        summary, threads = run_wrk(
            service, scenario, run_id, seconds, key_of(database_url), scatter=True
        )
        acked = acked_request_count(threads)
        if endpoint_mode == "ok":
            ended = time.time()
            stats = wait_for_deliveries(endpoint_url, acked, timeout_s=300)
            behind = (stats["last_at"] or ended) - ended
            print(f"    (its last delivery arrived {behind:.1f} s after the load ended)")
            if stats["message_ids"] < acked:
                check.problems.append(f"ingestion: {acked - stats['message_ids']} not delivered")
    missing = asyncio.run(count_missing(database_url, run_id, 1, threads, scatter=True))
    return acked / (summary["duration_us"] / 1e6), missing


def ingestion_beside_forwarding(database_url: str, seconds: int, rounds: int, check: Check) -> None:
    """The three runs in turn, ``rounds`` times: this machine's speed drifts between runs more
    than forwarding moves it, so each is compared by its median."""
    modes: dict[str, str | None] = {
        "no endpoint": None,
        "one healthy endpoint": "ok",
        "one that never answers": "hang",
    }
    rates: dict[str, list[float]] = {label: [] for label in modes}
    missing = 0
    for _ in range(rounds):
        for label, mode in modes.items():
            rate, lost = ingest_rate(database_url, seconds, mode, check)
            rates[label].append(rate)
            missing += lost
    alone = statistics.median(rates["no endpoint"])
    for label, found in rates.items():
        median = statistics.median(found)
        runs = ", ".join(f"{rate:,.0f}" for rate in found)
        ratio = (
            "" if label == "no endpoint" else f" = {median / alone:.2f} of no endpoint (target 0.8)"
        )
        print(f"  {label + ':':23}{median:9,.0f} DLRs/s{ratio}  (runs: {runs})", flush=True)
    if missing:
        check.problems.append(f"ingestion: {missing} acknowledged DLRs missing")


def main() -> None:
    parser = argparse.ArgumentParser(description="Forwarding benchmark")
    parser.add_argument("--smoke", action="store_true", help="a few seconds of each part")
    parser.add_argument(
        "--parts",
        default="throughput,latency,ingestion",
        help="which parts, comma-separated (default: all)",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    events, rate, steady_s, wrk_s, rounds = (
        (2000, 200, 3, 2, 1) if args.smoke else (40_000, 500, 20, 10, 3)
    )
    check = Check(problems=[])
    print(f"forwarding benchmark, {os.cpu_count()} cores", flush=True)
    with scratch_database("wavy_forward") as database_url:
        if "throughput" in parts:
            print("\n## throughput (a stored backlog, an endpoint answering 200 at once)")
            for workers in (1, 2):
                throughput(database_url, events, workers, check)
        if "latency" in parts:
            print("\n## latency at a steady rate")
            latency(database_url, rate, steady_s, check)
        if "ingestion" in parts:
            print("\n## ingestion of single DLRs beside forwarding (wrk, 64 connections, 1 worker)")
            ingestion_beside_forwarding(database_url, wrk_s, rounds, check)
    for problem in check.problems:
        print(f"FAILED: {problem}")
    if check.problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
