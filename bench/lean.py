"""The service against the leanest honest FastAPI route (bench/lean_app.py: raw body, one
pydantic ``validate_json``, a pre-encoded answer, no database), served by the same uvicorn
(uvloop, httptools), loaded in the same run by the same wrk script with ids shaped as Wavy's
UUIDs.

wrk runs with ONE thread for all connections, as the issue's measurement did: with a thread
per connection (what the zero-missing scenarios need, to know which request each answer
belongs to), 64 wrk threads time-share the machine's two cores with the servers, and the
latency they report includes their own wait for a core: that inflated the p99 to hundreds of
milliseconds whatever the server.

    .venv/bin/python -m bench.ingest --versus-lean
"""

from __future__ import annotations

import contextlib
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    cli_webhook_key,
    free_port,
    process_tree_cpu_seconds,
    reaped_children_cpu_seconds,
    running_service,
    service_env,
    stop,
    wait_until_answering,
    wrk_output,
)

# The performance issue's own copy of the route, where the tracker's material stands beside
# the repository (CI has it); else the repository's, the same route.
_ISSUES_LEAN_APP = Path(__file__).resolve().parents[2] / "shared" / "bench" / "lean_app.py"
LEAN_APP = (
    _ISSUES_LEAN_APP if _ISSUES_LEAN_APP.exists() else Path(__file__).with_name("lean_app.py")
)
LUA = Path(__file__).resolve().parent / "dlr.lua"
_runs = itertools.count(int(time.time()) % 2**24)
# Rounds of each comparison: one pair of runs moves by ±10% on this shared machine.
ROUNDS = 3


@dataclass(frozen=True)
class Latency:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    errors: int
    # The server's CPU (all its processes) per request: what a request costs it, whatever
    # else shares the cores (the service's PostgreSQL does; the lean route has none).
    cpu_us: float
    # wrk's own CPU per request: it shares the cores too, so a load generator that works
    # harder for one server than for the other (as dlr.lua's bookkeeping once did, for
    # answers out of request order) shows here rather than in that server's rate.
    wrk_cpu_us: float


