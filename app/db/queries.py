"""Small, infrequent queries: webhook keys and the server's settings. (The hot write path is
ingest.py; rejected bodies are rejected.py.)"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db.tables import webhook_keys
from app.rules.credentials import KnownKey, generate_key, hash_key, key_prefix
from app.rules.postgres_settings import RULES, Setting


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    sub_account: str | None
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None


async def add_webhook_key(
    conn: AsyncConnection, *, sub_account: str | None, key: str | None = None
) -> tuple[int, str]:
    """Store a key (hashed) and return its id and the key itself, which is never stored."""
    key = key or generate_key()
    key_id = await conn.scalar(
        insert(webhook_keys)
        .values(sub_account=sub_account, key_hash=hash_key(key), key_prefix=key_prefix(key))
        .returning(webhook_keys.c.id)
    )
    assert key_id is not None
    return key_id, key


async def list_webhook_keys(conn: AsyncConnection) -> list[KeyInfo]:
    rows = await conn.execute(
        select(
            webhook_keys.c.id,
            webhook_keys.c.sub_account,
            webhook_keys.c.key_prefix,
            webhook_keys.c.created_at,
            webhook_keys.c.revoked_at,
        ).order_by(webhook_keys.c.id)
    )
    return [KeyInfo(*row) for row in rows]


async def revoke_webhook_key(conn: AsyncConnection, key_id: int) -> bool:
    result = await conn.execute(
        update(webhook_keys)
        .where(webhook_keys.c.id == key_id, webhook_keys.c.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    return bool(result.rowcount)


async def count_active_webhook_keys(conn: AsyncConnection) -> int:
    count = await conn.scalar(
        select(func.count()).select_from(webhook_keys).where(webhook_keys.c.revoked_at.is_(None))
    )
    return int(count or 0)


async def load_active_keys(conn: AsyncConnection) -> list[KnownKey]:
    rows = await conn.execute(
        select(webhook_keys.c.key_hash, webhook_keys.c.sub_account).where(
            webhook_keys.c.revoked_at.is_(None)
        )
    )
    return [KnownKey(key_hash=row.key_hash, sub_account=row.sub_account) for row in rows]


async def schema_revision(conn: AsyncConnection) -> str | None:
    """The migration the database is at (None before the first one)."""
    found = await conn.execute(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
    if not found.scalar():
        return None
    revision: str | None = await conn.scalar(text("SELECT version_num FROM alembic_version"))
    return revision


async def accepts_writes(conn: AsyncConnection) -> bool:
    """False on a standby, or where default_transaction_read_only is on: the database answers,
    yet no webhook could be stored (a failover that left DNS on the old primary, say)."""
    read_only = await conn.scalar(text("SELECT current_setting('transaction_read_only')"))
    return bool(read_only == "off")


@dataclass(frozen=True, slots=True)
class DatabaseState:
    revision: str | None  # the migration it is at
    writable: bool


async def database_state(engine: AsyncEngine, *, timeout_s: float) -> DatabaseState | None:
    """Readiness's question to the database; None when it does not answer within
    ``timeout_s`` (a probe must answer fast even when the database hangs)."""
    try:
        async with asyncio.timeout(timeout_s):
            async with engine.connect() as conn:
                return DatabaseState(await schema_revision(conn), await accepts_writes(conn))
    except (TimeoutError, SQLAlchemyError, OSError):
        return None


SERVER_SETTINGS = text("SELECT name, setting, unit FROM pg_settings WHERE name = ANY(:names)")


# The indexes where every new message lands on a random leaf (Wavy's ids are random UUIDs):
# the ones that must stay in shared buffers (app.rules.postgres_settings).
ID_INDEXES = (
    "pk_messages",
    "uq_events_exact_retry",
    "ix_messages_correlation_id",
    "ix_messages_destination",
)
ID_INDEX_BYTES = text(
    "SELECT coalesce(sum(pg_relation_size(c.oid)), 0) FROM pg_class AS c "
    "WHERE c.relkind = 'i' AND c.relname = ANY(:names) "
    "AND c.relnamespace = to_regnamespace(current_schema())"
)


async def id_index_bytes(conn: AsyncConnection) -> int:
    return int(await conn.scalar(ID_INDEX_BYTES, {"names": list(ID_INDEXES)}) or 0)


async def server_settings(conn: AsyncConnection) -> dict[str, Setting]:
    """The settings app.rules.postgres_settings checks, as the server reports them."""
    rows = await conn.execute(SERVER_SETTINGS, {"names": list(RULES)})
    return {row.name: Setting(row.setting, row.unit) for row in rows}
