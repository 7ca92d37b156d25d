"""Forwarding endpoints over HTTP, with the read API's credentials: a user manages their own
sub-account's endpoints, an admin any (the work is app.services.endpoints's)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from app.api.deps import EngineDep, ReaderDep, ScopeDep
from app.api.errors import OrjsonResponse, responses
from app.api.paging import Limit
from app.api.routing import CheckedRoute, body_cap
from app.api.schemas import (
    AttemptPage,
    EndpointCreated,
    EndpointIn,
    EndpointOut,
    EndpointPatch,
    ReplayIn,
    ReplayQueued,
    SecretRotated,
)
from app.rules.scope import Scope, resolve_scope
from app.services import endpoints as service
from app.settings import Settings

router = APIRouter(prefix="/v1/endpoints", tags=["forwarding"], route_class=CheckedRoute)

RESPONSES = responses(400, 401, 403, 404, 422, 429, 503)
# A URL of up to 2,048 characters, a sub-account and the event types, with room to spare.
ENDPOINT_BODY_BYTES = 16 * 1024
REPLAY_BODY_BYTES = 1024
EndpointId = Annotated[int, Path(ge=1, le=2**31 - 1)]


async def authority(reader: ReaderDep) -> Scope:
    """What the caller may manage: everything (admins) or their sub-account's."""
    return resolve_scope(reader, None)


AuthorityDep = Annotated[Scope, Depends(authority)]


def sub_account_in_body_only(request: Request) -> None:
    """An endpoint's sub-account is its body's ``subAccount``. A ``?subAccount=``, which
    narrows every read, would otherwise be ignored here: an admin meaning one sub-account's
    endpoint would register one that receives every sub-account's data."""
    if "subAccount" in request.query_params:
        raise RequestValidationError(
            [
                {
                    "type": "extra_forbidden",
                    "loc": ("query", "subAccount"),
                    "msg": "an endpoint's sub-account goes in the body's subAccount",
                    "input": request.query_params["subAccount"],
                }
            ]
        )


NO_QUERY_SCOPE = [Depends(sub_account_in_body_only)]


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


@router.post(
    "",
    status_code=201,
    summary="Register an endpoint; the answer holds its signing secret, shown only now",
    response_model=EndpointCreated,
    responses=RESPONSES,
    openapi_extra=body_cap(ENDPOINT_BODY_BYTES),
    dependencies=NO_QUERY_SCOPE,
)
async def create_endpoint(
    wanted: EndpointIn,
    request: Request,
    reader: ReaderDep,
    allowed: AuthorityDep,
    engine: EngineDep,
) -> OrjsonResponse:
    created = await service.create_endpoint(
        engine, _settings(request), allowed, reader.username, wanted.as_new()
    )
    return OrjsonResponse(created, status_code=201)


@router.get(
    "",
    summary="The endpoints the caller manages, with their health",
    response_model=list[EndpointOut],
    responses=RESPONSES,
)
async def list_endpoints(scope: ScopeDep, engine: EngineDep) -> OrjsonResponse:
    return OrjsonResponse(await service.list_endpoints(engine, scope))


@router.get("/{endpoint_id}", response_model=EndpointOut, responses=RESPONSES)
async def show_endpoint(
    endpoint_id: EndpointId, allowed: AuthorityDep, engine: EngineDep
) -> OrjsonResponse:
    return OrjsonResponse(await service.show_endpoint(engine, allowed, endpoint_id))


@router.patch(
    "/{endpoint_id}",
    summary="Change its URL or events, disable it, or enable it (it resumes where it stopped)",
    response_model=EndpointOut,
    responses=RESPONSES,
    openapi_extra=body_cap(ENDPOINT_BODY_BYTES),
    dependencies=NO_QUERY_SCOPE,
)
async def change_endpoint(
    endpoint_id: EndpointId,
    patch: EndpointPatch,
    request: Request,
    allowed: AuthorityDep,
    engine: EngineDep,
) -> OrjsonResponse:
    changed = await service.change_endpoint(
        engine, _settings(request), allowed, endpoint_id, patch.as_changes()
    )
    return OrjsonResponse(changed)


@router.delete(
    "/{endpoint_id}",
    status_code=204,
    summary="Remove it, with its deliveries and attempts",
    responses=RESPONSES,
)
async def remove_endpoint(
    endpoint_id: EndpointId, allowed: AuthorityDep, engine: EngineDep
) -> Response:
    await service.remove_endpoint(engine, allowed, endpoint_id)
    return Response(status_code=204)


@router.get(
    "/{endpoint_id}/attempts",
    summary="Its delivery attempts, newest first",
    response_model=AttemptPage,
    responses=RESPONSES,
)
async def list_attempts(
    endpoint_id: EndpointId,
    allowed: AuthorityDep,
    engine: EngineDep,
    limit: Limit = 100,
    cursor: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="`next` of the previous page")
    ] = None,
) -> OrjsonResponse:
    return OrjsonResponse(await service.list_attempts(engine, allowed, endpoint_id, cursor, limit))


@router.post(
    "/{endpoint_id}/replay",
    status_code=202,
    summary="Send again every delivery made since a time (under their original webhook ids)",
    response_model=ReplayQueued,
    responses=RESPONSES,
    openapi_extra=body_cap(REPLAY_BODY_BYTES),
)
async def replay(
    endpoint_id: EndpointId, wanted: ReplayIn, allowed: AuthorityDep, engine: EngineDep
) -> OrjsonResponse:
    queued = await service.replay(engine, allowed, endpoint_id, wanted.since)
    return OrjsonResponse(queued, status_code=202)


@router.post(
    "/{endpoint_id}/rotate-secret",
    summary="A new signing secret; the old one keeps signing too for WAVY_FORWARD_SECRET_OVERLAP",
    response_model=SecretRotated,
    responses=RESPONSES,
)
async def rotate_secret(
    endpoint_id: EndpointId, request: Request, allowed: AuthorityDep, engine: EngineDep
) -> OrjsonResponse:
    rotated = await service.rotate_secret(engine, _settings(request), allowed, endpoint_id)
    return OrjsonResponse(rotated)
