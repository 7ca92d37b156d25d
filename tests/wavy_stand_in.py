"""A stand-in of Wavy's send API and status search over real HTTP, for the send proxy's and
reconciliation's tests: it records every request and answers as it is told (by default as Wavy
does: an id per message; the statuses it was given)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.receivers import listening


@dataclass
class Asked:
    path: str
    headers: dict[str, str]
    json: Any
    at: float  # when it arrived (Unix time)


@dataclass
class StandIn:
    url: str = ""
    asked: list[Asked] = field(default_factory=list)
    # Told answer: (status, body, headers), or None for Wavy's own; a delay before answering.
    answer: tuple[int, Any, dict[str, str]] | None = None
    delay_s: float = 0.0
    # What its status search knows, by message id.
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)

    def reset(self) -> None:
        self.asked.clear()
        self.statuses.clear()
        self.answer, self.delay_s = None, 0.0

    def searches(self) -> list[Asked]:
        return [asked for asked in self.asked if asked.path == "/v1/sms/status/search"]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.asked.append(Asked(request.path, headers, body, time.time()))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.answer is not None:
            status, answer, headers = self.answer
            return web.json_response(answer, status=status, headers=headers)
        if request.path == "/v1/sms/status/search":
            ids, correlation_ids = set(body.get("ids", [])), set(body.get("correlationIds", []))
            found = [
                status
                for status in self.statuses.values()
                if status["id"] in ids or status.get("correlationId") in correlation_ids
            ]
            return web.json_response(
                {"total": len(found), "start": "", "end": "", "smsStatuses": found}
            )
        if request.path == "/v1/send-bulk-sms":
            # Ids that name the message they answer for: a test can tell which is which.
            messages = [
                {
                    "id": f"wavy-{item.get('correlationId', n)}",
                    "correlationId": item.get("correlationId"),
                }
                for n, item in enumerate(body["messages"])
            ]
            return web.json_response({"id": str(uuid.uuid4()), "messages": messages})
        return web.json_response(
            {"id": str(uuid.uuid4()), "correlationId": body.get("correlationId")}
        )


@asynccontextmanager
async def wavy_stand_in() -> AsyncIterator[StandIn]:
    stand_in = StandIn()
    application = web.Application()
    application.router.add_post("/v1/send-sms", stand_in.handle)
    application.router.add_post("/v1/send-bulk-sms", stand_in.handle)
    application.router.add_post("/v1/sms/status/search", stand_in.handle)
    async with listening(application) as base:
        stand_in.url = base
        yield stand_in
