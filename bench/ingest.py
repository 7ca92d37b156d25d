"""Ingest benchmark: DLR load from wrk against the service and against its no-database ceiling,
in the same run, then a check that every acknowledged DLR is stored.

    .venv/bin/python -m bench.ingest                    # the lean comparison, the matrix (≈ 12 min)
    .venv/bin/python -m bench.ingest --smoke            # a few seconds; CI checks zero missing
    .venv/bin/python -m bench.ingest --soak 300         # 5 minutes, single objects, RSS watch
    .venv/bin/python -m bench.ingest --versus-lean      # only the comparison with lean
    .venv/bin/python -m bench.ingest --embedded         # it, on the embedded PostgreSQL
    .venv/bin/python -m bench.ingest --open-ingest      # the matrix with no key (not deployed)
    .venv/bin/python -m bench.ingest --clustered-ids    # ids as in runs before 2026-11-25 evening

First, the service against the lean reference route (bench.lean). Then scenarios:
single-object posts at 64 connections and 1000-item arrays at 8 connections, with 1 and 2
workers; after each array scenario, PostgreSQL's floor for the same rows in the same run
(bench.db_capacity's COPY of message and event rows) and the ratio to it. For each it prints
events/s and p50/p99 latency of the service and of the ceiling (the same app with only the
database write removed), their ratio, the largest RSS of any server process, how many
acknowledged DLRs are missing from the database (must be 0), and the CPU the run cost the
service, PostgreSQL and wrk (they share this machine's cores).
Everything runs as deployed: the service set up with the CLI as the README says, posted to
with a sub-account's key in the URL's ``?key=`` (``--open-ingest`` runs the matrix without a
key; the comparison with the lean route shows open ingest as a second row). After each array
scenario, two floors of PostgreSQL for the same rows in the same run: the idempotent floor
(one ``INSERT ... ON CONFLICT`` per batch from one asyncpg connection, the least an idempotent
receiver sends) and the COPY floor beside it, in ``--rounds`` rounds of the service and the
floors right after it (the median of the rounds' ratios counts).

Each DLR id starts with a hash of its thread and number, so new ids land all over the indexes
keyed by message id, as Wavy's random UUIDs do, and each DLR goes to its own phone number.
``--clustered-ids`` drops the hash and sends every DLR to one number, as runs before 2026-11-25
(evening) did: each thread's ids then land next to its previous ones, which made PostgreSQL
much cheaper per event (docs/benchmarks.md) and flattered every array figure measured before.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.db.engine import normalize_database_url
from bench.common import (
    calibration_line,
    checkpoint,
    cli_webhook_key,
    host_line,
    postgres_cpu_seconds,
    process_tree_cpu_seconds,
    reaped_children_cpu_seconds,
    running_service,
    scratch_database,
    wrk_output,
)
from bench.db_capacity import copy_floor, idempotent_floor
from bench.lean import ROUNDS, versus_lean

LUA = Path(__file__).with_name("dlr.lua")
# One JSON line written by dlr.lua: a thread's acknowledged ranges, or the run's summary.
WrkLine = dict[str, Any]
ARRAY_CONNECTIONS = int(os.environ.get("BENCH_ARRAY_CONNECTIONS", "8"))
# The least batches of PostgreSQL's floor measured after each array scenario
# (bench.db_capacity): the floors write as many rows as the service stored, at least these.
FLOOR_BATCHES = 10


@dataclass
class Scenario:
    name: str
    batch: int
    connections: int
    workers: int


@dataclass
class Result:
    events_per_s: float
    requests: int
    acked_events: int
    p50_ms: float
    p99_ms: float
    errors: int
    max_rss_mb: float
    cpu_seconds: dict[str, float]
    seconds: float
    missing: int | None = None


class RssWatcher:
    """Samples the RSS of the server's process tree while a run goes on."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.max_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                processes = [self.root, *self.root.children(recursive=True)]
                for process in processes:
                    self.max_rss = max(self.max_rss, process.memory_info().rss)
            except psutil.Error:
                pass

    def __enter__(self) -> RssWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class CpuMeter:
    """CPU time a run costs, by who spends it: the service's processes, PostgreSQL's (every
    process of the machine's server, as psutil sees them) and wrk (a reaped child of this
    process, so it is read from getrusage). Where the time goes on a box they all share."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.used: dict[str, float] = {}

    def _service_and_postgres(self) -> dict[str, float]:
        return {
            "service": process_tree_cpu_seconds(self.server_pid),
            "postgres": postgres_cpu_seconds(),
        }

    def __enter__(self) -> CpuMeter:
        self._before = self._service_and_postgres()
        self._children_before = reaped_children_cpu_seconds()
        return self

    def __exit__(self, *_: object) -> None:
        after = self._service_and_postgres()
        self.used = {group: after[group] - self._before[group] for group in after}
        self.used["wrk"] = reaped_children_cpu_seconds() - self._children_before


def run_wrk(
    url: str,
    scenario: Scenario,
    run_id: str,
    seconds: int,
    key: str | None = None,
    *,
    scatter: bool = False,
) -> tuple[WrkLine, list[WrkLine]]:
    with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as out:
        out_path = out.name
    env = {
        **os.environ,
        "WAVY_BENCH_RUN": run_id,
        "WAVY_BENCH_BATCH": str(scenario.batch),
        "WAVY_BENCH_OUT": out_path,
        # A key goes in the URL, as the README's webhook URLs carry it.
        "WAVY_BENCH_KEY": "",
        "WAVY_BENCH_SCATTER": "1" if scatter else "",
    }
    connections = scenario.connections
    subprocess.run(
        [
            "wrk",
            f"-t{connections}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(LUA),
            f"{url}/v1/webhooks/dlr" + (f"?key={key}" if key else ""),
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=seconds + 60,
    )
    return wrk_output(out_path)


def acked_ranges(thread: WrkLine) -> list[tuple[int, int]]:
    """The request numbers one wrk thread got a 200 for, as written by dlr.lua."""
    ranges = []
    for part in thread["acked"].split(","):
        if part:
            first, last = part.split("-")
            ranges.append((int(first), int(last)))
    return ranges


def acked_request_count(threads: list[WrkLine]) -> int:
    return sum(last - first + 1 for t in threads for first, last in acked_ranges(t))


# dlr.lua's scattered(n) for item i of request c of thread :tid: the same hash, as the same
# ten digits.
_SCATTERED = (
    "lpad(((((c - 1) * CAST(:batch AS int) + i) * 2654435761 + CAST(:tid AS bigint) * 67108864)"
    " % 4294967296)::text, 10, '0') || '-' ||"
)


async def count_missing(
    database_url: str, run_id: str, batch: int, threads: list[WrkLine], *, scatter: bool = False
) -> int:
    """How many DLRs of requests answered 200 are not in the database."""
    engine = create_async_engine(normalize_database_url(database_url))
    missing = 0
    item = "|| '-' || i" if batch > 1 else ""
    scattered = _SCATTERED if scatter else ""
    query = text(
        f"""
        SELECT count(*) FROM generate_series(CAST(:first AS int), CAST(:last AS int)) AS c,
             generate_series(1, CAST(:batch AS int)) AS i
        WHERE NOT EXISTS (SELECT 1 FROM messages AS m
                          WHERE m.id = {scattered} CAST(:prefix AS text) || c {item})
        """  # noqa: S608 - `item` and `scattered` are constants
    )
    async with engine.connect() as conn:
        for thread in threads:
            for first, last in acked_ranges(thread):
                params = {
                    "first": first,
                    "last": last,
                    "batch": batch,
                    "prefix": f"{run_id}-{thread['tid']}-",
                    "tid": thread["tid"],
                }
                missing += (await conn.execute(query, params)).scalar_one()
    await engine.dispose()
    return missing


def measure(
    database_url: str,
    scenario: Scenario,
    seconds: int,
    *,
    ceiling: bool,
    key: str | None,
    scatter: bool = False,
) -> Result:
    run_id = f"{scenario.name}-{'ceiling' if ceiling else 'service'}-{time.monotonic_ns()}"
    factory = "bench.ceiling:create_ceiling_app" if ceiling else None
    if not ceiling:  # from the same WAL state as each floor's run
        checkpoint(database_url)
    with running_service(
        database_url, workers=scenario.workers, app_factory=factory, open_ingest=key is None
    ) as (url, process):
        time.sleep(1)  # let workers finish starting
        with RssWatcher(process.pid) as watcher, CpuMeter(process.pid) as cpu:
            summary, threads = run_wrk(url, scenario, run_id, seconds, key, scatter=scatter)
    acked_requests = acked_request_count(threads)
    result = Result(
        events_per_s=acked_requests * scenario.batch / (summary["duration_us"] / 1e6),
        requests=summary["requests"],
        acked_events=acked_requests * scenario.batch,
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        errors=summary["non_2xx"]
        + summary["connect_errors"]
        + summary["read_errors"]
        + summary["write_errors"]
        + summary["timeouts"],
        max_rss_mb=watcher.max_rss / 2**20,
        cpu_seconds=cpu.used,
        seconds=summary["duration_us"] / 1e6,
    )
    if not ceiling:
        result.missing = asyncio.run(
            count_missing(database_url, run_id, scenario.batch, threads, scatter=scatter)
        )
    return result


def line(label: str, r: Result) -> str:
    missing = "" if r.missing is None else f"  missing {r.missing}"
    events = max(r.acked_events, 1)
    cpu = ", ".join(
        f"{group} {used / r.seconds:4.0%} ({used / events * 1e6:.0f} us/event)"
        for group, used in r.cpu_seconds.items()
    )
    return (
        f"  {label:8} {r.events_per_s:9,.0f} events/s  p50 {r.p50_ms:7.2f} ms  "
        f"p99 {r.p99_ms:7.2f} ms  errors {r.errors}  max RSS {r.max_rss_mb:5.0f} MB{missing}\n"
        f"           CPU of one core: {cpu}"
    )


def run_scenario(
    database_url: str,
    scenario: Scenario,
    seconds: int,
    *,
    ceilings: bool,
    floor: bool,
    sub_account: str | None,
    scatter: bool,
    rounds: int = 1,
) -> int:
    """One scenario of the matrix, with its ceiling and (arrays) ``rounds`` of the service
    against PostgreSQL's floors; acknowledged DLRs missing."""
    key = cli_webhook_key(database_url, sub_account) if sub_account else None
    shape = "single objects" if scenario.batch == 1 else f"{scenario.batch}-item arrays"
    print(
        f"\n## {shape}, {scenario.connections} connections, "
        f"{scenario.workers} worker(s), {seconds} s",
        flush=True,
    )
    service = measure(database_url, scenario, seconds, ceiling=False, key=key, scatter=scatter)
    print(line("service", service), flush=True)
    if ceilings:
        ceiling = measure(database_url, scenario, seconds, ceiling=True, key=key, scatter=scatter)
        print(line("ceiling", ceiling), flush=True)
        if ceiling.errors or not ceiling.events_per_s:
            sys.exit("the ceiling app answered errors: the comparison is meaningless")
        print(
            f"  ratio    {service.events_per_s / ceiling.events_per_s:.2f} "
            "of the no-database ceiling",
            flush=True,
        )
    missing = service.missing or 0
    if scenario.batch > 1 and floor:
        missing += _versus_floors(
            database_url, scenario, seconds, service, rounds, sub_account, scatter
        )
    return missing


