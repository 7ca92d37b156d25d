"""Running the service and its database: serve, migrate, purge, doctor."""

from __future__ import annotations

import asyncio
import atexit
import enum
import logging.config
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api.paging import MAX_FEED_WAIT_S
from app.cli.common import (
    print_webhook_url_shapes,
    print_webhook_urls,
    reconciliation_line,
    resolve_database_url,
    review_server,
    run_with_connection,
    run_with_engine,
    wait_at_start,
)
from app.cli.forwarder_process import PARENT_ENV, ForwarderProcess
from app.cli.root import cli
from app.db import retention
from app.db.first_start import create_first_credentials
from app.db.migrate import upgrade_to_head
from app.http_protocol import raise_open_files_limit, server_options
from app.logs import logging_config
from app.metrics import MULTIPROC_ENV, prepare_multiprocess_dir
from app.outbound.forwarder import run_apart
from app.rules.postgres_settings import Level
from app.rules.retention import BadAge, parse_age
from app.settings import Settings

log = logging.getLogger(__name__)


class LogFormatChoice(enum.StrEnum):
    text = "text"
    json = "json"


def _exit_normally(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _stop_on_hang_up(signum: int, frame: FrameType | None) -> None:
    signal.raise_signal(signal.SIGTERM)  # uvicorn's graceful stop while it serves


def _default(name: str) -> Any:
    """A setting's default, so that --help shows the one Settings applies."""
    return Settings.model_fields[name].default


@cli.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Interface to bind", envvar="WAVY_HOST", show_envvar=True)
    ] = _default("host"),
    port: Annotated[
        int, typer.Option(help="Port", envvar="WAVY_PORT", show_envvar=True)
    ] = _default("port"),
    workers: Annotated[
        int, typer.Option(help="Worker processes", envvar="WAVY_WORKERS", show_envvar=True)
    ] = _default("workers"),
    no_migrate: Annotated[
        bool, typer.Option("--no-migrate", help="Do not apply migrations at start-up")
    ] = False,
    open_ingest: Annotated[
        bool,
        typer.Option(
            "--open-ingest",
            help="Accept webhooks without a key",
            envvar="WAVY_OPEN_INGEST",
            show_envvar=True,
        ),
    ] = _default("open_ingest"),
    log_format: Annotated[
        LogFormatChoice,
        typer.Option(
            help="text, or json (one object per line)", envvar="WAVY_LOG_FORMAT", show_envvar=True
        ),
    ] = LogFormatChoice(_default("log_format")),
    with_sandbox: Annotated[
        bool,
        typer.Option(
            "--sandbox",
            help="Also run Wavy on this machine (wavy-webhooks sandbox) and send to it: the "
            "whole flow with no Wavy account",
        ),
    ] = False,
) -> None:
    """Run the HTTP service (migrating first, and creating a webhook key if there is none).
    Every other setting is an environment variable (README, Configuration)."""
    import uvicorn

    # Workers are separate processes that read their settings from the environment.
    for name, value in (("HOST", host), ("PORT", port), ("WORKERS", workers)):
        os.environ[f"WAVY_{name}"] = str(value)
    os.environ["WAVY_OPEN_INGEST"] = "true" if open_ingest else "false"
    os.environ["WAVY_LOG_FORMAT"] = log_format.value
    settings = Settings()
    log_config = logging_config(settings.log_level, settings.log_format)
    logging.config.dictConfig(log_config)
    # Before the workers start: they inherit it, and count into files /metrics adds up.
    # One worker runs in this process, whose metrics were created in memory when
    # prometheus_client was imported (it reads the variable only then): no directory for it.
    metrics_dir = os.environ.get(MULTIPROC_ENV)
    separate_forwarder = settings.forwarder == "process"
    if metrics_dir is None and (settings.workers > 1 or separate_forwarder):
        metrics_dir = tempfile.mkdtemp(prefix="wavy-metrics-")
        atexit.register(shutil.rmtree, metrics_dir, ignore_errors=True)
    if metrics_dir is not None:
        prepare_multiprocess_dir(Path(metrics_dir))
    # uvicorn re-raises a SIGTERM after its graceful shutdown, with the handler it found
    # installed; the default one would kill the process before atexit stops the embedded
    # PostgreSQL (docker stop, systemd). This one exits normally instead. A hang-up (the
    # terminal closed) stops the service the same way: by default it killed the process and
    # left the embedded PostgreSQL running. (With --workers N, uvicorn's supervisor takes
    # SIGHUP to restart its workers instead.)
    signal.signal(signal.SIGTERM, _exit_normally)
    signal.signal(signal.SIGHUP, _stop_on_hang_up)
    database_url = resolve_database_url(settings)
    os.environ["DATABASE_URL"] = database_url
    wait_at_start(settings, database_url)
    if not no_migrate:
        upgrade_to_head(database_url)

    created = run_with_connection(
        settings,
        database_url,
        partial(create_first_credentials, want_webhook_key=not settings.open_ingest),
    )
    if created.webhook_key:
        typer.echo("No webhook key existed, so one was created.")
        print_webhook_urls(settings, created.webhook_key, None)
    elif not settings.open_ingest:
        print_webhook_url_shapes(settings)
    if created.admin_token:
        typer.echo("No read-API user existed, so an admin was created (token shown only now):")
        typer.echo("  UserName             admin")
        typer.echo(f"  AuthenticationToken  {created.admin_token}")
    typer.echo(f"Dashboard  {settings.webhook_base_url()}/dashboard")

    for finding in review_server(settings, database_url):
        if finding.level >= Level.WARNING:
            log.warning(
                "PostgreSQL's %s is %s: %s (wavy-webhooks doctor lists every check)",
                finding.name,
                finding.shown,
                finding.why,
            )

    raise_open_files_limit(settings.max_connections)
    stand_in = _start_sandbox(settings) if with_sandbox else None
    # After the sandbox: with it, Wavy is the sandbox (WAVY_API_URL, as the workers read it).
    typer.echo(
        reconciliation_line(
            settings.model_copy(
                update={"api_url": os.environ.get("WAVY_API_URL", settings.api_url)}
            )
        )
    )
    forwarder = ForwarderProcess(settings) if separate_forwarder else None
    if forwarder is not None:
        forwarder.start()
    try:
        _serve(uvicorn, settings, log_config)
    finally:
        if forwarder is not None:
            forwarder.stop()
        if stand_in is not None:
            stand_in.terminate()
            stand_in.wait(timeout=10)


