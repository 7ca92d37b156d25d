"""Failed read-API logins, slowed per client: a token bucket of failures per client address.

A client may fail ``burst`` logins at once, then one per ``refill_s`` seconds; past that its
logins are refused before they cost a database query. A login that succeeds is remembered by
the reader cache and never meets this check, and the count is per client, not per user: an
attacker guessing tokens cannot lock a real user out from elsewhere. Per worker, in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

# Bounds the memory a flood of addresses can take; past it the oldest entries go.
MAX_CLIENTS = 100_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class FailedLogins:
    def __init__(self, *, burst: int = 10, refill_s: float = 1.0) -> None:
        self._burst = burst
        self._refill_s = refill_s
        self._buckets: dict[str, _Bucket] = {}

    def _current(self, client: str, now: float) -> _Bucket | None:
        bucket = self._buckets.get(client)
        if bucket is not None:
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.at) / self._refill_s)
            bucket.at = now
            if bucket.tokens >= self._burst:
                del self._buckets[client]  # back to a clean slate: nothing to remember
                return None
        return bucket

    def wait_s(self, client: str, now: float) -> float:
        """0 when this client may try a login now, else how long until it may."""
        bucket = self._current(client, now)
        if bucket is None or bucket.tokens >= 1:
            return 0.0
        return (1 - bucket.tokens) * self._refill_s

    def failed(self, client: str, now: float) -> None:
        bucket = self._current(client, now)
        if bucket is None:
            if len(self._buckets) >= MAX_CLIENTS:
                del self._buckets[next(iter(self._buckets))]
            bucket = self._buckets[client] = _Bucket(float(self._burst), now)
        bucket.tokens = max(0.0, bucket.tokens - 1)
