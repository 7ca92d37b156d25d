"""Small, infrequent queries: webhook keys, dead letters, the server's settings. (The hot write
path is ingest.py.)"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.tables import rejected_bodies, webhook_keys
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


@dataclass(frozen=True, slots=True)
class RejectedBody:
    endpoint: str
    method: str
    sub_account: str | None
    status_code: int
    reason: str
    detail: Any
    content_type: str | None
    body: bytes
    body_truncated: bool


async def store_rejected_body(conn: AsyncConnection, rejected: RejectedBody) -> int:
    rejected_id = await conn.scalar(
        insert(rejected_bodies)
        .values(
            endpoint=rejected.endpoint,
            method=rejected.method,
            sub_account=rejected.sub_account,
            status_code=rejected.status_code,
            reason=rejected.reason,
            detail=rejected.detail,
            content_type=rejected.content_type,
            body=rejected.body,
            body_truncated=rejected.body_truncated,
        )
        .returning(rejected_bodies.c.id)
    )
    assert rejected_id is not None
    return int(rejected_id)


@dataclass(frozen=True, slots=True)
class RejectedRow:
    id: int
    received_at: datetime
    endpoint: str
    method: str
    sub_account: str | None
    status_code: int
    reason: str
    body: bytes
    body_truncated: bool
    replayed_at: datetime | None


async def list_rejected_bodies(conn: AsyncConnection, *, limit: int) -> list[RejectedRow]:
    columns = [rejected_bodies.c[name] for name in RejectedRow.__dataclass_fields__]
    rows = await conn.execute(select(*columns).order_by(rejected_bodies.c.id.desc()).limit(limit))
    return [RejectedRow(*row) for row in rows]


async def get_rejected_body(conn: AsyncConnection, rejected_id: int) -> bytes | None:
    body: bytes | None = await conn.scalar(
        select(rejected_bodies.c.body).where(rejected_bodies.c.id == rejected_id)
    )
    return body


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


SERVER_SETTINGS = text("SELECT name, setting, unit FROM pg_settings WHERE name = ANY(:names)")


async def server_settings(conn: AsyncConnection) -> dict[str, Setting]:
    """The settings app.rules.postgres_settings checks, as the server reports them."""
    rows = await conn.execute(SERVER_SETTINGS, {"names": list(RULES)})
    return {row.name: Setting(row.setting, row.unit) for row in rows}