@contextmanager
def running_lean(workers: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The reference route in uvicorn, as its docstring says to serve it; yields its URL and
    its process."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "lean_app:app",
        "--app-dir",
        str(LEAN_APP.parent),
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{base}/", process, "the lean reference app")
        yield f"{base}/dlr", process
    finally:
        stop(process, timeout_s=20)


def load(url: str, server: subprocess.Popen[bytes], connections: int, seconds: int) -> Latency:
    """wrk, one thread, ``connections`` connections, single DLRs with UUID ids."""
    with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as out:
        out_path = out.name
    env = {
        **os.environ,
        "WAVY_BENCH_RUN": "lean",
        "WAVY_BENCH_BATCH": "1",
        "WAVY_BENCH_OUT": out_path,
        "WAVY_BENCH_UUID_RUN": str(next(_runs)),
    }
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    cpu_before = process_tree_cpu_seconds(server.pid)
    wrk_before = reaped_children_cpu_seconds()
    subprocess.run(
        [*command, "-s", str(LUA), url],
        env=env,
        check=True,
        capture_output=True,
        timeout=seconds + 60,
    )
    cpu = process_tree_cpu_seconds(server.pid) - cpu_before
    wrk_cpu = reaped_children_cpu_seconds() - wrk_before
    summary, _ = wrk_output(out_path)
    errors = sum(
        summary[key]
        for key in ("non_2xx", "connect_errors", "read_errors", "write_errors", "timeouts")
    )
    return Latency(
        requests_per_s=summary["requests"] / (summary["duration_us"] / 1e6),
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        p999_ms=summary["p999_us"] / 1000,
        errors=errors,
        cpu_us=cpu / max(summary["requests"], 1) * 1e6,
        wrk_cpu_us=wrk_cpu / max(summary["requests"], 1) * 1e6,
    )


def row(label: str, latency: Latency) -> str:
    return (
        f"  {label:8} {latency.requests_per_s:9,.0f} DLRs/s  p50 {latency.p50_ms:7.2f} ms  "
        f"p99 {latency.p99_ms:7.2f} ms  p99.9 {latency.p999_ms:7.2f} ms  "
        f"CPU {latency.cpu_us:4.0f} us/request  wrk {latency.wrk_cpu_us:3.0f} us  "
        f"errors {latency.errors}"
    )


def median_of(runs: list[Latency]) -> Latency:
    """Each figure's median over the rounds (the machine's speed drifts between runs)."""
    return Latency(
        requests_per_s=statistics.median(run.requests_per_s for run in runs),
        p50_ms=statistics.median(run.p50_ms for run in runs),
        p99_ms=statistics.median(run.p99_ms for run in runs),
        p999_ms=statistics.median(run.p999_ms for run in runs),
        errors=sum(run.errors for run in runs),
        cpu_us=statistics.median(run.cpu_us for run in runs),
        wrk_cpu_us=statistics.median(run.wrk_cpu_us for run in runs),
    )


# Each server's load before the rounds, not counted.
WARM_UP_S = 3

# The targets (issue #36), for the keyed service as deployed against the lean route.
TARGET_P99_MS_AT_64 = 50.0
TARGET_P99_RATIO_AT_256 = 2.0
TARGET_RATE_RATIO = 0.7
TARGET_CPU_RATIO = 1.2


def versus_lean(
    database_url: str | None,
    seconds: int,
    rounds: int = ROUNDS,
    *,
    workers_list: tuple[int, ...] = (1,),
    open_row: bool = True,
) -> list[str]:
    """Print, per workers and connections, the lean route and the service as deployed (set up
    with the CLI, as the README says: a sub-account's key, in the URL's ``?key=``), and with
    ``open_row`` the service with open ingest (no key) as a second row: every server up side
    by side, loaded in turns (the order rotates, so that none always runs first), every round
    printed, then the medians and the median of the rounds' ratios to the lean route. The
    service runs with its access log on, at info level. ``database_url`` None: the embedded
    PostgreSQL, as a newcomer runs it. Returns the targets missed."""
    missed: list[str] = []
    env = {"WAVY_LOG_LEVEL": "info"}
    with tempfile.TemporaryDirectory(prefix="wavy-bench-embedded-") as data_dir:
        if database_url is None:
            env["WAVY_DATA_DIR"] = data_dir
            subprocess.run(
                [sys.executable, "-m", "app.cli", "migrate"],
                env=service_env(None, env),
                check=True,
                capture_output=True,
                timeout=300,
            )
        key = cli_webhook_key(database_url, "acme", env)
        for workers in workers_list:
            missed += _versus_lean_with(database_url, env, key, workers, seconds, rounds, open_row)
    return missed


def _versus_lean_with(
    database_url: str | None,
    env: dict[str, str],
    key: str,
    workers: int,
    seconds: int,
    rounds: int,
    open_row: bool,
) -> list[str]:
    missed: list[str] = []
    with contextlib.ExitStack() as servers:
        lean_url, lean_process = servers.enter_context(running_lean(workers))
        base, keyed_process = servers.enter_context(
            running_service(database_url, workers=workers, extra_env=env)
        )
        targets = {
            "lean": (lean_url, lean_process),
            "keyed": (f"{base}/v1/webhooks/dlr?key={key}", keyed_process),
        }
        if open_row:
            open_base, open_process = servers.enter_context(
                running_service(database_url, workers=workers, extra_env=env, open_ingest=True)
            )
            targets["open"] = (f"{open_base}/v1/webhooks/dlr", open_process)
        where = "the embedded PostgreSQL" if database_url is None else "a PostgreSQL server"
        # Not counted: what a server does once after it answers (the forwarder's process
        # still starting, caches filling) would be charged to the first round's requests.
        for url, server in targets.values():
            load(url, server, 64, WARM_UP_S)
        for connections in (64, 256):
            print(
                f"\n## versus the lean route: single DLRs, {connections} connections (one wrk "
                f"thread), {workers} worker(s), {rounds} rounds of {seconds} s each, on {where}; "
                "keyed: as deployed, a sub-account's key in ?key=; open: open ingest, no key",
                flush=True,
            )
            runs: dict[str, list[Latency]] = {name: [] for name in targets}
            names = list(targets)
            for round_ in range(rounds):
                shift = round_ % len(names)
                for name in names[shift:] + names[:shift]:
                    url, server = targets[name]
                    runs[name].append(load(url, server, connections, seconds))
                    print(row(name, runs[name][-1]), flush=True)
            medians = {name: median_of(found) for name, found in runs.items()}
            for name, found in medians.items():
                print(row(f"{name} med", found))
            lean = medians["lean"]
            for name in names[1:]:
                rate_ratio = statistics.median(
                    ours.requests_per_s / theirs.requests_per_s
                    for ours, theirs in zip(runs[name], runs["lean"], strict=True)
                )
                cpu_ratio = medians[name].cpu_us / lean.cpu_us
                p99_ratio = medians[name].p99_ms / lean.p99_ms
                print(
                    f"  {name:8} {rate_ratio:.2f} of the lean route's DLRs/s (median of "
                    f"{rounds}), {cpu_ratio:.2f}x its CPU per request, {p99_ratio:.2f}x its p99",
                    flush=True,
                )
                if name != "keyed" or workers != 1:
                    continue
                checks = [
                    (rate_ratio >= TARGET_RATE_RATIO, f"DLRs/s {rate_ratio:.2f} of lean < 0.7"),
                    (cpu_ratio <= TARGET_CPU_RATIO, f"CPU {cpu_ratio:.2f}x lean > 1.2x"),
                ]
                if connections == 64:
                    checks.append(
                        (
                            medians[name].p99_ms < TARGET_P99_MS_AT_64,
                            f"p99 {medians[name].p99_ms:.1f} ms at 64 connections >= 50 ms",
                        )
                    )
                else:
                    checks.append(
                        (
                            p99_ratio <= TARGET_P99_RATIO_AT_256,
                            f"p99 {p99_ratio:.2f}x lean's at 256 connections > 2x",
                        )
                    )
                for met, problem in checks:
                    if not met:
                        missed.append(f"{where}, {connections} connections: {problem}")
                        print(f"  MISSED   {problem}", flush=True)
    return missed
