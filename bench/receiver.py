"""A downstream endpoint for the forwarding benchmarks, in its own process: a bare ASGI app
under uvicorn (httptools, uvloop) that answers 200 at once (``--mode ok``) or never
(``--mode hang``), and counts what it got. ``GET /stats`` says how many deliveries arrived,
how many distinct webhook ids and message ids, and the latency from each change's stored
time (the body's ``timestamp``) to its arrival.

    .venv/bin/python -m bench.receiver --port 9100 --mode ok
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime
from typing import Any

import orjson
import uvicorn

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Receiver:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.deliveries = 0
        self.webhook_ids: set[bytes] = set()
        self.message_ids: set[str] = set()
        self.latencies_ms: list[float] = []
        self.first_at: float | None = None
        self.last_at: float | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":
            await self._answer(send, 200, orjson.dumps(self.stats()))
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if self.mode == "hang":
            await asyncio.Event().wait()
        self._count(scope, body)
        await self._answer(send, 200, b"ok")

    def _count(self, scope: Scope, body: bytes) -> None:
        now = time.time()
        self.deliveries += 1
        self.first_at = self.first_at or now
        self.last_at = now
        for name, value in scope["headers"]:
            if name == b"webhook-id":
                self.webhook_ids.add(value)
        event = orjson.loads(body)
        self.message_ids.add(event["data"]["id"])
        stored = datetime.fromisoformat(event["timestamp"]).timestamp()
        self.latencies_ms.append((now - stored) * 1000)

    def stats(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)

        def cut(share: float) -> float | None:
            return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else None

        return {
            "deliveries": self.deliveries,
            "webhook_ids": len(self.webhook_ids),
            "message_ids": len(self.message_ids),
            "first_at": self.first_at,
            "last_at": self.last_at,
            "p50_ms": cut(0.50),
            "p99_ms": cut(0.99),
            "max_ms": ordered[-1] if ordered else None,
        }

    @staticmethod
    async def _answer(send: Send, status: int, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description="A downstream endpoint for bench.forwarding")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=["ok", "hang"], default="ok")
    args = parser.parse_args()
    uvicorn.run(
        Receiver(args.mode),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
