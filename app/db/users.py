"""Read-API users: create, list, disable, rotate tokens, and authenticate."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.tables import users
from app.rules.credentials import generate_key, hash_key, secret_matches
from app.rules.scope import Reader, Role


@dataclass(frozen=True, slots=True)
class UserInfo:
    id: int
    username: str
    email: str | None
    role: str
    sub_account: str | None
    created_at: datetime
    disabled_at: datetime | None


async def add_user(
    conn: AsyncConnection,
    *,
    username: str,
    role: Role,
    sub_account: str | None,
    email: str | None,
    token: str | None,
) -> str:
    """Create a user and return its token (shown once; only its hash is stored)."""
    token = token or generate_key()
    await conn.execute(
        insert(users).values(
            username=username,
            email=email,
            role=role.value,
            sub_account=sub_account or None,  # a user without one is refused by a CHECK
            token_hash=hash_key(token),
        )
    )
    return token


async def count_users(conn: AsyncConnection) -> int:
    return int(await conn.scalar(select(func.count()).select_from(users)) or 0)


async def list_users(conn: AsyncConnection) -> list[UserInfo]:
    columns = [users.c[name] for name in UserInfo.__dataclass_fields__]
    rows = await conn.execute(select(*columns).order_by(users.c.id))
    return [UserInfo(*row) for row in rows]


async def disable_user(conn: AsyncConnection, username: str) -> bool:
    result = await conn.execute(
        update(users)
        .where(users.c.username == username, users.c.disabled_at.is_(None))
        .values(disabled_at=func.now())
    )
    return bool(result.rowcount)


async def enable_user(conn: AsyncConnection, username: str) -> bool:
    result = await conn.execute(
        update(users)
        .where(users.c.username == username, users.c.disabled_at.is_not(None))
        .values(disabled_at=None)
    )
    return bool(result.rowcount)


async def rotate_token(
    conn: AsyncConnection, username: str, token: str | None = None
) -> str | None:
    token = token or generate_key()
    result = await conn.execute(
        update(users).where(users.c.username == username).values(token_hash=hash_key(token))
    )
    return token if result.rowcount else None


async def authenticate_reader(conn: AsyncConnection, login: str, token: str) -> Reader | None:
    """The enabled user whose username (or e-mail, any case) is ``login`` and whose token
    matches; None for every kind of failure alike."""
    row = (
        await conn.execute(
            select(
                users.c.id,
                users.c.username,
                users.c.role,
                users.c.sub_account,
                users.c.token_hash,
                users.c.disabled_at,
            )
            .where(or_(users.c.username == login, func.lower(users.c.email) == login.lower()))
            .order_by(users.c.username != login)  # an exact username beats an e-mail match
            .limit(1)
        )
    ).first()
    if not secret_matches(token, row.token_hash if row else None) or row is None:
        return None
    if row.disabled_at is not None:
        return None
    return Reader(
        id=row.id, username=row.username, role=Role(row.role), sub_account=row.sub_account
    )
