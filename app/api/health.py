"""For operators and load balancers: liveness, readiness and Prometheus metrics (no
credentials: nothing here reveals stored data)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.errors import ApiError, OrjsonResponse, responses
from app.api.routing import CheckedRoute
from app.db.migrate import SchemaState, head_revision, schema_state
from app.db.queries import database_state
from app.metrics import render_metrics

router = APIRouter(tags=["operations"], route_class=CheckedRoute)

# /readyz must answer fast even when the database hangs: a load balancer's probe times out.
READINESS_TIMEOUT_S = 2.0


@router.get("/healthz", summary="Liveness: the process is up and serving")
async def healthz() -> OrjsonResponse:
    return OrjsonResponse({"status": "ok"})


def _not_ready(message: str) -> ApiError:
    return ApiError(503, "not_ready", message, headers={"Retry-After": "5"})


@router.get(
    "/readyz",
    summary=(
        "Readiness: the database answers and its schema is at this code's migrations' head "
        "(or a newer release's)"
    ),
    responses=responses(503),
)
async def readyz(request: Request) -> OrjsonResponse:
    state = request.app.state
    if state.writer.stopping:
        raise _not_ready("shutting down")
    database = await database_state(state.engine, timeout_s=READINESS_TIMEOUT_S)
    if database is None:
        raise _not_ready("the database does not answer")
    revision = database.revision
    if not database.writable:
        raise _not_ready("the database is read-only (a standby?): webhooks cannot be stored")
    state_of_schema, expected = schema_state(revision), head_revision()
    if state_of_schema is SchemaState.AHEAD:
        # A newer release has migrated and is rolling out: this replica keeps serving until it
        # is replaced (migrations keep the release before them working, docs/operations.md),
        # rather than every old replica leaving the load balancer at once.
        note = f"newer than this code's {expected}: a newer release has migrated"
        return OrjsonResponse({"status": "ready", "schema": revision, "note": note})
    if state_of_schema is not SchemaState.CURRENT:
        raise _not_ready(f"database schema at {revision}, this code needs {expected}")
    return OrjsonResponse({"status": "ready", "schema": revision})


@router.get("/metrics", summary="Prometheus metrics (all workers)", response_class=Response)
async def metrics() -> Response:
    body, content_type = render_metrics()
    return Response(body, media_type=content_type)
