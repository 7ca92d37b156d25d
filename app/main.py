"""The ASGI application: routers, error handlers, and the lifespan that owns the engine, the
batching writer and the key cache (``uvicorn app.main:create_app --factory``)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, APIRouter
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.middleware import Middleware
from starlette.types import ASGIApp

from app import metrics
from app.api import (
    dashboard,
    endpoints,
    health,
    optouts,
    receive,
    reconciliation,
    sending,
    stats,
    status,
    webhooks,
)
from app.api.deps import READER_CREDENTIAL_HEADERS
from app.api.direct import DirectWebhooks
from app.api.errors import install_error_handlers
from app.api.fast_path import FastPath
from app.api.middleware import ObserveRequests, RequestObserver
from app.db.engine import (
    KEYS_LISTENER_APPLICATION_NAME,
    SENDS_APPLICATION_NAME,
    create_engine,
    create_forwarder_engine,
    start_embedded_postgres,
    writer_connector,
)
from app.db.key_registry import KeyRegistry
from app.db.notifications import (
    FEEDS_CHANGED_CHANNEL,
    KEYS_CHANGED_CHANNEL,
    KEYWORDS_CHANGED_CHANNEL,
    USERS_CHANGED_CHANNEL,
    follow_changes,
)
from app.db.reader_cache import ReaderCache
from app.db.retention import purge_periodically, retention_ages
from app.db.sending import mt_recorder, optout_lookups
from app.db.stats import fold_stats_periodically
from app.db.writer import BatchWriter
from app.http_protocol import DIRECT_LANE
from app.outbound.forwarder import Forwarder
from app.outbound.reconciler import Reconciler
from app.outbound.wavy import WavyClient
from app.payloads import Callback, Dlr, Mo
from app.services.sending import SendRate
from app.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """
Receives what Wavy (Sinch) sends about SMS — callbacks, DLRs and MOs — stores it durably in
PostgreSQL keyed by message id, and answers `200` only once it is committed.

The read API mirrors Wavy's query API (`/v1/sms/status/...`, `/v1/sms/receive/...`, same
fields, same `UserName` / `AuthenticationToken` headers, admins and sub-account users) without
its retention and rate limits.

