"""Around every request: its id (``X-Request-ID``), ``nosniff``, its latency in the metrics,
and one access log line. A plain ASGI middleware, because Starlette's BaseHTTPMiddleware costs
a task and a stream wrapper per request on the hottest path we have."""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.logs import current_request_id

access_log = logging.getLogger("app.access")

# A caller's (or load balancer's) id is reused only when it is short and harmless in a log line.
_ACCEPTABLE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if _ACCEPTABLE_REQUEST_ID.fullmatch(candidate) else None
    return None


# Methods are whatever a client typed: anything else is counted as "other" so that label
# values (and the cache below) stay bounded.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _route_template(scope: Scope) -> str:
    """The route as declared (``/v1/sms/status/{id}``), so the metrics' label values stay few;
    "unmatched" for 404s, whose paths are whatever a scanner tried."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class ObserveRequests:
    def __init__(self, app: ASGIApp, *, access_log_enabled: bool = True) -> None:
        self.app = app
        self.access_log_enabled = access_log_enabled
        # labels() costs a lock and a tuple per call; the combinations in use are few.
        self._histograms: dict[tuple[str, str, int], Any] = {}

    def _latency(self, method: str, route: str, status: int) -> Any:
        key = (method, route, status)
        histogram = self._histograms.get(key)
        if histogram is None:
            histogram = metrics.REQUEST_SECONDS.labels(method, route, str(status))
            self._histograms[key] = histogram
        return histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # os.urandom, not uuid4: same 128 random bits at a third of the cost per request.
        request_id = _incoming_request_id(scope) or os.urandom(16).hex()
        token = current_request_id.set(request_id)
        status = 500  # what the server answers if the app fails before starting a response

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                    # Every answer is what its content type says: never sniffed as another.
                    (b"x-content-type-options", b"nosniff"),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            method = scope["method"] if scope["method"] in _KNOWN_METHODS else "other"
            self._latency(method, route, status).observe(elapsed)
            if self.access_log_enabled and access_log.isEnabledFor(logging.INFO):
                # The route, never the URL: webhook keys travel in the query string.
                access_log.info(
                    "%s %s %d %.1fms",
                    scope["method"],
                    route if route != "unmatched" else "-",
                    status,
                    elapsed * 1000,
                    extra={
                        "method": scope["method"],
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                        "client": (scope.get("client") or ("-",))[0],
                        "request_id": request_id,
                    },
                )
            current_request_id.reset(token)