def _versus_floors(
    database_url: str,
    scenario: Scenario,
    seconds: int,
    first: Result,
    rounds: int,
    sub_account: str | None,
    scatter: bool,
) -> int:
    """PostgreSQL's own floors for the same rows, in the same run: message rows with the read
    API's indexes and their event rows. Each round pairs a run of the service with the floors
    right after it (the host's speed drifts within minutes), and the median of the rounds'
    ratios counts. Every round's service starts on a new database, as the floors start on new
    tables: a store grown by the rounds before costs PostgreSQL more per row. Returns the
    later rounds' acknowledged DLRs missing."""
    missing = 0
    idempotent_ratios, copy_ratios = [], []
    for round_ in range(rounds):
        with contextlib.ExitStack() as round_database:
            url, service = database_url, first
            if round_:
                url = round_database.enter_context(scratch_database("wavy_bench_ingest"))
                key = cli_webhook_key(url, sub_account) if sub_account else None
                service = measure(url, scenario, seconds, ceiling=False, key=key, scatter=scatter)
                missing += service.missing or 0
                print(line("service", service), flush=True)
            dsn = url.replace("postgresql+asyncpg://", "postgresql://")
            # The same rows: as many as the service stored, so that the checkpoints their WAL
            # brings on (every max_wal_size) fall on the floors as they fell on the service.
            batches = max(FLOOR_BATCHES, math.ceil(service.acked_events / scenario.batch))
            copy_per_s, copy_cpu = copy_floor(dsn, batches, scenario.batch)
            idempotent_per_s, idempotent_cpu = idempotent_floor(dsn, batches, scenario.batch)
        idempotent_ratios.append(service.events_per_s / idempotent_per_s)
        copy_ratios.append(service.events_per_s / copy_per_s)
        print(
            f"  floor    {idempotent_per_s:9,.0f} events/s  (INSERT ... ON CONFLICT from one "
            f"connection, PostgreSQL {idempotent_cpu:.1f} us/row)\n"
            f"  floor    {copy_per_s:9,.0f} events/s  (COPY from two, PostgreSQL "
            f"{copy_cpu:.1f} us/row)\n"
            f"  ratio    {idempotent_ratios[-1]:.2f} of the idempotent floor, "
            f"{copy_ratios[-1]:.2f} of the COPY floor",
            flush=True,
        )
    if rounds > 1:
        print(
            f"  median   {statistics.median(idempotent_ratios):.2f} of the idempotent floor, "
            f"{statistics.median(copy_ratios):.2f} of the COPY floor ({rounds} rounds)",
            flush=True,
        )
    return missing


