"""A downstream endpoint for the forwarding tests: a real HTTP server on 127.0.0.1 that keeps
every request it gets and answers as the test tells it (fail, hang, redirect)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


# How the receiver answers the n-th request it gets (0-based) and its body: a status code, or
# None to never answer.
Policy = Callable[[int, Any], int | None]


def always(status: int) -> Policy:
    return lambda _n, _body: status


@dataclass
class Receiver:
    url: str
    policy: Policy = field(default_factory=lambda: always(200))
    delay_s: float = 0.0  # before each answer
    received: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def bodies(self) -> list[Any]:
        return [item.json for item in self.received]

    async def wait_for(self, count: int, timeout_s: float = 15.0) -> list[Received]:
        """Until at least ``count`` requests arrived."""
        await self.wait_until(lambda: len(self.received) >= count, timeout_s)
        return self.received

    async def wait_until(self, done: Callable[[], bool], timeout_s: float = 15.0) -> None:
        """Until ``done()``, looked at after each request."""
        async with asyncio.timeout(timeout_s):
            while not done():
                self.arrived.clear()
                await self.arrived.wait()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        n = len(self.received)
        self.received.append(Received({k.lower(): v for k, v in request.headers.items()}, body))
        self.arrived.set()
        status = self.policy(n, orjson.loads(body))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if status is None:
            await asyncio.sleep(3600)
        if status in (301, 302, 307, 308):
            raise web.HTTPFound(self.url + "/elsewhere")
        return web.Response(status=status or 200, text=f"answer {n}")


@asynccontextmanager
async def receiving(policy: Policy | None = None, delay_s: float = 0.0) -> AsyncIterator[Receiver]:
    receiver = Receiver(url="", delay_s=delay_s)
    if policy is not None:
        receiver.policy = policy
    application = web.Application()
    application.router.add_route("*", "/{tail:.*}", receiver.handle)
    async with listening(application) as base:
        receiver.url = f"{base}/hooks"
        yield receiver


@asynccontextmanager
async def listening(application: web.Application) -> AsyncIterator[str]:
    """An aiohttp application served on a free port of 127.0.0.1; yields its base URL."""
    runner = web.AppRunner(application, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