Errors always have the shape `{"error": {"code": ..., "message": ..., "details": [...]}}`.
"""


# Young objects collected when their count grows by this much (CPython's default is 700).
# A batch's objects (parsed items, models, records) live until its commit: below this they
# outlived a collection and were walked again in the older generations; at this they die
# first. At most this many small objects wait for a collection: a few MB. (The measurements
# are in bench/results/journal.md.)
GC_YOUNG_THRESHOLD = 100_000


def tune_garbage_collector() -> None:
    """Measured under load (bench.ingest): the objects of the requests in flight and of a batch
    waiting for its commit outnumber CPython's default young-generation threshold, so it
    collected hundreds of times a second for nothing. And what start-up built (routes,
    schemas, the ORM's metadata) lives as long as the process: frozen out of the collector's
    sight, a full collection no longer walks it, which stalled every request a few times a
    minute (the p99). Cycles are still collected."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    settings: Settings = app.state.settings
    database_url = settings.database_url or start_embedded_postgres(settings.data_dir)
    engine = create_engine(settings, database_url)
    writer = BatchWriter.of(settings, writer_connector(settings, database_url))
    registry = KeyRegistry(engine, ttl_s=settings.key_cache_seconds)
    readers = ReaderCache(engine, ttl_s=settings.reader_cache_seconds)
    if settings.open_ingest:
        log.warning("open ingest: webhooks are accepted WITHOUT a key")
    # Only where forwarding runs in the workers (WAVY_FORWARDER; `serve` runs it apart).
    forwarder = None
    if settings.forwarder == "workers":
        forwarder = Forwarder(create_forwarder_engine(settings, database_url), settings)
    await registry.refresh()
    await writer.start()
    if forwarder is not None:
        await forwarder.start()
    app.state.engine, app.state.writer, app.state.key_registry = engine, writer, registry
    app.state.readers, app.state.forwarder = readers, forwarder
    app.state.wavy = WavyClient(settings.api_url, timeout_s=settings.send_timeout_s)
    app.state.send_rate = SendRate(engine, settings.send_max_rps)
    sends_connect = writer_connector(
        settings, database_url, application_name=SENDS_APPLICATION_NAME
    )
    app.state.mt_recorder = mt_recorder(sends_connect)
    app.state.optout_lookups = optout_lookups(sends_connect)
    # In every worker: they share the work and Wavy's pace through PostgreSQL.
    reconciler = app.state.reconciler = Reconciler(engine, writer, settings)
    reconciler.start()
    changes = {
        KEYS_CHANGED_CHANNEL: registry.forget,
        USERS_CHANGED_CHANNEL: readers.forget,
        KEYWORDS_CHANGED_CHANNEL: writer.optout_keywords.forget,
    }
    if forwarder is not None:
        changes[FEEDS_CHANGED_CHANNEL] = forwarder.wake
    background = [
        asyncio.create_task(_sample_gauges(engine, writer), name="sample-gauges"),
        asyncio.create_task(fold_stats_periodically(engine), name="stats-fold"),
        asyncio.create_task(
            follow_changes(
                writer_connector(
                    settings, database_url, application_name=KEYS_LISTENER_APPLICATION_NAME
                ),
                changes,
            ),
            name="key-and-user-changes",
        ),
    ]
    ages = retention_ages(
        settings.retention_age(),
        settings.rejected_retention_age(),
        settings.forward_retention_age(),
    )
    if ages:
        purge = purge_periodically(engine, ages, settings.purge_interval_s)
        background.append(asyncio.create_task(purge, name="retention-purge"))
    tune_garbage_collector()
    try:
        # The server's protocol answers webhooks by this lane (app.http_protocol).
        yield {DIRECT_LANE: DirectWebhooks(app, app.state.observer)}
    finally:
        # Record the attempts in flight, then commit what requests already handed in, before
        # the connections go away.
        if forwarder is not None:
            await forwarder.stop()
        await reconciler.stop()
        await writer.stop()
        await app.state.mt_recorder.stop()
        await app.state.optout_lookups.stop()
        await app.state.wavy.close()
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await engine.dispose()


async def _sample_gauges(engine: AsyncEngine, writer: BatchWriter) -> None:
    """Queue depth and pool use, once a second: cheaper than tracking them per request."""
    pool = engine.sync_engine.pool
    while True:
        checked_out: int = pool.checkedout()  # type: ignore[attr-defined]
        idle: int = pool.checkedin()  # type: ignore[attr-defined]
        metrics.sample_gauges(writer.queued_items, checked_out, checked_out + idle)
        await asyncio.sleep(1.0)


def _openapi_with_payload_schemas(app: FastAPI) -> dict[str, Any]:
    """The webhook routes read raw bytes (to keep the raw payload and control every error), so
    their body schemas are registered here by hand."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    models: list[type[BaseModel]] = [Callback, Dlr, Mo]
    for model in models:
        model_schema = model.model_json_schema(
            by_alias=True, ref_template="#/components/schemas/{model}"
        )
        components.update(model_schema.pop("$defs", {}))
        components[model.__name__] = model_schema
    app.openapi_schema = schema
    return schema


class WebhooksFirstApp(FastAPI):
    """FastAPI, with our middlewares (``outer_middleware``) outside its own (its error layer,
    exception telemetry and body limit). A webhook or a send is answered by app.api.fast_path,
    inside ours and before FastAPI's, whose cost per request was a webhook's largest left;
    every other request passes both."""

    def __init__(self, *, outer_middleware: list[Middleware], **options: Any) -> None:
        super().__init__(**options)
        self.outer_middleware = outer_middleware

    def build_middleware_stack(self) -> ASGIApp:
        app = super().build_middleware_stack()
        for cls, args, kwargs in reversed(self.outer_middleware):
            app = cls(app, *args, **kwargs)
        return app


def request_observer(settings: Settings) -> RequestObserver:
    """How every request is observed (id, metrics, access log), however it is answered."""
    return RequestObserver(
        access_log_enabled=settings.access_log,
        webhooks=settings.access_log_webhooks,
        webhook_routes=[
            route.path for route in webhooks.router.routes if isinstance(route, APIRoute)
        ],
    )


def _outer_middleware(settings: Settings, observer: RequestObserver) -> list[Middleware]:
    """Outermost first: every request is observed (id, metrics, access log), then CORS, then
    the fast path of the webhooks and the sends."""
    outer = [Middleware(ObserveRequests, observer=observer)]
    if settings.cors_origins:
        # Credentials travel in headers, never cookies: no allow_credentials.
        outer.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                allow_headers=[*READER_CREDENTIAL_HEADERS, "Content-Type", "X-Request-ID"],
                expose_headers=["Content-Disposition", "Retry-After", "X-Request-ID"],
                max_age=600,
            )
        )
    outer.append(Middleware(FastPath, routes=[*webhooks.router.routes, *sending.router.routes]))
    return outer


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """The router's routes, added to the app's own list as they are, not included: FastAPI
    keeps an included router whole and walks it again, with bookkeeping for every route it
    passes, on each request; routing cost a send about a tenth of its CPU, and more the later
    its router came (docs/benchmarks.md). A route already carries what its router declared
    (prefix, tags, responses, route class); we pass an include nothing more. A router-level
    dependency is refused: whether FastAPI copies one into each route is its own detail, and
    one dropped (an authentication, say) must stop the app, not go unnoticed."""
    if router.dependencies:
        raise TypeError(f"{router.prefix or '/'}: declare dependencies on each route")
    app.router.routes.extend(router.routes)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The application; settings come from the environment unless given (tests, benchmarks)."""
    settings = settings or Settings()
    otel = settings.opentelemetry
    observer = request_observer(settings)
    app = WebhooksFirstApp(
        outer_middleware=_outer_middleware(settings, observer),
        title="wavy-webhooks",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry hooks look up the global providers on every request (a
        # visible share of a webhook's CPU under py-spy): opt-in only, /metrics is ours.
        telemetry={"tracing": otel, "metrics": otel, "logs": otel},
    )
    app.state.settings, app.state.observer = settings, observer
    install_error_handlers(app)
    for module in (
        health,
        webhooks,
        status,
        receive,
        stats,
        reconciliation,
        endpoints,
        optouts,
        sending,
        dashboard,
    ):
        add_routes(app, module.router)
    app.mount("/static", StaticFiles(directory=dashboard.STATIC_DIR), name="static")
    app.openapi = lambda: _openapi_with_payload_schemas(app)  # type: ignore[method-assign]
    return app