def _start_sandbox(settings: Settings) -> subprocess.Popen[bytes]:
    """``wavy-webhooks sandbox`` beside the service, and the service's sends pointed at it
    (the workers read WAVY_API_URL from the environment)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ["WAVY_API_URL"] = f"http://127.0.0.1:{port}"
    base = f"http://127.0.0.1:{settings.port}" if settings.host in ("0.0.0.0", "::") else None
    command = [sys.executable, "-m", "app.cli", "sandbox", "--port", str(port)]
    if base is not None:
        command += ["--webhook-url", base]
    process = subprocess.Popen(command)  # noqa: S603 - our own command
    # The service takes sends once it listens: the sandbox must be there by then.
    deadline = time.monotonic() + SANDBOX_START_S
    while process.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.1)
    process.terminate()
    typer.echo(f"the sandbox did not start on port {port}", err=True)
    raise typer.Exit(1)


SANDBOX_START_S = 60.0


def _serve(uvicorn: Any, settings: Settings, log_config: dict[str, Any]) -> None:
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        log_config=log_config,
        access_log=False,  # ours (app.access) logs routes, never URLs holding webhook keys
        **server_options(settings),
        # In-flight requests wait at most writer_timeout_s for their commit, and long polls
        # at most MAX_FEED_WAIT_S; then the writer drains what it holds: a stop takes bounded
        # time, cuts no long poll off, and acknowledges nothing unsaved.
        timeout_graceful_shutdown=int(max(settings.writer_timeout_s, MAX_FEED_WAIT_S)) + 5,
    )


@cli.command()
def forward() -> None:
    """Forward stored replies and status changes to the endpoints, alone (serve starts this
    by itself with WAVY_FORWARDER=process): for a container of its own beside replicas run
    with WAVY_FORWARDER=off, or beside a bare uvicorn."""
    settings = Settings()
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_format))
    database_url = resolve_database_url(settings)
    wait_at_start(settings, database_url)
    parent = os.environ.get(PARENT_ENV)
    asyncio.run(run_apart(settings, database_url, parent=int(parent) if parent else None))


@cli.command()
def migrate() -> None:
    """Apply the database migrations (to the latest schema)."""
    settings = Settings()
    database_url = resolve_database_url(settings)
    wait_at_start(settings, database_url)
    upgrade_to_head(database_url)
    typer.echo("database schema is up to date")


@cli.command()
def purge(
    older_than: Annotated[
        str, typer.Option("--older-than", help="Age like 90d, 12h or 2w", show_default=False)
    ],
    batch_rows: Annotated[int, typer.Option(help="Rows per DELETE (one short transaction)")] = 5000,
) -> None:
    """Remove events, statuses, replies and rejected bodies older than an age, in small batches
    that never lock out the webhooks. (Or set WAVY_RETENTION for the service to do it.)"""
    try:
        age = parse_age(older_than)
    except BadAge as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    settings = Settings()

    async def run(engine: AsyncEngine) -> retention.PurgeReport:
        return await retention.purge_older_than(engine, age, batch_rows=batch_rows)

    report = run_with_engine(settings, resolve_database_url(settings), run)
    if not report.ran:
        typer.echo("another purge is running; nothing done", err=True)
        raise typer.Exit(1)
    typer.echo(f"removed everything older than {report.cutoff.isoformat(timespec='seconds')}:")
    for table, count in report.deleted.items():
        typer.echo(f"  {table:16} {count}")


@cli.command()
def doctor() -> None:
    """Check PostgreSQL's settings against what the service needs, for WAVY_WORKERS workers.
    Exits 1 if one breaks the promise that an event answered 200 survives a crash."""
    settings = Settings()
    findings = review_server(settings, resolve_database_url(settings))
    for finding in findings:
        verdict = f"{finding.level.name.lower():8}  {finding.name} = {finding.shown}"
        typer.echo(f"{verdict}: {finding.why}" if finding.why else verdict)
    if settings.database_url is None:
        typer.echo(EMBEDDED_ADVICE)
    typer.echo(reconciliation_line(settings))
    if any(finding.level is Level.CRITICAL for finding in findings):
        raise typer.Exit(1)


# What doctor adds on the embedded PostgreSQL, where its advice reads as if it were a server.
EMBEDDED_ADVICE = (
    "\nThis is the embedded PostgreSQL (no DATABASE_URL): made for trying the service and for "
    "tests. A critical line matters here too; warning and advice lines are about a server "
    "under a campaign's load, and matter only if you run production on it. To follow them, "
    "set DATABASE_URL to your own PostgreSQL (or change the embedded one with ALTER SYSTEM "
    "and a restart of serve)."
)
