"""The active webhook keys, cached in memory so the hot path does not query them per request,
and reloaded as soon as PostgreSQL says they changed (migration 0011's notifications)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.queries import load_active_keys
from app.logs import FailureLog
from app.rules.credentials import KnownKey, match_key

log = logging.getLogger(__name__)

# After a miss, reload at most this often: a new key works within a second, and a flood of
# wrong keys costs at most one query a second.
MISS_RELOAD_INTERVAL_S = 1.0

# Every change to webhook_keys is notified on this channel when it commits (migration 0011).
KEYS_CHANGED_CHANNEL = "wavy_webhook_keys"
# After the listening connection is lost or refused, wait this long before trying again.
RELISTEN_DELAY_S = 2.0


class KeyRegistry:
    def __init__(self, engine: AsyncEngine, *, ttl_s: float) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        self._keys: list[KnownKey] = []
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()
        self._failures = FailureLog(log, "reloading webhook keys")

    async def refresh(self) -> None:
        async with self._lock:
            try:
                async with self._engine.connect() as conn:
                    self._keys = await load_active_keys(conn)
                self._failures.succeeded()
            except (SQLAlchemyError, OSError) as error:
                # Keep serving with the keys we know; the database may be back in a moment.
                self._failures.failed(error)
            self._loaded_at = time.monotonic()

    def forget(self) -> None:
        """The keys changed: the next request reloads them."""
        self._loaded_at = float("-inf")

    async def follow_changes(self, connect: Callable[[], Awaitable[asyncpg.Connection]]) -> None:
        """Listen for changes to the keys until cancelled, so that a revoked key stops working
        at once on every worker rather than when the cache ages out. While nothing listens
        (the database away; a pooler in transaction mode, which drops notifications), the
        cache's age still bounds how stale the keys are."""
        failures = FailureLog(log, "listening for webhook key changes")
        while True:
            try:
                conn = await connect()
            except (asyncpg.PostgresError, OSError, TimeoutError) as error:
                failures.failed(error)
                await asyncio.sleep(RELISTEN_DELAY_S)
                continue
            try:
                await self._listen_until_lost(conn, failures)
                failures.failed("the connection was lost")
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as error:
                failures.failed(error)
            finally:
                conn.terminate()
            await asyncio.sleep(RELISTEN_DELAY_S)

    async def _listen_until_lost(self, conn: asyncpg.Connection, failures: FailureLog) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(KEYS_CHANGED_CHANNEL, self._keys_changed)
        failures.succeeded()
        self.forget()  # whatever changed while nobody listened
        await lost.wait()

    def _keys_changed(self, *_: object) -> None:
        self.forget()

    async def find(self, presented: str) -> KnownKey | None:
        age = time.monotonic() - self._loaded_at
        if age > self._ttl_s:
            await self.refresh()
        found = match_key(presented, self._keys)
        if found is None and time.monotonic() - self._loaded_at > MISS_RELOAD_INTERVAL_S:
            await self.refresh()
            found = match_key(presented, self._keys)
        return found
