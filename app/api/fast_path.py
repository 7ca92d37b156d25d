"""The webhooks' requests straight to their route's endpoint function, past FastAPI's router, its
dependency solver and its per-request wrappers. Those cost more than a webhook's own work
(docs/benchmarks.md), and Wavy's bursts make this the hottest path we have.

The routes stay declared on app.api.webhooks' router, which documents them (OpenAPI) and serves
whatever this does not take (HEAD, a 405): the functions called here are those routes', with the
one dependency they declare, and an exception becomes the answer app.api.errors maps it to, as
through FastAPI. It sits outside FastAPI's own middlewares (app.main), so it answers what
reaches no handler as their error layer would: the catch-all's 500, then the error raised on
for the server to log."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.deps import webhook_context
from app.services.ingest import WebhookContext

Endpoint = Callable[[Request, WebhookContext], Awaitable[Response]]
ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]


def _endpoint_of(route: APIRoute) -> Endpoint:
    """The route's function, if it is one this path can call as FastAPI would: the request, and
    the webhook context as its one dependency. Anything else is a mistake in the routes."""
    dependant = route.dependant
    calls = [dependency.call for dependency in dependant.dependencies]
    if calls != [webhook_context] or dependant.request_param_name is None:
        raise TypeError(f"{route.path}: the fast path calls (request, webhook context) only")
    endpoint: Endpoint = route.endpoint
    return endpoint


def _handler_for(
    handlers: Mapping[Any, ExceptionHandler], exc: Exception
) -> ExceptionHandler | None:
    """The app's handler for this exception, by its classes nearest first, as Starlette's
    ExceptionMiddleware looks it up; the catch-all (``Exception``) is not among them."""
    for kind in type(exc).__mro__:
        if kind is Exception:
            return None
        handler = handlers.get(kind)
        if handler is not None:
            return handler
    return None


def _catch_all(handlers: Mapping[Any, ExceptionHandler]) -> ExceptionHandler | None:
    """The handler of what no other handles, as Starlette's error layer finds it."""
    return handlers.get(Exception) or handlers.get(500)


class WebhookFastPath:
    """A plain ASGI middleware: a request whose method and path are a webhook route's goes to
    that route's function; any other request goes on to the app."""

    def __init__(self, app: ASGIApp, *, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        self._routes: dict[tuple[str, str], tuple[APIRoute, Endpoint]] = {
            (method, route.path): (route, _endpoint_of(route))
            for route in routes
            if isinstance(route, APIRoute)
            for method in route.methods or ()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = (
            self._routes.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        )
        if found is None:
            await self.app(scope, receive, send)
            return
        route, endpoint = found
        scope["route"] = route  # what the metrics and the access log name the request by
        request = Request(scope, receive)
        try:
            response = await endpoint(request, await webhook_context(request))
        except Exception as exc:
            handlers = scope["app"].exception_handlers
            handled = await _handled(handlers, request, exc)
            if isinstance(handled, Exception):
                catch_all = _catch_all(handlers)
                if catch_all is not None:
                    await (await catch_all(request, handled))(scope, receive, send)
                raise handled from (None if handled is exc else exc)
            response = handled
        await response(scope, receive, send)


async def _handled(
    handlers: Mapping[Any, ExceptionHandler], request: Request, exc: Exception
) -> Response | Exception:
    """The handler's answer to ``exc``, or what is left unhandled: ``exc`` itself when no
    handler takes it, or what its handler raised (the database's does, for a fault of ours)."""
    handler = _handler_for(handlers, exc)
    if handler is None:
        return exc
    try:
        return await handler(request, exc)
    except Exception as raised:
        return raised
