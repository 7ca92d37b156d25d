"""The active webhook keys, cached in memory so the hot path does not query them per request,
and reloaded as soon as PostgreSQL says they changed (migration 0011's notifications, followed
by app.db.notifications)."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.queries import load_active_keys
from app.errors import Unavailable, UnavailableReason
from app.logs import FailureLog
from app.rules.credentials import KnownKey, match_key

log = logging.getLogger(__name__)

# After a miss, reload at most this often: a new key works within a second, and a flood of
# wrong keys costs at most one query a second.
MISS_RELOAD_INTERVAL_S = 1.0


class KeysUnavailable(Unavailable):
    """A key was not among those known, and the keys could not be reloaded to make sure: the
    caller is told to come back (503), never that a key that may be valid is wrong (401)."""

    reason: UnavailableReason = "keys_unavailable"


class KeyRegistry:
    def __init__(self, engine: AsyncEngine, *, ttl_s: float) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        self._keys: list[KnownKey] = []
        self._loaded_at = float("-inf")
        # When the last reload that counts as fresh (no forget() during it) began to read.
        self._read_started_at = float("-inf")
        # Bumped by forget(): a reload that began before a change may have read the old keys,
        # and must not pass for fresh.
        self._generation = 0
        self._last_reload_failed = False
        self._lock = asyncio.Lock()
        self._failures = FailureLog(log, "reloading webhook keys")
        self._reloading: asyncio.Task[None] | None = None
        # Keys presented and found among the current ones, as presented: a webhook of a known
        # sender skips hashing and comparing. Only ever holds valid keys (a wrong one is never
        # kept), and starts over whenever the keys are reloaded.
        self._matched: dict[str, KnownKey] = {}

    async def refresh(self, *, asked_at: float | None = None) -> None:
        """Reload the keys; with ``asked_at`` (a time.monotonic()), only if no reload that began
        reading after then has finished while this one waited for the lock."""
        async with self._lock:
            # Every request that finds the keys stale asks; without this each of them queued
            # for a reload of its own, one after another: all connections stalled for 0.4-1 s
            # every WAVY_KEY_CACHE_SECONDS (issue #36). What it may skip to was read after it
            # asked, as its own reload would have been; one overlapping forget() never counts.
            if asked_at is not None and self._read_started_at >= asked_at:
                return
            generation, started_at = self._generation, time.monotonic()
            try:
                async with self._engine.connect() as conn:
                    self._keys = await load_active_keys(conn)
                self._matched = {}
                self._failures.succeeded()
                self._last_reload_failed = False
            except (
                SQLAlchemyError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                OSError,
            ) as error:
                # Keep serving with the keys we know; the database may be back in a moment.
                self._failures.failed(error)
                self._last_reload_failed = True
            if generation == self._generation:
                self._loaded_at = time.monotonic()
                self._read_started_at = started_at

    def forget(self) -> None:
        """The keys changed: the next request reloads them."""
        self._generation += 1
        self._loaded_at = float("-inf")
        self._matched = {}

    def _reload_soon(self, asked_at: float) -> None:
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.create_task(
                self.refresh(asked_at=asked_at), name="webhook-keys-reload"
            )

    async def find(self, presented: str) -> KnownKey | None:
        """The active key presented, or None; KeysUnavailable when it is not among the keys
        known and they could not be reloaded."""
        now = time.monotonic()
        if self._loaded_at == float("-inf"):  # never loaded, or PostgreSQL said they changed
            await self.refresh(asked_at=now)
        elif now - self._loaded_at > self._ttl_s:
            # Only aged: nothing said they changed (a change is notified, and forgotten at
            # once above), so this request is answered from the keys known while one reload
            # runs beside it. Awaited, it held every connection for a reload's round trip
            # every WAVY_KEY_CACHE_SECONDS: the p99 at 256 connections (issue #36).
            self._reload_soon(now)
        found = self._matched.get(presented)
        if found is not None:
            return found
        found = match_key(presented, self._keys)
        now = time.monotonic()
        if found is None and now - self._loaded_at > MISS_RELOAD_INTERVAL_S:
            await self.refresh(asked_at=now)
            found = match_key(presented, self._keys)
        if found is None and self._last_reload_failed:
            raise KeysUnavailable
        if found is not None:
            self._matched[presented] = found
        return found
