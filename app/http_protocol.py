"""The HTTP connection before the app sees a request: bounds on what a client may make a worker
hold, since Wavy calls the service directly and no proxy stands in front to set them.

uvicorn's httptools protocol, with these changes:

* **Head size.** The request line and headers may take ``max_head_bytes``; past that the
  connection gets a JSON 431 and is closed. The parser never buffers more than that (it did:
  a header that never ended held as much memory as the client sent).
* **Head time.** They must arrive within ``head_timeout_s`` of the connection opening (or of
  the previous response, on a kept-alive connection); else a JSON 408 and the connection
  closes. One sweep per worker checks the deadlines, a few times a second, rather than a
  timer set and cancelled for every request.
* **Half-open connections do not take the webhooks' capacity.** uvicorn's
  ``limit_concurrency`` counted open connections, so connections that never finished their
  headers made every real webhook a plain 503. Requests in flight are counted instead (JSON
  503 with Retry-After past ``limit_concurrency``), and past ``max_connections`` the oldest
  connection still sending its head is closed to make room.
* **An MO sent as GET whose URL passes the head limit** reaches its route marked as cut off,
  which answers the JSON 413 and keeps what arrived, as for every other refusal.
* **A body that has all arrived is said so** (``BODY_ARRIVED`` in the scope's extensions):
  the route then reads it without setting a timer of its own against a slow sender.
* **A chunked body's trailer fields are not headers.** uvicorn added them to the request's
  headers, which HTTP forbids: a key sent after the body would have counted.
* **A request the HTTP parser cannot read gets the API's JSON 400** (``bad_request``), not
  uvicorn's plain text, and the connection closes as for every refusal here.
* **A webhook's answer goes out in one write.** uvicorn writes a response's head when it starts
  and its body after: two system calls, two packets, two wake-ups of the sender, for an answer
  of a few hundred bytes on the hottest path. The head is held for the body's first bytes
  (webhook routes only: their answers are never streamed).
* **A webhook that arrived whole is answered here** by the app's direct lane (app.api.direct,
  given in the lifespan's state under ``DIRECT_LANE``): no ASGI cycle, task wrapper,
  middleware, Request or Response per request, which together cost more than the webhook's own
  work. A POST to a webhook's URL waits, within the read that brought its head, for its body's
  end; if the body is still coming when that read is done, the request goes the ASGI way (the
  route reads the rest, bounded in time). A pipelined request waits for the answer before it,
  as for any other.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from app import metrics
from app.settings import Settings

# The path whose URL is its payload (an MO by GET): cut off, it is a body too large, not a
# head too large.
URL_IS_BODY_PATH = b"/v1/webhooks/mo"
# The scope's extension that tells the route its query string was cut off.
URL_CUT_OFF = "wavy.url_cut_off"
# The scope's extension that tells the route the whole body is there: reading it cannot wait.
BODY_ARRIVED = "wavy.body_arrived"
# How often a worker checks the heads still arriving against their deadline: a head too slow
# is cut off at most this long after its timeout.
HEAD_SWEEP_S = 0.25
RETRY_AFTER_S = b"5"
# How long a refused connection's further bytes are read and dropped before it is closed.
LINGER_S = 2.0
# The paths whose answers go out in one write (see _OneWritePerAnswer).
ONE_WRITE_PATHS = "/v1/webhooks/"
# A 1xx answer's start (uvicorn's 100 Continue): written at once, it is no response's head.
INFORMATIONAL = b"HTTP/1.1 1"


# The lifespan state's key for the app's direct lane (DirectLane).
DIRECT_LANE = "wavy.direct_lane"


@dataclass(frozen=True, slots=True)
class DirectAnswer:
    """An answer of the direct lane: its status, the app's headers (the server adds its own, as
    for every answer) and its body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class DirectLane(Protocol):
    """What answers webhooks in the protocol (app.api.direct)."""

    def takes(self, scope: Any) -> bool:
        """Whether a request with this scope (its head) is the lane's to answer."""

    def answer(self, scope: Any, body: bytes) -> Awaitable[DirectAnswer]:
        """The request's answer; never raises for anything a request can cause."""


