"""A stand-in of Wavy's send API that answers at once, in a process of its own: what the send
benchmark compares the service with (``python -m bench.wavy_fast PORT``)."""

from __future__ import annotations

import sys
import uuid

from aiohttp import web


async def single(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({"id": str(uuid.uuid4()), "correlationId": body.get("correlationId")})


async def bulk(request: web.Request) -> web.Response:
    body = await request.json()
    messages = [
        {"id": str(uuid.uuid4()), "correlationId": item.get("correlationId")}
        for item in body["messages"]
    ]
    return web.json_response({"id": str(uuid.uuid4()), "messages": messages})


def main() -> None:
    application = web.Application(client_max_size=16 * 1024 * 1024)
    application.router.add_post("/v1/send-sms", single)
    application.router.add_post("/v1/send-bulk-sms", bulk)
    web.run_app(application, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
