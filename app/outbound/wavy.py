"""Wavy's send API, called for the clients that send through the service: their own request,
with their own credentials, to WAVY_API_URL.

A connection that failed before the request went out is tried again (nothing was sent); an
answer that does not come in time is WavyTimedOut, never retried: Wavy may have sent it."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

# Tries of a connection that could not be opened (nothing was sent), and the waits between.
CONNECT_TRIES = 3
CONNECT_BACKOFF_S = (0.1, 0.3)


@dataclass(frozen=True, slots=True)
class WavyAnswer:
    status: int
    body: bytes
    content_type: str
    retry_after: str | None


class WavyUnreachable(Exception):
    """No connection to Wavy could be opened: nothing was sent."""


class WavyTimedOut(Exception):
    """Wavy did not answer in time: the message may have been sent."""


class WavyClient:
    """One per worker: a pool of kept-alive connections to Wavy."""

    def __init__(self, base_url: str, *, timeout_s: float) -> None:
        self._base_url = base_url.rstrip("/")
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            # Every client's sends share this session: a cookie Wavy (or a balancer before it)
            # sets in one client's answer must never go out with another client's request.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            headers={"user-agent": "wavy-webhooks"},
        )

    async def post(self, path: str, headers: Mapping[str, str], body: bytes) -> WavyAnswer:
        for attempt in range(CONNECT_TRIES):
            try:
                return await self._post_once(path, headers, body)
            except aiohttp.ClientConnectorError:
                if attempt == CONNECT_TRIES - 1:
                    raise WavyUnreachable(f"cannot connect to {self._base_url}") from None
                await asyncio.sleep(CONNECT_BACKOFF_S[min(attempt, len(CONNECT_BACKOFF_S) - 1)])
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _post_once(self, path: str, headers: Mapping[str, str], body: bytes) -> WavyAnswer:
        try:
            async with self._session.post(
                self._base_url + path, data=body, headers=dict(headers), allow_redirects=False
            ) as response:
                return WavyAnswer(
                    response.status,
                    await response.read(),
                    response.headers.get("content-type", "application/json"),
                    response.headers.get("retry-after"),
                )
        except TimeoutError:
            raise WavyTimedOut("no answer from Wavy in time") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError):
            # The request went out: whether Wavy sent the message is not known.
            raise WavyTimedOut("Wavy closed the connection before answering") from None

    async def close(self) -> None:
        await self._session.close()
