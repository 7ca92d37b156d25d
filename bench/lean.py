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
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.common import free_port, running_service, stop, wait_until_answering, wrk_output

# The performance issue's own copy of the route, where the tracker's material stands beside
# the repository (CI has it); else the repository's, the same route.
_ISSUES_LEAN_APP = Path(__file__).resolve().parents[2] / "shared" / "bench" / "lean_app.py"
LEAN_APP = (
    _ISSUES_LEAN_APP if _ISSUES_LEAN_APP.exists() else Path(__file__).with_name("lean_app.py")
)
LUA = Path(__file__).resolve().parent / "dlr.lua"
_runs = itertools.count(int(time.time()) % 2**24)


@dataclass(frozen=True)
class Latency:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    errors: int


@contextmanager
def running_lean(workers: int) -> Iterator[str]:
    """The reference route in uvicorn, as its docstring says to serve it; yields its URL."""
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
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{base}/", process, "the lean reference app")
        yield f"{base}/dlr"
    finally:
        stop(process, timeout_s=20)


def load(url: str, connections: int, seconds: int) -> Latency:
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
    subprocess.run(
        [*command, "-s", str(LUA), url],
        env=env,
        check=True,
        capture_output=True,
        timeout=seconds + 60,
    )
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
    )


def row(label: str, latency: Latency) -> str:
    return (
        f"  {label:8} {latency.requests_per_s:9,.0f} DLRs/s  p50 {latency.p50_ms:7.2f} ms  "
        f"p99 {latency.p99_ms:7.2f} ms  p99.9 {latency.p999_ms:7.2f} ms  errors {latency.errors}"
    )


def versus_lean(database_url: str, seconds: int) -> None:
    """Print, per workers and connections, the lean route, the service, and their ratio."""
    for workers in (1, 2):
        for connections in (64, 256):
            print(
                f"\n## versus the lean route: single DLRs, {connections} connections (one wrk "
                f"thread), {workers} worker(s), {seconds} s",
                flush=True,
            )
            with running_lean(workers) as url:
                time.sleep(1)
                lean = load(url, connections, seconds)
            with running_service(database_url, workers=workers) as (base, _process):
                time.sleep(1)
                service = load(f"{base}/v1/webhooks/dlr", connections, seconds)
            print(row("lean", lean))
            print(row("service", service))
            ratio = service.requests_per_s / lean.requests_per_s
            print(f"  ratio    {ratio:.2f} of the lean route", flush=True)