def main() -> None:
    parser = argparse.ArgumentParser(description="DLR ingest benchmark (wrk)")
    parser.add_argument("--seconds", type=int, default=15, help="length of each wrk run")
    parser.add_argument(
        "--rounds",
        type=int,
        default=ROUNDS,
        help="rounds of the comparisons, in turns (their medians count): the service against "
        "the lean route, and an array scenario against PostgreSQL's floors",
    )
    parser.add_argument("--smoke", action="store_true", help="2-second runs, check zero missing")
    parser.add_argument(
        "--soak",
        type=int,
        metavar="SECONDS",
        help="one long single-object run with 1 worker (memory)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="run only these scenarios (single-1w single-2w array-1w array-2w)",
    )
    parser.add_argument(
        "--sub-account",
        metavar="NAME",
        default="acme",
        help="post with a webhook key of this sub-account, made with `keys add` as the README "
        "says (default acme)",
    )
    parser.add_argument(
        "--open-ingest",
        action="store_true",
        help="the scenarios without a key, the service with open ingest (not as deployed)",
    )
    parser.add_argument(
        "--clustered-ids",
        action="store_true",
        help="ids that land next to the thread's previous one, as in runs before 2026-11-25 "
        "(evening); by default each id starts with a hash of its number, so new ids land all "
        "over the indexes, as Wavy's UUIDs do",
    )
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="the comparison with the lean route on the embedded PostgreSQL (no DATABASE_URL), "
        "as a newcomer runs the service",
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1],
        help="workers of the comparison with the lean route (default 1; the targets are for 1)",
    )
    parser.add_argument(
        "--versus-lean",
        action="store_true",
        help="only the comparison with the lean reference route (bench.lean), which the full "
        "matrix runs first",
    )
    args = parser.parse_args()
    if args.embedded:
        args.versus_lean = True
    if args.open_ingest:
        args.sub_account = None
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    print(host_line(), calibration_line(), sep="\n", flush=True)
    if args.versus_lean or not (args.soak or args.smoke or args.only):
        if args.embedded:
            missed = versus_lean(None, args.seconds, args.rounds, open_row=False)
        else:
            with scratch_database("wavy_bench_lean") as database_url:
                missed = versus_lean(
                    database_url, args.seconds, args.rounds, workers_list=tuple(args.workers)
                )
        if missed:
            print("\ntargets missed (as deployed, 1 worker):\n  " + "\n  ".join(missed))
        if args.versus_lean:
            return

    if args.soak:
        scenarios = [Scenario("soak", 1, 64, 1)]
        seconds, ceilings = args.soak, False
    elif args.smoke:
        scenarios = [Scenario("single-1w", 1, 16, 1), Scenario("array-1w", 1000, 2, 1)]
        seconds, ceilings = 2, True  # the ceiling too: it must keep working as the app changes
    else:
        scenarios = [
            Scenario("single-1w", 1, 64, 1),
            Scenario("single-2w", 1, 64, 2),
            Scenario("array-1w", 1000, ARRAY_CONNECTIONS, 1),
            Scenario("array-2w", 1000, ARRAY_CONNECTIONS, 2),
        ]
        seconds, ceilings = args.seconds, True
    if args.only:
        scenarios = [scenario for scenario in scenarios if scenario.name in args.only]

    scatter = not args.clustered_ids
    total_missing = 0
    if args.sub_account:
        print(f"posting with a webhook key of sub-account {args.sub_account!r}, in ?key=")
    else:
        print("posting with no key, to a service with open ingest (not as deployed)")
    for scenario in scenarios:
        # A new database each: a scenario's rows would otherwise weigh on the next one's
        # indexes (the floor fills new tables too); bench.growth measures a grown store.
        with scratch_database("wavy_bench_ingest") as database_url:
            total_missing += run_scenario(
                database_url,
                scenario,
                seconds,
                ceilings=ceilings,
                floor=not args.smoke,
                sub_account=args.sub_account,
                scatter=scatter,
                rounds=args.rounds,
            )
    print(f"\nacknowledged but missing, all runs: {total_missing}")
    if total_missing:
        sys.exit(1)


if __name__ == "__main__":
    main()