def _error_body(code: str, message: str) -> bytes:
    """The API's error shape (app.api.errors), for the answers given before the app."""
    return orjson.dumps({"error": {"code": code, "message": message}})


def _json_answer(status: int, reason: bytes, code: str, message: str, *extra: bytes) -> bytes:
    body = _error_body(code, message)
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            *extra,
            b"connection: close\r\n\r\n",
            body,
        ]
    )


async def overloaded(scope: Any, receive: Any, send: Any) -> None:
    """What a request past the in-flight limit gets: the API's 503, Retry-After included."""
    metrics.UNAVAILABLE.labels("overloaded").inc()
    body = _error_body("unavailable", "overloaded; nothing was stored, retry")
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", RETRY_AFTER_S),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# What the direct lane answers if it fails (it must not): the API's 500, as its catch-all's.
_FAULT_BODY = _error_body("internal_error", "internal error")
DIRECT_FAULT = DirectAnswer(
    500,
    [(b"content-length", b"%d" % len(_FAULT_BODY)), (b"content-type", b"application/json")],
    _FAULT_BODY,
)


@dataclass(frozen=True, slots=True)
class HeadBounds:
    max_head_bytes: int
    head_timeout_s: float
    max_connections: int

    @classmethod
    def of(cls, settings: Settings) -> HeadBounds:
        return cls(settings.max_head_bytes, settings.head_timeout_s, settings.max_connections)


# Descriptors a worker needs beyond its connections: database connections, files, listeners.
SPARE_FILE_DESCRIPTORS = 256


def raise_open_files_limit(max_connections: int) -> None:
    """Lift the soft limit on open files towards the hard one, so that ``max_connections`` (not
    the operating system's default of 1024) is what bounds a worker's connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + SPARE_FILE_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for this service, the same for `serve` and the tests' server."""
    GuardedHttpToolsProtocol.bounds = HeadBounds.of(settings)
    return {
        "loop": "uvloop",
        "http": GuardedHttpToolsProtocol,
        "limit_concurrency": settings.limit_concurrency,
    }


