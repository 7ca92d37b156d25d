"""Change notifications: one connection per worker listens on every channel the worker needs
(migrations 0011 and 0012 notify when webhook keys or read-API users change, 0014 when the
feeds hold something new for the forwarder, 0015 when opt-out keywords change), and calls what
each channel is for: a cache forgets what it holds, the forwarder looks at the feeds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

import asyncpg

from app.logs import FailureLog

log = logging.getLogger(__name__)

# Every committed change to these tables is notified on its channel (by a statement trigger).
KEYS_CHANGED_CHANNEL = "wavy_webhook_keys"
USERS_CHANGED_CHANNEL = "wavy_read_users"
FEEDS_CHANGED_CHANNEL = "wavy_feeds"
KEYWORDS_CHANGED_CHANNEL = "wavy_optout_keywords"
# After the listening connection is lost or refused, wait this long before trying again.
RELISTEN_DELAY_S = 2.0

Forget = Callable[[], None]


async def follow_changes(
    connect: Callable[[], Awaitable[asyncpg.Connection]], forget_on: Mapping[str, Forget]
) -> None:
    """Listen until cancelled, so that a revoked key or a disabled user stops working at once
    on every worker rather than when a cache ages out. While nothing listens (the database
    away; a pooler in transaction mode, which drops notifications), each cache's age still
    bounds how stale it is."""
    failures = FailureLog(log, "listening for key and user changes")
    while True:
        try:
            conn = await connect()
        except (asyncpg.PostgresError, OSError, TimeoutError) as error:
            failures.failed(error)
            await asyncio.sleep(RELISTEN_DELAY_S)
            continue
        try:
            await _listen_until_lost(conn, forget_on, failures)
            failures.failed("the connection was lost")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as error:
            failures.failed(error)
        finally:
            conn.terminate()
        await asyncio.sleep(RELISTEN_DELAY_S)


async def _listen_until_lost(
    conn: asyncpg.Connection, forget_on: Mapping[str, Forget], failures: FailureLog
) -> None:
    lost = asyncio.Event()
    conn.add_termination_listener(lambda _conn: lost.set())
    for channel, forget in forget_on.items():
        await conn.add_listener(channel, _on_notification(forget))
    failures.succeeded()
    for forget in forget_on.values():
        forget()  # whatever changed while nobody listened
    await lost.wait()


def _on_notification(forget: Forget) -> Callable[..., None]:
    def notified(*_: object) -> None:
        forget()

    return notified
