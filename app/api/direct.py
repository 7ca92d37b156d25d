"""Webhooks answered in the HTTP protocol: a POSTed callback, DLR or MO whose whole request
arrived at once is handed here by app.http_protocol, with no ASGI cycle, middleware, Request or
Response built for it. A campaign's webhooks are the one path where those cost more than the
work itself (docs/benchmarks.md).

Nothing here decides anything of its own. The caller is the routes' (app.api.deps), the work
is the routes' service (app.services.ingest), an error becomes the answer that app.api.errors'
handlers give it, as through FastAPI, and the request is observed as every other
(app.api.middleware: its id, the metrics, the access log). What this lane does not take goes
the ASGI way to the same routes (app.api.webhooks): a body still arriving, a request waiting
for 100 Continue, a browser's request where CORS applies."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import Scope

from app.api.deps import webhook_context_of
from app.api.fast_path import error_answer
from app.api.middleware import NOSNIFF, REQUEST_ID_HEADER, RequestObserver
from app.api.webhooks import POSTED_KINDS, answer_body
from app.http_protocol import DirectAnswer
from app.logs import current_request_id
from app.payloads import EventKind
from app.services.ingest import ingest_arrived

JSON = (b"content-type", b"application/json")


class DirectWebhooks:
    """The lane one app's webhooks take in app.http_protocol (app.main's lifespan gives it)."""

    def __init__(self, app: FastAPI, observer: RequestObserver) -> None:
        self._app = app
        self._observer = observer
        self._cors = bool(app.state.settings.cors_origins)

    def takes(self, scope: Scope) -> bool:
        """A POST to a webhook's URL, and no browser's: CORS answers those (app.main)."""
        if scope["method"] != "POST" or scope["path"] not in POSTED_KINDS:
            return False
        return not (self._cors and any(name == b"origin" for name, _ in scope["headers"]))

    async def answer(self, scope: Scope, body: bytes) -> DirectAnswer:
        """The request's answer: what its route would answer, the request observed."""
        started = time.perf_counter()
        request_id = self._observer.request_id(scope)
        token = current_request_id.set(request_id)
        status = 500
        try:
            status, headers, content = await self._answered(
                POSTED_KINDS[scope["path"]], scope, body
            )
            headers += [(REQUEST_ID_HEADER, request_id.encode()), NOSNIFF]
            return DirectAnswer(status, headers, content)
        finally:
            elapsed = time.perf_counter() - started
            self._observer.observed(scope, scope["path"], status, elapsed, request_id)
            current_request_id.reset(token)

    async def _answered(
        self, kind: EventKind, scope: Scope, body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        try:
            context = await webhook_context_of(self._app.state, scope)
            ingested = await ingest_arrived(kind, body, context, scope["headers"])
        except Exception as exc:
            return await self._error(scope, exc)
        content = answer_body(ingested)
        return 200, [(b"content-length", b"%d" % len(content)), JSON], content

    async def _error(
        self, scope: Scope, exc: Exception
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """The answer app.api.errors gives ``exc``, as app.api.fast_path finds it."""
        request = Request({**scope, "app": self._app})
        handlers: dict[Any, Any] = self._app.exception_handlers  # FastAPI's wider type
        answer, unhandled = await error_answer(handlers, request, exc)
        if answer is None:  # never: app.api.errors installs a catch-all
            raise unhandled or exc
        return answer.status_code, list(answer.raw_headers), bytes(answer.body)
