"""Read-API logins that succeeded, remembered for a few seconds: a dashboard's or a downstream
poller's every request then skips a database round trip to authenticate (a third of a status
lookup's time in the service, docs/benchmarks.md). Forgotten as soon as PostgreSQL says the
users changed (migration 0012's notifications, followed by app.db.notifications)."""

from __future__ import annotations

import time

from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.users import authenticate_reader
from app.errors import LoginsThrottled
from app.rules.credentials import hash_key
from app.rules.login_throttle import FailedLogins
from app.rules.scope import Reader

# Bounds the memory a worker spends on logins; past it the cache starts over.
MAX_LOGINS = 10_000


class ReaderCache:
    def __init__(self, engine: AsyncEngine, *, ttl_s: float) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        # (login as presented, hash of the token presented) -> (user, when it was checked).
        # Only successes are kept: a wrong token always costs a query, as before.
        self._logins: dict[tuple[str, str], tuple[Reader, float]] = {}
        # Bumped by forget(): a check that began before a change may have read the old row,
        # and must not be remembered.
        self._generation = 0
        self._failures = FailedLogins()

    def forget(self) -> None:
        """The users changed: every login is checked against the database again, and failed
        ones are forgiven (a token that failed may be the one just set)."""
        self._generation += 1
        self._logins.clear()
        self._failures = FailedLogins()

    async def authenticate(self, login: str, token: str, client: str) -> Reader | None:
        """The enabled user with this login and token, or None (app.db.users rules); raises
        LoginsThrottled when ``client`` (its address) failed too many logins lately."""
        key = (login, hash_key(token))
        now = time.monotonic()
        known = self._logins.get(key)
        if known is not None and now - known[1] <= self._ttl_s:
            return known[0]
        wait_s = self._failures.wait_s(client, now)
        if wait_s > 0:
            raise LoginsThrottled(wait_s)
        generation = self._generation
        async with self._engine.connect() as conn:
            reader = await authenticate_reader(conn, login, token)
        if reader is None:
            self._failures.failed(client, now)
        if reader is None or self._ttl_s <= 0 or generation != self._generation:
            self._logins.pop(key, None)
            return reader
        if len(self._logins) >= MAX_LOGINS:
            self._logins.clear()
        self._logins[key] = (reader, now)
        return reader
