"""The ``wavy-webhooks`` command: serve, migrate, webhook keys, rejected bodies, users, the stats
rollup, and a check of PostgreSQL's settings."""

from __future__ import annotations

import asyncio
import atexit
import enum
import logging.config
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC
from functools import partial
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.api.paging import MAX_FEED_WAIT_S
from app.db import queries, rejected, retention, stats, users
from app.db.engine import (
    CannotConnect,
    connections_per_worker,
    create_engine,
    database_unavailable,
    sqlstate,
    start_embedded_postgres,
    sync_url,
    wait_for_database,
    where,
)
from app.db.first_start import create_first_credentials
from app.db.migrate import upgrade_to_head
from app.http_protocol import raise_open_files_limit, server_options
from app.logs import logging_config
from app.metrics import MULTIPROC_ENV, prepare_multiprocess_dir
from app.rules.credentials import MIN_CHOSEN_SECRET_CHARS
from app.rules.postgres_settings import ADMIN_CONNECTIONS, Finding, Level, review_settings
from app.rules.retention import BadAge, parse_age
from app.rules.scope import Role
from app.settings import Settings

T = TypeVar("T")

log = logging.getLogger(__name__)

cli = typer.Typer(
    help="Receiver for Wavy SMS callbacks, DLRs and MOs, stored in PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"wavy-webhooks {version('wavy-webhooks')}")
        raise typer.Exit()


@cli.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Receiver for Wavy SMS callbacks, DLRs and MOs, stored in PostgreSQL."""


keys_cli = typer.Typer(help="Webhook keys (one per sub-account; pasted into Wavy's portal).")
rejected_cli = typer.Typer(help="Rejected bodies: bodies the webhooks refused, kept raw.")
users_cli = typer.Typer(help="Read-API users: admins see every sub-account, users their own.")
stats_cli = typer.Typer(help="The delivery statistics' rollup, checked against the stored rows.")
cli.add_typer(keys_cli, name="keys", no_args_is_help=True)
cli.add_typer(rejected_cli, name="rejected", no_args_is_help=True)
cli.add_typer(users_cli, name="users", no_args_is_help=True)
cli.add_typer(stats_cli, name="stats", no_args_is_help=True)


def resolve_database_url(settings: Settings) -> str:
    """DATABASE_URL when set; otherwise the embedded PostgreSQL under WAVY_DATA_DIR."""
    if settings.database_url:
        return sync_url(settings.database_url)
    typer.echo(
        f"DATABASE_URL is not set: using the embedded PostgreSQL in {settings.data_dir}", err=True
    )
    return start_embedded_postgres(settings.data_dir)


def wait_at_start(settings: Settings, database_url: str) -> None:
    """serve and migrate start with their database, or before it (containers, an init step)."""
    asyncio.run(wait_for_database(settings, database_url, timeout_s=settings.db_start_timeout_s))


def run_with_connection(
    settings: Settings, database_url: str, work: Callable[[AsyncConnection], Awaitable[T]]
) -> T:
    """For work done in one transaction (most commands)."""

    async def in_transaction(engine: AsyncEngine) -> T:
        async with engine.begin() as conn:
            return await work(conn)

    return run_with_engine(settings, database_url, in_transaction)


UNDEFINED_TABLE = "42P01"


def run_with_engine(
    settings: Settings, database_url: str, work: Callable[[AsyncEngine], Awaitable[T]]
) -> T:
    """For work that manages its own transactions (purge batches, replays)."""

    async def main() -> T:
        engine = create_engine(settings, database_url, for_requests=False)
        try:
            return await work(engine)
        except Exception as error:
            # An operator's command against a database that is away: one line that says so
            # (main), not a page of traceback through the driver.
            if sqlstate(error) == UNDEFINED_TABLE:
                raise CannotConnect(
                    f"the database at {where(database_url)} has no schema yet: run "
                    "`wavy-webhooks migrate` (serve migrates at start)"
                ) from None
            if not database_unavailable(error):
                raise
            raise CannotConnect(
                f"PostgreSQL at {where(database_url)} is not reachable: {error}"
            ) from None
        finally:
            await engine.dispose()

    return asyncio.run(main())


def webhook_urls(settings: Settings, key: str) -> list[str]:
    base = settings.webhook_base_url()
    return [f"{base}/v1/webhooks/{kind}?key={key}" for kind in ("callback", "dlr", "mo")]


def print_webhook_urls(settings: Settings, key: str, sub_account: str | None) -> None:
    labels = ("Callback URL", "DLR URL     ", "MO URL      ")
    typer.echo(f"Webhook key for sub-account {sub_account or '(none)'}; paste into Wavy's portal:")
    for label, url in zip(labels, webhook_urls(settings, key), strict=True):
        typer.echo(f"  {label}  {url}")
    typer.echo("The key is shown only now; it is stored hashed.")


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
    if metrics_dir is None and settings.workers > 1:
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
    if created.admin_token:
        typer.echo("No read-API user existed, so an admin was created (token shown only now):")
        typer.echo("  UserName             admin")
        typer.echo(f"  AuthenticationToken  {created.admin_token}")
        typer.echo(f"  Dashboard            {settings.webhook_base_url()}/dashboard")

    for finding in review_server(settings, database_url):
        if finding.level >= Level.WARNING:
            log.warning(
                "PostgreSQL's %s is %s: %s (wavy-webhooks doctor lists every check)",
                finding.name,
                finding.shown,
                finding.why,
            )

    raise_open_files_limit(settings.max_connections)
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


@keys_cli.command("add")
def keys_add(
    sub_account: Annotated[
        str | None, typer.Option("--sub-account", help="Sub-account whose traffic uses this key")
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="Use this key instead of a random one (min 16 chars)")
    ] = None,
) -> None:
    """Create a webhook key and print the three URLs to paste into Wavy's portal."""
    if key is not None and len(key) < MIN_CHOSEN_SECRET_CHARS:
        typer.echo(f"a key must be at least {MIN_CHOSEN_SECRET_CHARS} characters", err=True)
        raise typer.Exit(2)
    settings = Settings()
    url = resolve_database_url(settings)

    async def add(conn: AsyncConnection) -> tuple[int, str]:
        return await queries.add_webhook_key(conn, sub_account=sub_account, key=key)

    key_id, created = run_with_connection(settings, url, add)
    typer.echo(f"key #{key_id} created")
    print_webhook_urls(settings, created, sub_account)


@keys_cli.command("list")
def keys_list() -> None:
    """List webhook keys (only their first characters are known)."""
    settings = Settings()
    found = run_with_connection(settings, resolve_database_url(settings), queries.list_webhook_keys)
    typer.echo(f"{'id':>4}  {'prefix':8}  {'sub-account':20}  {'created':25}  revoked")
    for info in found:
        typer.echo(
            f"{info.id:>4}  {info.key_prefix + '…':8}  {info.sub_account or '-':20}  "
            f"{info.created_at.isoformat(timespec='seconds'):25}  "
            f"{info.revoked_at.isoformat(timespec='seconds') if info.revoked_at else '-'}"
        )


@keys_cli.command("revoke")
def keys_revoke(
    key_id: Annotated[int, typer.Argument(help="The key's id (see keys list)")],
) -> None:
    """Revoke a webhook key (every worker refuses it at once with 401)."""
    settings = Settings()

    async def revoke(conn: AsyncConnection) -> bool:
        return await queries.revoke_webhook_key(conn, key_id)

    if not run_with_connection(settings, resolve_database_url(settings), revoke):
        typer.echo(f"no active key #{key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"key #{key_id} revoked")


@rejected_cli.command("list")
def rejected_list(
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 50,
) -> None:
    """List refused bodies, newest first, with the reason and a preview."""
    settings = Settings()

    async def fetch(conn: AsyncConnection) -> list[rejected.RejectedRow]:
        return await rejected.list_rejected_bodies(conn, limit=limit)

    rows = run_with_connection(settings, resolve_database_url(settings), fetch)
    for row in rows:
        preview = row.body[:60].decode("utf-8", "replace").replace("\n", " ")
        more = "… (truncated)" if row.body_truncated else ("…" if len(row.body) > 60 else "")
        typer.echo(
            f"#{row.id} {row.received_at.isoformat(timespec='seconds')} {row.method} "
            f"/{row.endpoint} {row.status_code} {row.reason} "
            f"sub-account={row.sub_account or '-'} {len(row.body)}B  {preview}{more}"
            + (f" [refused {row.repeats} more time(s)]" if row.repeats else "")
            + (" [replayed]" if row.replayed_at else "")
        )
    if not rows:
        typer.echo("no rejected bodies")


@rejected_cli.command("show")
def rejected_show(
    rejected_id: Annotated[int, typer.Argument(help="Id from `rejected list`")],
) -> None:
    """Write one refused body, byte for byte, to standard output."""
    settings = Settings()

    async def fetch(conn: AsyncConnection) -> bytes | None:
        return await rejected.get_rejected_body(conn, rejected_id)

    body = run_with_connection(settings, resolve_database_url(settings), fetch)
    if body is None:
        typer.echo(f"no rejected body #{rejected_id}", err=True)
        raise typer.Exit(1)
    sys.stdout.buffer.write(body)


@rejected_cli.command("replay")
def rejected_replay(
    ids: Annotated[
        list[int] | None, typer.Argument(help="Ids from `rejected list`", show_default=False)
    ] = None,
    replay_all: Annotated[
        bool, typer.Option("--all", help="Every rejected body not replayed yet")
    ] = False,
) -> None:
    """Ingest refused bodies again (after a fix), as if they had just been accepted, with their
    original receive time. Bodies still refused stay where they are; exit code 1 if any."""
    if bool(ids) == replay_all:
        typer.echo("give rejected-body ids or --all (not both)", err=True)
        raise typer.Exit(2)
    settings = Settings()

    async def run(engine: AsyncEngine) -> list[rejected.ReplayResult]:
        chosen = ids or await rejected.pending_rejected_ids(engine)
        return [
            await rejected.replay_rejected(engine, rejected_id, max_items=settings.max_items)
            for rejected_id in chosen
        ]

    results = run_with_engine(settings, resolve_database_url(settings), run)
    for result in results:
        if result.outcome == "stored":
            line = f"stored ({result.stored} new, {result.duplicates} already stored)"
        elif result.outcome == "still_refused":
            line = f"still refused: {result.reason}"
        elif result.outcome == "cut_off":
            line = "not replayable: only the start of the body was kept"
        else:
            line = "no such rejected body"
        typer.echo(f"#{result.rejected_id} {line}")
    if not results:
        typer.echo("nothing to replay")
    if any(result.outcome != "stored" for result in results):
        raise typer.Exit(1)


@users_cli.command("add")
def users_add(
    username: Annotated[str, typer.Argument(help="Login name (the UserName header)")],
    role: Annotated[Role, typer.Option(help="admin: every sub-account; user: one")],
    sub_account: Annotated[
        str | None, typer.Option("--sub-account", help="Required for role user")
    ] = None,
    email: Annotated[str | None, typer.Option(help="Also accepted as UserName")] = None,
    token: Annotated[
        str | None,
        typer.Option(help=f"Use this token (min {MIN_CHOSEN_SECRET_CHARS} chars), else random"),
    ] = None,
) -> None:
    """Create a read-API user and print its token (once; only a hash is stored)."""
    if role is Role.USER and not sub_account:
        typer.echo("a user needs --sub-account", err=True)
        raise typer.Exit(2)
    if token is not None and len(token) < MIN_CHOSEN_SECRET_CHARS:
        typer.echo(f"a token must be at least {MIN_CHOSEN_SECRET_CHARS} characters", err=True)
        raise typer.Exit(2)
    settings = Settings()

    async def add(conn: AsyncConnection) -> str:
        return await users.add_user(
            conn, username=username, role=role, sub_account=sub_account, email=email, token=token
        )

    try:
        created = run_with_connection(settings, resolve_database_url(settings), add)
    except IntegrityError:
        typer.echo("that username or e-mail is taken", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"user {username} ({role.value}) created")
    typer.echo(f"AuthenticationToken: {created}")
    typer.echo("The token is shown only now; it is stored hashed.")


@users_cli.command("list")
def users_list() -> None:
    """List read-API users."""
    settings = Settings()
    found = run_with_connection(settings, resolve_database_url(settings), users.list_users)
    typer.echo(f"{'username':20}  {'role':5}  {'sub-account':20}  {'e-mail':30}  status")
    for user in found:
        status = "disabled" if user.disabled_at else "active"
        typer.echo(
            f"{user.username:20}  {user.role:5}  {user.sub_account or '-':20}  "
            f"{user.email or '-':30}  {status}"
        )


@users_cli.command("disable")
def users_disable(username: Annotated[str, typer.Argument()]) -> None:
    """Disable a user (its requests get 401 at once)."""
    settings = Settings()

    async def disable(conn: AsyncConnection) -> bool:
        return await users.disable_user(conn, username)

    if not run_with_connection(settings, resolve_database_url(settings), disable):
        typer.echo(f"no active user {username}", err=True)
        raise typer.Exit(1)
    typer.echo(f"user {username} disabled")


@users_cli.command("enable")
def users_enable(username: Annotated[str, typer.Argument()]) -> None:
    """Let a disabled user log in again (with the token it had)."""
    settings = Settings()

    async def enable(conn: AsyncConnection) -> bool:
        return await users.enable_user(conn, username)

    if not run_with_connection(settings, resolve_database_url(settings), enable):
        typer.echo(f"no disabled user {username}", err=True)
        raise typer.Exit(1)
    typer.echo(f"user {username} enabled")


@users_cli.command("rotate-token")
def users_rotate_token(username: Annotated[str, typer.Argument()]) -> None:
    """Give a user a new random token (the old one stops working at once)."""
    settings = Settings()

    async def rotate(conn: AsyncConnection) -> str | None:
        return await users.rotate_token(conn, username)

    token = run_with_connection(settings, resolve_database_url(settings), rotate)
    if token is None:
        typer.echo(f"no user {username}", err=True)
        raise typer.Exit(1)
    typer.echo(f"AuthenticationToken: {token}")


def _print_rollup_differences(differences: list[stats.RollupDifference], limit: int) -> None:
    typer.echo(
        f"{'sub-account':16}  {'hour':16}  {'campaign':12}  {'carrier':10}  {'metric':18}  "
        f"{'value':>6}  {'kept':>8}  {'counted':>8}"
    )
    for d in differences[:limit]:
        typer.echo(
            f"{d.sub_account or '-':16}  {d.hour.astimezone(UTC):%Y-%m-%dT%H:%M}  "
            f"{d.campaign_id or '-':12}  {d.carrier_name or '-':10}  {d.metric:18}  "
            f"{d.value:>6}  {d.kept:>8}  {d.counted:>8}"
        )
    if len(differences) > limit:
        typer.echo(f"... and {len(differences) - limit} more")


def review_server(settings: Settings, database_url: str) -> list[Finding]:
    """PostgreSQL's settings against what ``settings.workers`` workers need."""
    needed = settings.workers * connections_per_worker(settings) + ADMIN_CONNECTIONS

    async def review(conn: AsyncConnection) -> list[Finding]:
        return review_settings(await queries.server_settings(conn), needed)

    return run_with_connection(settings, database_url, review)


@cli.command()
def doctor() -> None:
    """Check PostgreSQL's settings against what the service needs, for WAVY_WORKERS workers.
    Exits 1 if one breaks the promise that an event answered 200 survives a crash."""
    settings = Settings()
    findings = review_server(settings, resolve_database_url(settings))
    for finding in findings:
        verdict = f"{finding.level.name.lower():8}  {finding.name} = {finding.shown}"
        typer.echo(f"{verdict}: {finding.why}" if finding.why else verdict)
    if any(finding.level is Level.CRITICAL for finding in findings):
        raise typer.Exit(1)


@stats_cli.command("verify")
def stats_verify(
    show: Annotated[int, typer.Option(help="List at most this many differences")] = 20,
) -> None:
    """Compare the stats rollup with a count of the stored messages and replies (reads them
    all; safe while the service runs). Exits 1 if any count differs."""
    settings = Settings()
    differences = run_with_connection(
        settings, resolve_database_url(settings), stats.rollup_differences
    )
    if not differences:
        typer.echo("the stats rollup equals a count of the stored rows")
        return
    typer.echo(f"{len(differences)} rollup count(s) differ from the stored rows:")
    _print_rollup_differences(differences, show)
    typer.echo("wavy-webhooks stats repair corrects them")
    raise typer.Exit(1)


@stats_cli.command("repair")
def stats_repair() -> None:
    """Correct every rollup count that differs from a count of the stored rows (safe while the
    service runs: no writer waits for it)."""
    settings = Settings()
    repaired = run_with_connection(settings, resolve_database_url(settings), stats.repair_rollup)
    typer.echo(f"{repaired} rollup count(s) corrected")


def main() -> None:
    try:
        cli()
    except ValidationError as error:  # from Settings(): name the variable, skip the traceback
        for problem in error.errors():
            name = "_".join(str(part) for part in problem["loc"]).upper()
            typer.echo(f"invalid setting WAVY_{name}: {problem['msg']}", err=True)
        raise SystemExit(2) from None
    except CannotConnect as error:
        typer.echo(f"wavy-webhooks: {error}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
