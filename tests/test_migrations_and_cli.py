"""The schema only through Alembic, and the ``wavy-webhooks`` command as an operator runs it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic import command as alembic_command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, String, inspect, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.db import queries, users
from app.db.engine import normalize_database_url
from app.db.first_start import FirstStartSecrets, create_first_credentials
from app.db.migrate import alembic_config, downgrade_to_base, head_revision, upgrade_to_head
from app.db.tables import metadata
from app.rules.postgres_settings import RULES, Level, ServerFacts, Setting, review_settings
from tests.conftest import TABLES, _admin, free_port

CLI = [sys.executable, "-m", "app.cli"]


async def table_names(url: str) -> set[str]:
    engine = create_async_engine(normalize_database_url(url))
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            )
            return {row[0] for row in rows}
    finally:
        await engine.dispose()


def test_migrations_upgrade_downgrade_and_upgrade_again(empty_database: str) -> None:
    expected = {*TABLES, "alembic_version"}

    upgrade_to_head(empty_database)
    assert asyncio.run(table_names(empty_database)) == expected
    downgrade_to_base(empty_database)
    assert asyncio.run(table_names(empty_database)) == {"alembic_version"}
    upgrade_to_head(empty_database)
    assert asyncio.run(table_names(empty_database)) == expected


def primary_keys(sync: Connection) -> dict[str, list[str]]:
    inspector = inspect(sync)
    return {
        name: inspector.get_pk_constraint(name)["constrained_columns"] for name in metadata.tables
    }


def _predicate(where: object) -> str:
    return " ".join(str(where).replace("(", "").replace(")", "").split())


def index_predicates(sync: Connection) -> dict[str, str]:
    inspector = inspect(sync)
    return {
        str(index["name"]): _predicate(index["dialect_options"]["postgresql_where"])
        for name in metadata.tables
        for index in inspector.get_indexes(name)
        if index.get("dialect_options", {}).get("postgresql_where") is not None
    }


async def schema_differences(url: str) -> list[object]:
    """What Alembic's autogenerate would still change, plus what it does not compare: the
    primary keys' columns, the partial indexes' predicates and the column collations (it
    ignores a collation the database lacks and the model names)."""
    engine = create_async_engine(normalize_database_url(url))
    try:
        async with engine.connect() as conn:
            differences: list[object] = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), metadata
                )
            )
            migrated_keys = await conn.run_sync(primary_keys)
            migrated_predicates = await conn.run_sync(index_predicates)
            rows = await conn.execute(
                text(
                    "SELECT table_name, column_name, collation_name FROM information_schema.columns"
                    " WHERE table_schema = 'public' AND collation_name IS NOT NULL"
                )
            )
            migrated = {(row[0], row[1]): row[2] for row in rows}
    finally:
        await engine.dispose()
    declared = {
        (table.name, column.name): column.type.collation
        for table in metadata.tables.values()
        for column in table.columns
        if isinstance(column.type, String) and column.type.collation
    }
    if migrated != declared:
        differences.append(("collations", sorted(migrated.items()), sorted(declared.items())))
    declared_keys = {
        name: [column.name for column in table.primary_key.columns]
        for name, table in metadata.tables.items()
    }
    if migrated_keys != declared_keys:
        differences.append(("primary keys", migrated_keys, declared_keys))
    declared_predicates = {
        str(index.name): _predicate(index.dialect_options["postgresql"]["where"])
        for table in metadata.tables.values()
        for index in table.indexes
        if index.dialect_options["postgresql"]["where"] is not None
    }
    if migrated_predicates != declared_predicates:
        differences.append(("partial indexes", migrated_predicates, declared_predicates))
    return differences


def test_migrations_build_the_schema_the_tables_module_declares(empty_database: str) -> None:
    upgrade_to_head(empty_database)
    assert asyncio.run(schema_differences(empty_database)) == []


async def schema_revision(url: str) -> str:
    engine = create_async_engine(normalize_database_url(url))
    try:
        async with engine.connect() as conn:
            version = await conn.execute(text("SELECT version_num FROM alembic_version"))
            return str(version.scalar_one())
    finally:
        await engine.dispose()


async def start_replicas(url: str, count: int = 3) -> list[asyncio.subprocess.Process]:
    """``count`` replicas of a deploy starting together, each migrating first (serve does)."""
    env = {**os.environ, "DATABASE_URL": url}
    return [
        await asyncio.create_subprocess_exec(
            *CLI, "migrate", env=env, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(count)
    ]


async def failures_of(replicas: list[asyncio.subprocess.Process]) -> list[str]:
    """What each replica that failed printed."""
    finished = [await asyncio.wait_for(r.communicate(), timeout=120) for r in replicas]
    return [
        err.decode()[-2000:] for r, (_, err) in zip(replicas, finished, strict=True) if r.returncode
    ]


@pytest.mark.slow
async def test_replicas_migrating_a_new_database_at_once_all_start(empty_database: str) -> None:
    failed = await failures_of(await start_replicas(empty_database))

    assert failed == []
    assert await schema_revision(empty_database) == head_revision()
    assert await schema_differences(empty_database) == []


@pytest.mark.slow
async def test_replicas_a_release_behind_migrating_at_once_all_start(empty_database: str) -> None:
    await asyncio.to_thread(alembic_command.upgrade, alembic_config(empty_database), "0009")
    # Hold the version table until every replica waits, so that they all read the version at
    # the same moment rather than one after the other by luck of their start-up times.
    holder = await asyncpg.connect(empty_database)
    held = holder.transaction()
    await held.start()
    await holder.execute("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")
    replicas = await start_replicas(empty_database)
    waiting = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    for _ in range(600):
        # Inside a transaction pg_stat_activity is read once, then served from that snapshot.
        await holder.execute("SELECT pg_stat_clear_snapshot()")
        if await holder.fetchval(waiting) == len(replicas):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the replicas never all waited on the database")
    await held.rollback()
    await holder.close()
    failed = await failures_of(replicas)

    assert failed == []
    assert await schema_revision(empty_database) == head_revision()
    assert await schema_differences(empty_database) == []


@pytest.mark.slow
async def test_replicas_first_starting_together_create_one_key_and_one_admin(
    empty_database: str,
) -> None:
    await asyncio.to_thread(upgrade_to_head, empty_database)
    engine = create_async_engine(normalize_database_url(empty_database))

    async def first_start() -> FirstStartSecrets:
        async with engine.begin() as conn:
            return await create_first_credentials(conn, want_webhook_key=True)

    try:
        started = await asyncio.gather(*(first_start() for _ in range(3)), return_exceptions=True)
        async with engine.connect() as conn:
            keys = await queries.count_active_webhook_keys(conn)
            admins = [user.username for user in await users.list_users(conn)]
    finally:
        await engine.dispose()

    assert [type(outcome) for outcome in started] == [FirstStartSecrets] * 3  # none failed
    secrets = [s for s in started if isinstance(s, FirstStartSecrets)]
    assert sum(s.webhook_key is not None for s in secrets) == 1  # shown by one replica only
    assert sum(s.admin_token is not None for s in secrets) == 1
    assert (keys, admins) == (1, ["admin"])


def run_cli(*args: str, database_url: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    return run_cli_in(None, *args, database_url=database_url, **env_vars)


def run_cli_in(
    directory: Path | None, *args: str, database_url: str, **env_vars: str
) -> subprocess.CompletedProcess[str]:
    """The command run from ``directory`` (its .env read), else from this one."""
    env = {**os.environ, "DATABASE_URL": database_url, **env_vars}
    return subprocess.run(
        [*CLI, *args],
        env=env,
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_doctor_reports_each_checked_setting_with_the_servers_value(
    empty_database: str,
) -> None:
    async def shown(name: str) -> str:
        engine = create_async_engine(normalize_database_url(empty_database))
        try:
            async with engine.connect() as conn:
                return str(await conn.scalar(text(f"SHOW {name}")))
        finally:
            await engine.dispose()

    report = run_cli("doctor", database_url=empty_database)
    crowded = run_cli("doctor", database_url=empty_database, WAVY_WORKERS="50")

    assert report.returncode == 0, report.stdout + report.stderr  # nothing breaks the promise
    lines = report.stdout.splitlines()
    findings, said = lines[:-1], lines[-1]
    assert {line.split()[1] for line in findings} == set(RULES)
    # Last, whether Wavy is asked for the statuses that never came (docs/reconciliation.md).
    assert said.startswith("Reconciliation  off: set WAVY_API_USERNAME and WAVY_API_TOKEN")
    assert f"ok        synchronous_commit = {asyncio.run(shown('synchronous_commit'))}" in lines
    assert "ok        max_connections" in report.stdout
    assert "warning   max_connections" in crowded.stdout  # 50 workers need ~1,750 connections


def test_doctor_exits_1_when_commits_would_not_survive_a_crash(empty_database: str) -> None:
    name = make_url(empty_database).database
    asyncio.run(_admin(empty_database, f'ALTER DATABASE "{name}" SET synchronous_commit = off'))

    report = run_cli("doctor", database_url=empty_database)

    assert report.returncode == 1
    assert report.stdout.splitlines()[0].startswith("critical  synchronous_commit = off: ")


def test_settings_review_names_the_worst_first_and_reads_units() -> None:
    findings = review_settings(
        {
            "shared_buffers": Setting("16384", "8kB"),
            "max_wal_size": Setting("8192", "MB"),
            "fsync": Setting("off"),
            "transaction_read_only": Setting("on"),
            "autovacuum": Setting("off"),
            "server_version_num": Setting("170002"),
            "server_encoding": Setting("LATIN1"),
        },
        ServerFacts(connections_needed=50, id_index_bytes=2**20),
    )

    assert [(f.name, f.level, f.shown) for f in findings] == [
        ("fsync", Level.CRITICAL, "off"),
        ("transaction_read_only", Level.CRITICAL, "on"),
        ("server_encoding", Level.WARNING, "LATIN1"),
        ("autovacuum", Level.WARNING, "off"),
        ("shared_buffers", Level.ADVICE, "128 MB"),
        ("server_version_num", Level.OK, "17.2"),
        ("max_wal_size", Level.OK, "8 GB"),
    ]


def test_doctor_warns_when_the_id_indexes_outgrow_the_shared_buffers() -> None:
    """Past the buffers, every new message reads index pages back from the operating system
    (arrays ran at half their rate at 10M messages with 128 MB): doctor names their size."""

    def verdict(buffers: Setting, index_bytes: int) -> tuple[Level, str]:
        [finding] = review_settings({"shared_buffers": buffers}, ServerFacts(10, index_bytes))
        return finding.level, finding.why

    level, why = verdict(Setting("16384", "8kB"), 200 * 2**20)  # 128 MB against 200 MB
    assert level is Level.WARNING
    assert "(200 MB)" in why
    assert verdict(Setting("16384", "8kB"), 50 * 2**20)[0] is Level.ADVICE  # fits, small
    assert verdict(Setting("4096", "MB"), 200 * 2**20)[0] is Level.OK


async def test_the_id_indexes_doctor_weighs_exist_in_the_schema(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        present = await conn.scalar(
            text("SELECT count(*) FROM pg_class WHERE relkind = 'i' AND relname = ANY(:names)"),
            {"names": list(queries.ID_INDEXES)},
        )
        measured = await queries.id_index_bytes(conn)
    assert present == len(queries.ID_INDEXES)
    assert measured >= len(queries.ID_INDEXES) * 8192  # each at least its first page


def test_cli_keys_add_list_revoke(empty_database: str) -> None:
    assert run_cli("migrate", database_url=empty_database).returncode == 0

    added = run_cli(
        "keys", "add", "--sub-account", "acme", "--key", "k" * 24, database_url=empty_database
    )
    listed = run_cli("keys", "list", database_url=empty_database)
    revoked = run_cli("keys", "revoke", "1", database_url=empty_database)
    again = run_cli("keys", "revoke", "1", database_url=empty_database)

    assert added.returncode == 0, added.stderr
    assert f"/v1/webhooks/dlr?key={'k' * 24}" in added.stdout
    assert "/v1/webhooks/callback?key=" in added.stdout
    assert "/v1/webhooks/mo?key=" in added.stdout
    assert "acme" in listed.stdout
    assert "kkkkkk…" in listed.stdout
    assert "k" * 24 not in listed.stdout
    assert revoked.returncode == 0
    assert again.returncode == 1


def test_cli_refuses_a_short_key(empty_database: str) -> None:
    result = run_cli("keys", "add", "--key", "short", database_url=empty_database)

    assert result.returncode == 2


async def test_cli_rejected_list_and_show(hook: object, database_url: str) -> None:
    await hook("dlr", content=b'{"broken": ')  # type: ignore[operator]

    listed = await asyncio.to_thread(run_cli, "rejected", "list", database_url=database_url)
    shown = await asyncio.to_thread(run_cli, "rejected", "show", "1", database_url=database_url)

    assert "malformed_json" in listed.stdout
    assert "/dlr" in listed.stdout
    assert shown.stdout == '{"broken": '


def test_every_command_has_help() -> None:
    for command in (
        [],
        ["serve"],
        ["migrate"],
        ["keys"],
        ["keys", "add"],
        ["keys", "list"],
        ["keys", "revoke"],
        ["rejected"],
        ["rejected", "list"],
        ["rejected", "show"],
        ["rejected", "replay"],
        ["purge"],
        ["users", "enable"],
    ):
        result = subprocess.run(
            [*CLI, *command, "--help"], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, (command, result.stderr)
        assert "Usage" in result.stdout


class Service:
    """``wavy-webhooks serve`` in a subprocess, as a user would start it."""

    def __init__(self, env: dict[str, str], port: int, log_dir: Path, *options: str) -> None:
        self.port = port
        self.log = log_dir / f"serve-{time.monotonic_ns()}.log"
        self.out = self.log.open("w")
        self.process = subprocess.Popen(
            [*CLI, "serve", "--port", str(port), *options],
            env=env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> str:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited: {self.log.read_text()}")
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/openapi.json", timeout=1)
                return self.log.read_text()
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError(f"serve did not start: {self.log.read_text()}")

    def stop(self, how: signal.Signals = signal.SIGINT) -> None:
        self.process.send_signal(how)
        self.process.wait(timeout=60)
        self.out.close()


class LateDatabase:
    """A port that refuses connections until ``open()``, then relays them to the real
    PostgreSQL: a database that comes up after the service that needs it."""

    def __init__(self, url: str) -> None:
        real = make_url(url)
        # The embedded server listens on a Unix socket only (its directory is the URL's host).
        socket_dir = real.query.get("host")
        self.socket = f"{socket_dir}/.s.PGSQL.{real.port or 5432}" if socket_dir else None
        self.target = (real.host or "127.0.0.1", real.port or 5432)
        self.port = free_port()
        self.url = (
            real.difference_update_query(["host"])
            .set(host="127.0.0.1", port=self.port)
            .render_as_string(hide_password=False)
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.socket is not None:
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.socket))
        else:
            up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def open(self) -> None:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._relay, "127.0.0.1", self.port), self._loop
        )
        started.result(timeout=10)

    def close(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)


@pytest.mark.slow
def test_serve_waits_for_a_database_that_comes_up_after_it(
    empty_database: str, tmp_path: Path
) -> None:
    database = LateDatabase(empty_database)
    env = {**os.environ, "DATABASE_URL": database.url, "WAVY_DB_START_TIMEOUT_S": "60"}
    service = Service(env, free_port(), tmp_path)
    try:
        time.sleep(3)
        waited = service.process.poll() is None
        said = service.log.read_text()
        database.open()
        service.wait_ready()
        ready = httpx.get(f"http://127.0.0.1:{service.port}/readyz", timeout=10)
    finally:
        service.stop()
        database.close()

    assert waited  # still running after 3 s with no database, not crashed
    assert f"waiting for PostgreSQL at 127.0.0.1:{database.port}/" in said
    assert ready.status_code == 200


def test_serve_gives_up_when_the_database_stays_away_and_says_so_in_one_line() -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    started = time.monotonic()
    result = run_cli("serve", database_url=closed, WAVY_DB_START_TIMEOUT_S="1")

    assert result.returncode == 1
    assert time.monotonic() - started < 30
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("wavy-webhooks: PostgreSQL at 127.0.0.1:")
    assert "did not accept a connection within 1 s" in last_line
    assert "Traceback" not in result.stderr


def test_commands_against_an_absent_or_refusing_database_fail_in_one_line(
    empty_database: str,
) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    no_such_role = make_url(empty_database).set(username="nobody").render_as_string()

    listed = run_cli("keys", "list", database_url=closed)
    migrated = run_cli("migrate", database_url=no_such_role, WAVY_DB_START_TIMEOUT_S="60")

    assert listed.returncode == 1
    assert len(listed.stderr.strip().splitlines()) == 1
    assert "PostgreSQL at 127.0.0.1:" in listed.stderr
    assert "is not reachable" in listed.stderr
    assert migrated.returncode == 1  # at once: waiting cannot fix a wrong role
    assert 'refused the connection: role "nobody" does not exist' in migrated.stderr
    assert "Traceback" not in listed.stderr + migrated.stderr


def test_serve_warns_at_start_when_commits_would_not_survive_a_crash(
    empty_database: str, tmp_path: Path
) -> None:
    name = make_url(empty_database).database
    asyncio.run(_admin(empty_database, f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
    service = Service({**os.environ, "DATABASE_URL": empty_database}, free_port(), tmp_path)
    try:
        output = service.wait_ready()
    finally:
        service.stop()

    assert "PostgreSQL's synchronous_commit is off: commits return before their WAL" in output
    assert "wavy-webhooks doctor lists every check" in output


@pytest.mark.slow
def test_a_stop_lets_a_long_poll_finish_even_with_a_short_writer_timeout(
    empty_database: str, tmp_path: Path
) -> None:
    """A long poll may wait 10 s; the graceful stop must outlast it, not only the writer's
    timeout (1 s here), or the reader's connection is cut."""
    env = {**os.environ, "DATABASE_URL": empty_database, "WAVY_WRITER_TIMEOUT_S": "1"}
    port = free_port()
    service = Service(env, port, tmp_path)
    try:
        output = service.wait_ready()
        token = re.search(r"AuthenticationToken\s+(\S+)", output)
        assert token, output
        with ThreadPoolExecutor(1) as pool:
            poll = pool.submit(
                httpx.get,
                f"http://127.0.0.1:{port}/v1/sms/receive/changes",
                params={"wait": 8},
                headers={"UserName": "admin", "AuthenticationToken": token.group(1)},
                timeout=30,
            )
            time.sleep(1)  # the poll is waiting
            service.process.send_signal(signal.SIGTERM)
            answer = poll.result()
    finally:
        service.stop(signal.SIGTERM)

    assert answer.status_code == 200
    assert answer.json()["items"] == []
    assert service.process.returncode == 0


