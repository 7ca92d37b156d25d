"""Alembic environment: runs migrations on the async engine against app.db.tables.metadata."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app.db.engine import normalize_database_url
from app.db.tables import metadata
from app.settings import Settings

config = context.config


def database_url() -> str:
    # app.db.migrate passes the URL in; a developer's `alembic` call falls back to the env.
    url = config.get_main_option("sqlalchemy.url") or Settings().database_url
    if not url:
        raise RuntimeError("set DATABASE_URL to run alembic directly")
    return url


def run_migrations_offline() -> None:
    context.configure(
        url=normalize_database_url(database_url()),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


# Replicas of one deploy start together, and each migrates first (serve does): without a lock
# each reads the same version, runs the same DDL, and all but one fail at start. The first to
# take the lock migrates; the others wait for its commit, then read the new version and find
# nothing to do. Taken before Alembic reads the version table, released with the transaction
# (every upgrade is one transaction: PostgreSQL's DDL is transactional).
MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(hashtext('wavy-webhooks migrate'))"


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        connection.execute(text(MIGRATION_LOCK))
        context.run_migrations()


async def run_migrations_online() -> None:
    engine = create_async_engine(normalize_database_url(database_url()), poolclass=NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
