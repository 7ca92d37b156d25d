"""The hottest routes' requests straight to their endpoint function, past FastAPI's router, its
dependency solver and its per-request wrappers: the webhooks (Wavy's bursts) and the sends
(each client's traffic). Those layers cost more than a webhook's own work, and a tenth of a
send's (docs/benchmarks.md).

The routes stay declared on their routers, which document them (OpenAPI) and serve whatever
this does not take (HEAD, a 405): the functions called here are those routes', with the one
dependency a webhook route declares (the webhook context) or none, and an exception becomes
the answer app.api.errors maps it to, as through FastAPI. It sits outside FastAPI's own
middlewares (app.main), so it answers what reaches no handler as their error layer would: the
catch-all's 500, then the error raised on for the server to log."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.deps import webhook_context
from app.services.ingest import WebhookContext

Endpoint = Callable[[Request], Awaitable[Response]]
WebhookEndpoint = Callable[[Request, WebhookContext], Awaitable[Response]]
ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]


def _endpoint_of(route: APIRoute) -> Endpoint:
    """The route's function as this path calls it, if it is one this path can call as FastAPI
    would: it takes the request, and the webhook context as its one dependency or nothing
    more. Anything else is a mistake in the routes."""
    dependant = route.dependant
    calls = [dependency.call for dependency in dependant.dependencies]
    parameters = (
        dependant.path_params,
        dependant.query_params,
        dependant.header_params,
        dependant.cookie_params,
        dependant.body_params,
    )
    if (
        dependant.request_param_name is None
        or calls not in ([], [webhook_context])
        or any(parameters)
        or not inspect.iscoroutinefunction(route.endpoint)
    ):
        raise TypeError(
            f"{route.path}: the fast path calls (request) or (request, webhook context) only"
        )
    if not calls:
        endpoint: Endpoint = route.endpoint
        return endpoint
    webhook: WebhookEndpoint = route.endpoint

    async def with_context(request: Request) -> Response:
        return await webhook(request, await webhook_context(request))

    return with_context


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


def catch_all(handlers: Mapping[Any, ExceptionHandler]) -> ExceptionHandler | None:
    """The handler of what no other handles, as Starlette's error layer finds it."""
    return handlers.get(Exception) or handlers.get(500)


class FastPath:
    """A plain ASGI middleware: a request whose method and path are one of ``routes`` goes to
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
            response = await endpoint(request)
        except Exception as exc:
            handlers = scope["app"].exception_handlers
            answer, unhandled = await error_answer(handlers, request, exc)
            if unhandled is not None:
                if answer is not None:
                    await answer(scope, receive, send)
                raise unhandled from (None if unhandled is exc else exc)
            assert answer is not None  # a handler's answer, when nothing is left unhandled
            response = answer
        await response(scope, receive, send)


async def error_answer(
    handlers: Mapping[Any, ExceptionHandler], request: Request, exc: Exception
) -> tuple[Response | None, Exception | None]:
    """The answer the app's handlers give ``exc``, and what was left unhandled: ``exc``, or
    what its handler raised. That one is answered by the catch-all (which logs it), as
    Starlette's error layer would; None if the app has no catch-all."""
    answer = await handled(handlers, request, exc)
    if not isinstance(answer, Exception):
        return answer, None
    last_resort = catch_all(handlers)
    return (await last_resort(request, answer) if last_resort else None), answer


async def handled(
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