@pytest.mark.slow
def test_serve_without_database_url_uses_embedded_postgres_and_keeps_data(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "WAVY_DATABASE_URL")}
    env["WAVY_DATA_DIR"] = str(tmp_path / "data")
    port = free_port()
    dlr = {"id": "embedded-1", "sentStatusCode": 2, "deliveredStatusCode": 4}

    first = Service(env, port, tmp_path)
    try:
        output = first.wait_ready()
        match = re.search(r"/v1/webhooks/dlr\?key=(\S+)", output)
        assert match, output
        key = match.group(1)
        stored = httpx.post(f"http://127.0.0.1:{port}/v1/webhooks/dlr?key={key}", json=dlr)
        assert stored.json() == {"received": 1, "duplicates": 0}
        # A first start also makes an admin, so the dashboard can be opened at once.
        token = re.search(r"AuthenticationToken\s+(\S+)", output)
        assert token, output
        assert f"http://127.0.0.1:{port}/dashboard" in output
        me = httpx.get(
            f"http://127.0.0.1:{port}/v1/me",
            headers={"UserName": "admin", "AuthenticationToken": token.group(1)},
        )
        assert me.json() == {"userName": "admin", "role": "admin", "subAccount": None}
    finally:
        first.stop()

    # A command in a script or a pipe: its output alone, no notice about the database mixed in.
    listed = subprocess.run(
        [*CLI, "keys", "list"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr == ""
    doctor = subprocess.run(
        [*CLI, "doctor"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert "This is the embedded PostgreSQL" in doctor.stdout  # its advice says where it applies
    assert "(none)" in listed.stdout or "-" in listed.stdout

    second = Service(env, port, tmp_path)
    try:
        output = second.wait_ready()
        assert key not in output  # the key survived: no new one was made, none is shown
        assert "AuthenticationToken" not in output  # and so did the admin
        # Every start says where the webhooks and the dashboard are, with no secret.
        assert f"http://127.0.0.1:{port}/v1/webhooks/dlr?key=YOUR_KEY" in output
        assert f"http://127.0.0.1:{port}/dashboard" in output
        again = httpx.post(f"http://127.0.0.1:{port}/v1/webhooks/dlr?key={key}", json=dlr)
        assert again.json() == {"received": 1, "duplicates": 1}  # the first DLR is still there
        home = httpx.get(f"http://127.0.0.1:{port}/")
        assert (home.status_code, home.headers["location"]) == (307, "/dashboard")
    finally:
        second.stop(signal.SIGTERM)  # what docker stop and systemd send
    pgdata = tmp_path / "data" / "pgdata"
    assert (pgdata / "PG_VERSION").exists()
    # The embedded server stopped with the service (it removes postmaster.pid when it does).
    assert not (pgdata / "postmaster.pid").exists()
    assert second.process.returncode == 0


def test_cli_users_add_list_disable_rotate(empty_database: str) -> None:
    assert run_cli("migrate", database_url=empty_database).returncode == 0

    admin = run_cli("users", "add", "boss", "--role", "admin", database_url=empty_database)
    user = run_cli(
        "users",
        "add",
        "ana",
        "--role",
        "user",
        "--sub-account",
        "acme",
        "--email",
        "ana@acme.test",
        "--token",
        "t" * 20,
        database_url=empty_database,
    )
    no_sub = run_cli("users", "add", "bob", "--role", "user", database_url=empty_database)
    taken = run_cli("users", "add", "ana", "--role", "admin", database_url=empty_database)
    rotated = run_cli("users", "rotate-token", "ana", database_url=empty_database)
    disabled = run_cli("users", "disable", "ana", database_url=empty_database)
    listed = run_cli("users", "list", database_url=empty_database)

    assert admin.returncode == 0
    assert "AuthenticationToken: " in admin.stdout
    assert user.returncode == 0
    assert f"AuthenticationToken: {'t' * 20}" in user.stdout
    assert no_sub.returncode == 2
    assert taken.returncode == 1
    assert rotated.returncode == 0
    assert "t" * 20 not in rotated.stdout
    assert disabled.returncode == 0
    assert "ana" in listed.stdout
    assert "disabled" in listed.stdout
    assert "acme" in listed.stdout
    assert "t" * 20 not in listed.stdout


def test_a_disabled_user_can_be_enabled_again(empty_database: str) -> None:
    assert run_cli("migrate", database_url=empty_database).returncode == 0
    run_cli("users", "add", "ana", "--role", "admin", database_url=empty_database)
    run_cli("users", "disable", "ana", database_url=empty_database)

    enabled = run_cli("users", "enable", "ana", database_url=empty_database)
    again = run_cli("users", "enable", "ana", database_url=empty_database)
    listed = run_cli("users", "list", database_url=empty_database)

    assert enabled.returncode == 0
    assert again.returncode == 1  # not disabled: nothing to do, and it says so
    assert "disabled" not in listed.stdout


def test_version_and_serve_help_show_defaults_and_environment_variables() -> None:
    version = subprocess.run(
        [*CLI, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    serve_help = subprocess.run(
        [*CLI, "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )

    assert version.returncode == 0
    assert version.stdout.startswith("wavy-webhooks ")
    assert "WAVY_PORT" in serve_help.stdout
    assert "default: 8000" in serve_help.stdout
    assert "WAVY_WORKERS" in serve_help.stdout


def test_a_bare_command_group_prints_its_help_and_exits_0() -> None:
    for group in ([], ["keys"], ["optouts"], ["endpoints"]):
        done = subprocess.run(
            [*CLI, *group], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, (group, done.stderr)
        assert "Usage:" in done.stdout


def test_help_reads_as_sentences_however_the_docstrings_break() -> None:
    """A docstring's line breaks cut sentences in two in the list of commands."""
    done = subprocess.run(
        [*CLI, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert "alone (serve starts this by itself with WAVY_FORWARDER=process)" in done.stdout
    assert "Exits 1 if one breaks the promise" in done.stdout


def test_a_command_loads_only_its_own_module() -> None:
    """What made every call take over a second: each loaded the web framework, the HTTP
    client and the migrations, whatever it was (figures in docs/operations.md)."""
    probe = (
        "import sys; from app.cli import register_commands; register_commands(['keys', 'list']);"
        "print(sorted(m for m in ('fastapi', 'aiohttp', 'alembic', 'uvicorn') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_every_command_is_registered_by_the_module_main_names() -> None:
    from app.cli import COMMAND_MODULES, register_commands
    from app.cli.root import cli

    register_commands([])
    names = {
        command.name or getattr(command.callback, "__name__", "")
        for command in cli.registered_commands
    }
    names |= {group.name for group in cli.registered_groups}
    assert names == set(COMMAND_MODULES)
