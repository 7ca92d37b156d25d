"""The forwarder's HTTP client: one signed POST per delivery, to public addresses only (unless
WAVY_FORWARD_ALLOW_PRIVATE), no redirects, a bounded wait and a bounded read of the answer.

aiohttp rather than httpx: it is the faster client per request (what the forwarder's throughput
rests on), and its resolver can be replaced, which is where the address check belongs: the
connection goes to the very addresses that were checked, so a name that resolves to a public
address when added and to a private one later (DNS rebinding) is refused at delivery.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from app.rules.forwarding import (
    ALLOW_PRIVATE_HINT,
    RESPONSE_EXCERPT_BYTES,
    UrlNotAllowed,
    address_refused,
)

# One answer for a name that resolves to a private address and for one that does not resolve:
# otherwise the check tells a user which internal names exist.
NOT_PUBLIC = "does not resolve to public addresses only"


class RefusedAddress(OSError):
    """The endpoint's name resolves to an address deliveries may not reach."""


class GuardedResolver(AbstractResolver):
    """The default resolver, refusing any answer that holds a non-public address."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        refused = [item["host"] for item in found if address_refused(item["host"])]
        if refused:
            # Never which address: a user's URL check must not tell them where names point.
            raise RefusedAddress(f"{host} {NOT_PUBLIC}; {ALLOW_PRIVATE_HINT}")
        return found

    async def close(self) -> None:
        await self._inner.close()


def literal_address_refused(url: str) -> str | None:
    """A URL whose host is an IP address is never resolved (aiohttp connects to it as is):
    judged here. The reason, when refused."""
    host = urlsplit(url).hostname or ""
    try:
        refused = address_refused(host)
    except ValueError:
        return None  # a name: the resolver judges it
    return f"{host} is not a public address; {ALLOW_PRIVATE_HINT}" if refused else None


async def check_resolves_public(host: str) -> None:
    """Raises UrlNotAllowed when ``host`` is, or resolves to, a non-public address, or does
    not resolve (checked when an endpoint is added or its URL changed)."""
    try:
        refused = address_refused(host)
    except ValueError:
        refused = None  # a name: resolved below
    if refused is not None:
        if refused:
            raise UrlNotAllowed(f"{host} is not a public address; {ALLOW_PRIVATE_HINT}")
        return
    resolver = GuardedResolver()
    try:
        await resolver.resolve(host, 0, socket.AF_UNSPEC)
    except RefusedAddress as error:
        raise UrlNotAllowed(str(error)) from None
    except OSError:
        raise UrlNotAllowed(f"{host} {NOT_PUBLIC}; {ALLOW_PRIVATE_HINT}") from None
    finally:
        await resolver.close()


@dataclass(frozen=True, slots=True)
class Answer:
    status_code: int | None
    error: str | None
    latency_ms: int
    response: str | None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class DeliveryClient:
    """One per worker: a pool of keep-alive connections shared by every endpoint."""

    def __init__(self, *, timeout_s: float, allow_private: bool) -> None:
        self._allow_private = allow_private
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        connector = aiohttp.TCPConnector(
            limit=0,  # each endpoint's own concurrency bounds it (app.outbound.forwarder)
            resolver=None if allow_private else GuardedResolver(),
            ttl_dns_cache=10,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
            headers={"user-agent": "wavy-webhooks"},
        )

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        started = time.monotonic()
        if not self._allow_private:
            refused = literal_address_refused(url)
            if refused:
                return Answer(None, f"refused: {refused}", 0, None)
        try:
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                excerpt = await response.content.read(RESPONSE_EXCERPT_BYTES)
                return Answer(
                    response.status,
                    None,
                    _elapsed_ms(started),
                    excerpt.decode("utf-8", errors="replace"),
                )
        except aiohttp.ClientConnectorError as error:
            refusal = _refusal(error)
            described = f"refused: {refusal}" if refusal else _describe(error)
            return Answer(None, described, _elapsed_ms(started), None)
        except TimeoutError:
            return Answer(None, "timed out", _elapsed_ms(started), None)
        except (aiohttp.ClientError, OSError, ValueError) as error:
            return Answer(None, _describe(error), _elapsed_ms(started), None)

    async def close(self) -> None:
        await self._session.close()


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _refusal(error: aiohttp.ClientConnectorError) -> RefusedAddress | None:
    """aiohttp wraps what the resolver raised."""
    for cause in (error.os_error, error.__cause__, error.__context__):
        if isinstance(cause, RefusedAddress):
            return cause
    return None


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}"[:500]
