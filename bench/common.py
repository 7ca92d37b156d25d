"""Shared pieces of the benchmarks: a throw-away database, the service in a subprocess, and
latency statistics."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import platform
import re
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import psutil
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from app.db.engine import normalize_database_url
from app.db.migrate import upgrade_to_head
from app.payloads import LIST_ADAPTERS

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/test"


def host_line() -> str:
    """The machine a run measured: sessions get hosts of different speeds, which move rates and
    even ratios (docs/benchmarks.md), so every raw output names its host."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return f"host: {model}, {os.cpu_count()} cores, Python {platform.python_version()}"


# A fixed amount of each side's work, timed where a run starts: two hosts that print the same
# CPU model can still differ in speed (docs/benchmarks.md), and these make runs comparable.
_CALIBRATION_DLRS = [
    {
        "id": f"{n:08x}-calibration",
        "correlationId": f"c-{n}",
        "destination": f"55119{n:08d}",
        "carrierName": "TIM",
        "sentStatusCode": 2,
        "sentStatus": "SENT_SUCCESS",
        "sentStatusAt": 1420732929252,
        "deliveredStatusCode": 4,
        "deliveredStatus": "DELIVERED_SUCCESS",
        "deliveredAt": 1420732954000,
    }
    for n in range(1000)
]
_SUM_A_MILLION = "SELECT sum(g) FROM generate_series(1, 1000000) AS g"


def _best_seconds(work: Callable[[], object], times: int) -> float:
    best = float("inf")
    for _ in range(times):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


