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
    free_port,
    process_tree_cpu_seconds,
    running_service,
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
    subprocess.run(
        [*command, "-s", str(LUA), url],
        env=env,
        check=True,
        capture_output=True,
        timeout=seconds + 60,
    )
    cpu = process_tree_cpu_seconds(server.pid) - cpu_before
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
    )


def row(label: str, latency: Latency) -> str:
    return (
        f"  {label:8} {latency.requests_per_s:9,.0f} DLRs/s  p50 {latency.p50_ms:7.2f} ms  "
        f"p99 {latency.p99_ms:7.2f} ms  p99.9 {latency.p999_ms:7.2f} ms  "
        f"CPU {latency.cpu_us:4.0f} us/request  errors {latency.errors}"
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
    )


def versus_lean(database_url: str, seconds: int, rounds: int = ROUNDS) -> None:
    """Print, per workers and connections, the lean route, the service, and their ratio: both
    servers up side by side, loaded in turns (ABBA order, so that neither always runs first),
    every round printed, then the medians and the median of the rounds' ratios. The service
    runs as deployed: its access log on, at info level."""
    for workers in (1, 2):
        with (
            running_lean(workers) as (lean_url, lean_process),
            running_service(
                database_url, workers=workers, extra_env={"WAVY_LOG_LEVEL": "info"}
            ) as (base, service_process),
        ):
            service_url = f"{base}/v1/webhooks/dlr"
            for connections in (64, 256):
                print(
                    f"\n## versus the lean route: single DLRs, {connections} connections (one "
                    f"wrk thread), {workers} worker(s), {rounds} rounds of {seconds} s each",
                    flush=True,
                )
                leans: list[Latency] = []
                services: list[Latency] = []
                for round_ in range(rounds):
                    order = ("lean", "service") if round_ % 2 == 0 else ("service", "lean")
                    for which in order:
                        if which == "lean":
                            url, server, runs = lean_url, lean_process, leans
                        else:
                            url, server, runs = service_url, service_process, services
                        runs.append(load(url, server, connections, seconds))
                        print(row(which, runs[-1]), flush=True)
                lean, service = median_of(leans), median_of(services)
                ratio = statistics.median(
                    ours.requests_per_s / theirs.requests_per_s
                    for ours, theirs in zip(services, leans, strict=True)
                )
                print(row("lean med", lean))
                print(row("svc med", service))
                print(f"  ratio    {ratio:.2f} of the lean route (median of {rounds})", flush=True)
                print(
                    f"  CPU      the service spends {service.cpu_us / lean.cpu_us:.2f}x the lean "
                    "route's CPU per request (medians)",
                    flush=True,
                )
