"""GET /v1/reconciliation: what reconciliation does now, in the caller's scope (whether Wavy is
asked, overdue now, given up, recovered today), for the dashboard's panel and operators."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import EngineDep, ScopeDep, SettingsDep
from app.api.errors import OrjsonResponse, responses
from app.api.routing import CheckedRoute
from app.api.schemas import ReconciliationSummary
from app.services import reconcile

router = APIRouter(prefix="/v1/reconciliation", tags=["reconciliation"], route_class=CheckedRoute)


@router.get(
    "",
    summary="Reconciliation now: overdue, given up, recovered today (UTC), in your scope",
    response_model=ReconciliationSummary,
    responses=responses(401, 429, 403, 422, 503),
)
async def reconciliation_summary(
    scope: ScopeDep, engine: EngineDep, settings: SettingsDep
) -> OrjsonResponse:
    return OrjsonResponse(await reconcile.summary(engine, settings, scope))
