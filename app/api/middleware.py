"""Around every request: its id (``X-Request-ID``), ``nosniff``, its latency in the metrics,
and its access log line. A plain ASGI middleware, because Starlette's BaseHTTPMiddleware costs
a task and a stream wrapper per request on the hottest path we have.

Accepted webhooks can be summarised rather than logged each (``WAVY_ACCESS_LOG_WEBHOOKS``):
one line per route and second with their count and latency. A line per request was the
largest cost of a webhook that was ours (docs/benchmarks.md), and a campaign's thousands of
accepted DLRs a second say nothing one by one that the metrics and the database do not;
every refusal, every failure and every other request keeps its own line."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import re
import time
from collections.abc import Collection
from typing import Any, Literal

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


# How often the accepted webhooks' summary is written, at most (only when some arrived).
SUMMARY_EVERY_S = 1.0


class AcceptedSummary:
    """The accepted requests of the summarised routes since the last line: count, total and
    longest latency per method, route and status."""

    def __init__(self, every_s: float = SUMMARY_EVERY_S) -> None:
        self.every_s = every_s
        self._tallies: dict[tuple[str, str, int], list[float]] = {}
        self._pending: asyncio.TimerHandle | None = None

    def add(self, method: str, route: str, status: int, elapsed: float) -> None:
        key = (method, route, status)
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = [0, 0.0, 0.0]
            if self._pending is None:
                # In a context of its own: the line belongs to no one request.
                self._pending = asyncio.get_running_loop().call_later(
                    self.every_s, self.write, context=contextvars.Context()
                )
        tally[0] += 1
        tally[1] += elapsed
        if elapsed > tally[2]:
            tally[2] = elapsed

    def write(self) -> None:
        """One line per method, route and status seen since the last; also at shutdown."""
        tallies, self._tallies = self._tallies, {}
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        for (method, route, status), (count, total, longest) in tallies.items():
            access_log.info(
                "%s %s %d x%d in %gs, mean %.1fms, max %.1fms",
                method,
                route,
                status,
                count,
                self.every_s,
                total / count * 1000,
                longest * 1000,
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "count": int(count),
                    "mean_ms": round(total / count * 1000, 2),
                    "max_ms": round(longest * 1000, 2),
                },
            )


class RequestObserver:
    """The one place a request is observed, whichever way it was answered (this module's
    middleware, or app.api.direct in the HTTP protocol): its id, its latency in the metrics,
    its access log line or its share of the accepted webhooks' summary."""

    def __init__(
        self,
        *,
        access_log_enabled: bool,
        webhooks: Literal["each", "summary"],
        webhook_routes: Collection[str],
    ) -> None:
        self.access_log_enabled = access_log_enabled
        # The routes whose accepted requests are summarised, not logged each.
        self.summarised = frozenset(webhook_routes) if webhooks == "summary" else frozenset()
        self.summary = AcceptedSummary()
        # labels() costs a lock and a tuple per call; the combinations in use are few.
        self._histograms: dict[tuple[str, str, int], Any] = {}

    @staticmethod
    def request_id(scope: Scope) -> str:
        """The caller's id if it gave a usable one, else a new one. An id to find a request's
        lines by, not a secret: Python's generator, not a system call per request (os.urandom's
        was the costliest line here under py-spy)."""
        return _incoming_request_id(scope) or f"{random.getrandbits(128):032x}"

    def _latency(self, method: str, route: str, status: int) -> Any:
        key = (method, route, status)
        histogram = self._histograms.get(key)
        if histogram is None:
            histogram = metrics.REQUEST_SECONDS.labels(method, route, str(status))
            self._histograms[key] = histogram
        return histogram

    def observed(
        self, scope: Scope, route: str, status: int, elapsed: float, request_id: str
    ) -> None:
        """A request answered ``status`` after ``elapsed`` seconds; ``route`` is its template,
        or "unmatched"."""
        method = scope["method"] if scope["method"] in _KNOWN_METHODS else "other"
        self._latency(method, route, status).observe(elapsed)
        if self.access_log_enabled and access_log.isEnabledFor(logging.INFO):
            self._log_access(scope, method, route, status, elapsed, request_id)

    def _log_access(
        self, scope: Scope, method: str, route: str, status: int, elapsed: float, request_id: str
    ) -> None:
        if status < 300 and route in self.summarised:
            self.summary.add(method, route, status, elapsed)
            return
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


# The headers every answer carries besides its id: what its content type says, never sniffed.
NOSNIFF = (b"x-content-type-options", b"nosniff")
REQUEST_ID_HEADER = b"x-request-id"


class ObserveRequests:
    def __init__(self, app: ASGIApp, *, observer: RequestObserver) -> None:
        self.app = app
        self.observer = observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._writing_summary_at_shutdown(receive), send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = self.observer.request_id(scope)
        token = current_request_id.set(request_id)
        status = 500  # what the server answers if the app fails before starting a response

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER, request_id.encode()),
                    NOSNIFF,
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            self.observer.observed(scope, _route_template(scope), status, elapsed, request_id)
            current_request_id.reset(token)

    def _writing_summary_at_shutdown(self, receive: Receive) -> Receive:
        """The lifespan's messages, the summary written when the server shuts down."""

        async def receive_then_write() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                self.observer.summary.write()
            return message

        return receive_then_write