class _OneWritePerAnswer:
    """The transport as one request's cycle sees it: the head that uvicorn writes when the
    response starts is held, and goes out with the body's first bytes. It is written as it is
    if no body follows (a HEAD), when the response completes or the connection closes.

    It holds no reference to the cycle (which holds it): a cycle of references per request
    left every request's objects to the garbage collector, whose passes over them stalled
    the worker for a tenth of a second every two seconds under load."""

    __slots__ = ("_head", "_held_once", "_on_response", "_transport")

    def __init__(self, cycle: RequestResponseCycle, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None
        self._held_once = False
        self._on_response = cycle.on_response
        cycle.on_response = self._completed

    def write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        elif not self._held_once and not data.startswith(INFORMATIONAL):
            # The response's first write is its head; a 100 Continue goes out at once.
            self._head, self._held_once = data, True
            return
        self._transport.write(data)

    def _flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def _completed(self) -> None:
        self._flush()
        self._on_response()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    # Per worker: the connections still sending their head, oldest first (a dict keeps order),
    # each with the loop time its head must have arrived by.
    half_open: ClassVar[dict[GuardedHttpToolsProtocol, float]] = {}
    # Per event loop, its pending sweep of those deadlines (tests run servers on several loops).
    head_sweeps: ClassVar[dict[asyncio.AbstractEventLoop, asyncio.TimerHandle]] = {}
    # The bounds (see Settings): set by server_options(), else read from the environment once
    # per worker (a worker process of `serve --workers N` imports this class afresh).
    bounds: ClassVar[HeadBounds | None] = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        if GuardedHttpToolsProtocol.bounds is None:
            GuardedHttpToolsProtocol.bounds = HeadBounds.of(Settings())
        self.max_head_bytes = self.bounds.max_head_bytes  # type: ignore[union-attr]
        self.head_timeout_s = self.bounds.head_timeout_s  # type: ignore[union-attr]
        self.max_connections = self.bounds.max_connections  # type: ignore[union-attr]
        # Counted by requests in flight below, not by connections as uvicorn does.
        self.request_limit = config.limit_concurrency
        self.limit_concurrency = None
        self.head_bytes = 0
        self.in_head = True
        self.discarding = False
        lane = app_state.get(DIRECT_LANE)
        self.lane: DirectLane | None = lane
        # A webhook for the lane whose body was still to come when its head was parsed, while
        # the read that brought its head is being parsed.
        self.awaiting_body: RequestResponseCycle | None = None
        self.feeding = False
        self.requests_completed = 0  # on this connection: a head's bytes count from the last

    # --- connections --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head()
        if len(self.connections) > self.max_connections:
            self._close_oldest_half_open()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_head()
        super().connection_lost(exc)

    def _close_oldest_half_open(self) -> None:
        for oldest in self.half_open:
            if oldest is not self:
                oldest._end_head()
                oldest.transport.close()
                return

    # --- the head: size and time ------------------------------------------------------------

    def _start_head(self) -> None:
        self.in_head, self.head_bytes = True, 0
        if self not in self.half_open:  # a head already timed keeps its deadline
            self.half_open[self] = self.loop.time() + self.head_timeout_s
            if self.loop not in self.head_sweeps:
                self._schedule_head_sweep(self.loop)

    def _end_head(self) -> None:
        self.in_head = False
        self.half_open.pop(self, None)

    @classmethod
    def _schedule_head_sweep(cls, loop: asyncio.AbstractEventLoop) -> None:
        cls.head_sweeps[loop] = loop.call_later(HEAD_SWEEP_S, cls._sweep_heads, loop)

    @classmethod
    def _sweep_heads(cls, loop: asyncio.AbstractEventLoop) -> None:
        """Cut off this loop's heads past their deadline; sweep again while any are left."""
        del cls.head_sweeps[loop]
        now = loop.time()
        late = [
            protocol
            for protocol, deadline in cls.half_open.items()
            if deadline <= now and protocol.loop is loop
        ]
        for protocol in late:
            protocol._head_too_slow()
        if any(protocol.loop is loop for protocol in cls.half_open):
            cls._schedule_head_sweep(loop)

    def _head_too_slow(self) -> None:
        if self.in_head and not self.transport.is_closing():
            self._refuse(408, b"Request Timeout", "request_timeout", "headers too slow")
        else:
            self._end_head()

    def _refuse(self, status: int, reason: bytes, code: str, message: str) -> None:
        """Answer, then close as a lingering close does: what the client still sends is read
        and dropped for a moment, or closing on unread data would reset the connection and
        the client would never read the answer."""
        self._end_head()
        self.discarding = True
        self.transport.write(_json_answer(status, reason, code, message))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.feeding = True
        try:
            self._feed(data)
        finally:
            self.feeding = False
        cycle, self.awaiting_body = self.awaiting_body, None
        if cycle is not None and not self.discarding:
            # The body is still coming: the route reads the rest, as any request's.
            self._start_asgi_cycle(cycle, self.app)

    def _feed(self, data: bytes) -> None:
        while data and not self.discarding:
            if not self.in_head:
                super().data_received(data)
                return
            room = self.max_head_bytes - self.head_bytes
            if len(data) <= room:
                self.head_bytes += len(data)
                super().data_received(data)
                return
            # Only what fits reaches the parser; if the head did not end within it, the rest
            # is never buffered. If a request ended within it (pipelined requests in one
            # read), the next one's head counts from there: at most this much more of it
            # went uncounted.
            completed = self.requests_completed
            super().data_received(data[:room])
            if self.discarding:  # refused meanwhile (a request the parser could not read)
                return
            if self.in_head and self.requests_completed == completed:
                self._head_too_large()
                return
            data = data[room:]

    def send_400_response(self, msg: str) -> None:
        """What uvicorn answers a request its parser cannot read, in the API's shape."""
        self._refuse(400, b"Bad Request", "bad_request", "the request is not valid HTTP/1.1")

    def _head_too_large(self) -> None:
        if self.parser.get_method() == b"GET" and self.url.startswith(URL_IS_BODY_PATH):
            self._dispatch_cut_off_url()
            return
        self._refuse(
            431,
            b"Request Header Fields Too Large",
            "headers_too_large",
            f"the request line and headers pass {self.max_head_bytes} bytes",
        )

    def _dispatch_cut_off_url(self) -> None:
        """The route answers (413, kept for an operator) from the URL that arrived."""
        self._end_head()
        self.discarding = True
        path, _, query = self.url.partition(b"?")
        self.scope["method"] = "GET"
        self.scope["path"] = path.decode("latin-1")
        self.scope["raw_path"] = path
        self.scope["query_string"] = query
        self.scope["extensions"] = {URL_CUT_OFF: {}}
        self.cycle = RequestResponseCycle(
            scope=self.scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=False,
            on_response=self.on_response_complete,
        )
        self.cycle.more_body = False
        self._start_asgi_task(self.cycle, self.app)

    # --- requests ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_head()

    def on_headers_complete(self) -> None:
        self._end_head()
        if self.request_limit is not None and len(self.tasks) >= self.request_limit:
            app, self.app = self.app, overloaded
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()
        if not self.parser.should_upgrade():  # an upgrade's handshake reads the headers later
            self._ignore_trailers()

    def _ignore_trailers(self) -> None:
        """uvicorn adds a chunked body's trailer fields to the request's headers, which HTTP
        forbids (RFC 9110, 6.5.1): a key, a request id or a content type sent after the body
        would count, and differently as the body was answered before or after its trailers
        came. They go to a list of their own, never read."""
        self.headers = []

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        """Where uvicorn starts a request: one for the direct lane is answered there, or waits
        for its body's end within this read; any other starts its ASGI cycle."""
        if self.lane is not None and app is not overloaded and self.lane.takes(cycle.scope):
            if not cycle.more_body:
                self._answer_directly(cycle, self.lane)
                return
            if self.feeding:
                self.awaiting_body = cycle
                return
        self._start_asgi_cycle(cycle, app)

    def _start_asgi_cycle(self, cycle: RequestResponseCycle, app: Any) -> None:
        if cycle.scope["path"].startswith(ONE_WRITE_PATHS):
            cycle.transport = _OneWritePerAnswer(cycle, self.transport)  # type: ignore[assignment]
        super()._start_asgi_task(cycle, app)

    # --- the direct lane ----------------------------------------------------------------------

    def _answer_directly(self, cycle: RequestResponseCycle, lane: DirectLane) -> None:
        task = self.loop.create_task(self._direct(cycle, lane))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _direct(self, cycle: RequestResponseCycle, lane: DirectLane) -> None:
        try:
            answer = await lane.answer(cycle.scope, bytes(cycle.body))
        except Exception as exc:  # a fault of ours, logged as uvicorn logs an app's
            self.logger.error("Exception in the direct lane", exc_info=exc)
            answer = DIRECT_FAULT
        self._write_direct(cycle, answer)

    def _write_direct(self, cycle: RequestResponseCycle, answer: DirectAnswer) -> None:
        """The answer in one write, then the connection goes on as after any response (the
        next pipelined request, or the keep-alive timer), or closes if it may not be kept."""
        cycle.response_started = cycle.response_complete = True
        if cycle.disconnected or self.discarding or self.transport.is_closing():
            # Gone, refused meanwhile (a later pipelined request's head was too large or not
            # HTTP), or closing: nobody reads an answer now.
            return
        content = [STATUS_LINE[answer.status]]
        for name, value in (*self.server_state.default_headers, *answer.headers):
            content += (name, b": ", value, b"\r\n")
        if not cycle.keep_alive:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", answer.body)
        self.transport.write(b"".join(content))
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if not self.cycle.more_body:
            self.scope.setdefault("extensions", {})[BODY_ARRIVED] = {}
        # What comes next on this connection is the next request's head: counted from its
        # first byte, timed by uvicorn's keep-alive timeout until then, and by the head
        # sweep once on_message_begin has set its deadline. (Not at the response's end: a
        # pipelined request may be past its head by then, and its body would count as head.)
        self.in_head, self.head_bytes = True, 0
        self.requests_completed += 1
        cycle = self.awaiting_body
        if cycle is not None and cycle is self.cycle and self.lane is not None:
            self.awaiting_body = None
            self._answer_directly(cycle, self.lane)
