"""What the first ``serve`` of a new database creates, once however many replicas start
together: a webhook key (unless ingest is open) and an admin for the read API."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import queries, users
from app.rules.scope import Role

# Replicas of a first deploy start together: without the lock each counts no key and no user,
# and each creates its own (the admins' names collide, and all but one replica failed at start).
# Held until the transaction ends, so the others then count what the first one created.
FIRST_START_LOCK = "SELECT pg_advisory_xact_lock(hashtext('wavy-webhooks first start'))"


@dataclass(frozen=True, slots=True)
class FirstStartSecrets:
    """The secrets created now, to be shown once; None where one existed already."""

    webhook_key: str | None
    admin_token: str | None


async def create_first_credentials(
    conn: AsyncConnection, *, want_webhook_key: bool
) -> FirstStartSecrets:
    """A webhook key of no sub-account if no active key exists (and ``want_webhook_key``), and
    the user ``admin`` if there is no user at all. Run it in one transaction."""
    await conn.execute(text(FIRST_START_LOCK))
    webhook_key = None
    if want_webhook_key and not await queries.count_active_webhook_keys(conn):
        _, webhook_key = await queries.add_webhook_key(conn, sub_account=None)
    admin_token = None
    if not await users.count_users(conn):
        admin_token = await users.add_user(
            conn, username="admin", role=Role.ADMIN, sub_account=None, email=None, token=None
        )
    return FirstStartSecrets(webhook_key=webhook_key, admin_token=admin_token)