async def _postgres_seconds(server: str, times: int) -> float:
    conn = await asyncpg.connect(server.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        best = float("inf")
        for _ in range(times):
            started = time.perf_counter()
            await conn.fetchval(_SUM_A_MILLION)
            best = min(best, time.perf_counter() - started)
        return best
    finally:
        await conn.close()


def calibration_line(server: str | None = None) -> str:
    """This host's speed at a fixed piece of each side's work (best of several tries): Python
    parsing and validating a 1000-DLR array as the service does, and PostgreSQL summing a
    million integers."""
    body = orjson.dumps(_CALIBRATION_DLRS)
    python = _best_seconds(lambda: LIST_ADAPTERS["dlr"].validate_python(orjson.loads(body)), 20)
    postgres = asyncio.run(_postgres_seconds(server or server_url(), 5))
    return (
        f"calibration: Python {python * 1000:.2f} ms to parse and validate 1000 DLRs, "
        f"PostgreSQL {postgres * 1000:.1f} ms to sum a million integers"
    )


def server_url() -> str:
    return os.environ.get("BENCH_DATABASE_URL", DEFAULT_SERVER)


async def _admin(url: str, statement: str) -> None:
    engine = create_async_engine(normalize_database_url(url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


@contextmanager
def scratch_database(prefix: str, server: str | None = None) -> Iterator[str]:
    """A new, migrated database on the benchmark server (or ``server``), dropped afterwards."""
    base = server or server_url()
    name = f"{prefix}_{secrets.token_hex(3)}"
    asyncio.run(_admin(base, f'CREATE DATABASE "{name}"'))
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade_to_head(url)
        yield url
    finally:
        asyncio.run(_admin(base, f'DROP DATABASE "{name}" WITH (FORCE)'))


def checkpoint(database_url: str) -> None:
    """A CHECKPOINT on the database's server, so that a run starts from the same WAL state as
    the floors' runs (bench.db_capacity.create_floor_tables)."""
    asyncio.run(_admin(database_url, "CHECKPOINT"))


def postgres_cpu_seconds() -> float:
    """CPU time every process of the machine's PostgreSQL has spent so far (user and system).
    Connections must be open before a first reading: a backend that exits in between takes
    its time with it."""
    seconds = 0.0
    for process in psutil.process_iter(["name"]):
        if process.info["name"] == "postgres":
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                seconds += times.user + times.system
    return seconds


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU time (user and system) a server and its children (workers, the forwarder) have
    spent so far."""
    root = psutil.Process(pid)
    seconds = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            seconds += times.user + times.system
    return seconds


def reaped_children_cpu_seconds() -> float:
    """CPU time (user and system) of this process's children that have ended and been waited
    for: wrk's, read after ``subprocess.run`` returns."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_env(
    database_url: str | None, extra_env: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of a server or command: DATABASE_URL, or none (then the embedded
    PostgreSQL under WAVY_DATA_DIR, as a newcomer runs)."""
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return {**env, "WAVY_LOG_LEVEL": "warning", **(extra_env or {})}


def cli_webhook_key(
    database_url: str | None, sub_account: str, extra_env: dict[str, str] | None = None
) -> str:
    """A webhook key of ``sub_account``, made as the README says (``keys add``)."""
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "add", "--sub-account", sub_account],
        env=service_env(database_url, extra_env),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    found = re.search(r"[?&]key=([^\s&]+)", done.stdout)
    if found is None:
        raise RuntimeError(f"keys add printed no key:\n{done.stdout}{done.stderr}")
    return found.group(1)


@functools.cache
def key_of(database_url: str) -> str:
    """Sub-account acme's webhook key for this database, made once with ``keys add``: for the
    benchmarks that post to one database from several places."""
    return cli_webhook_key(database_url, "acme")


@contextmanager
def running_service(
    database_url: str | None,
    *,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
    app_factory: str | None = None,
    open_ingest: bool = False,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``wavy-webhooks serve`` in its own process (or, with ``app_factory``, uvicorn with the
    same options on another app); yields its base URL. As deployed, every webhook needs a key
    (``cli_webhook_key``); ``open_ingest`` only for a comparison row that says so.
    ``database_url`` None: on the embedded PostgreSQL."""
    port = free_port()
    env = service_env(database_url, extra_env)
    log = Path(os.environ.get("BENCH_LOG_DIR", tempfile.gettempdir())) / f"wavy-bench-{port}.log"
    with log.open("wb") as out:
        if app_factory is None:
            command = ["-m", "app.cli", "serve", "--no-migrate"]
            if open_ingest:
                command.append("--open-ingest")
        else:
            env["WAVY_OPEN_INGEST"] = "true"
            command = [
                "-m",
                "uvicorn",
                app_factory,
                "--factory",
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--log-level",
                "warning",
            ]
        command = [sys.executable, *command, "--port", str(port), "--workers", str(workers)]
        # In a session of its own, as a deployed server runs: no signal meant for the
        # benchmark's terminal reaches it, and its CPU is its own process tree's.
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"service exited: {log.read_text()}")
                try:
                    httpx.get(f"{base}/openapi.json", timeout=1)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"service did not start: {log.read_text()}") from None
                    time.sleep(0.2)
            yield base, process
        finally:
            stop(process)


def wait_until_answering(
    url: str, process: subprocess.Popen[bytes], what: str, timeout_s: float = 30
) -> None:
    """Until ``url`` answers a GET; RuntimeError if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.1)


def stop(process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """Ctrl-C, as a user stops a server; if it has not stopped in time, its whole session is
    killed (a server started in a session of its own leads it: its workers go too)."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # no such group: it led no session
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()


def wrk_output(path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What dlr.lua's done() wrote (and the file removed): the run's summary line, and one
    line per wrk thread."""
    lines = [json.loads(line) for line in Path(path).read_text().splitlines()]
    os.unlink(path)
    summary = next(line for line in lines if line.get("summary"))
    return summary, [line for line in lines if "tid" in line]


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    cut = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": cut[49], "p99": cut[98], "max": ordered[-1], "n": len(ordered)}


def fmt(stats: dict[str, float]) -> str:
    return (
        f"p50 {stats['p50']:7.2f} ms   p99 {stats['p99']:7.2f} ms   "
        f"max {stats['max']:7.2f} ms   (n={int(stats['n'])})"
    )
