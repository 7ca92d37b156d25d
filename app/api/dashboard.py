"""The delivery dashboard (one static page and its assets, shipped inside the package, and
where ``/`` leads) and GET /v1/me, which the page asks to know whether to offer the
sub-account choice."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.responses import FileResponse, RedirectResponse

from app.api.deps import ReaderDep
from app.api.errors import OrjsonResponse, responses
from app.api.routing import CheckedRoute

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(route_class=CheckedRoute)

# The page loads only its own scripts, styles and data, and no other site may frame it (a
# framed dashboard could be clicked through by a page the user did not mean to trust).
PAGE_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@router.get("/dashboard", include_in_schema=False)
async def dashboard() -> FileResponse:
    return FileResponse(
        STATIC_DIR / "dashboard.html", media_type="text/html", headers=PAGE_SECURITY_HEADERS
    )


@router.get("/", include_in_schema=False)
async def home() -> RedirectResponse:
    """The address a person types first: the dashboard."""
    return RedirectResponse("/dashboard", status_code=307)


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> FileResponse:
    """Browsers ask for it on every page; an SVG they all draw."""
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")


class Me(BaseModel):
    userName: str
    role: str
    subAccount: str | None


@router.get(
    "/v1/me",
    tags=["users"],
    summary="Who the credentials belong to (role and sub-account)",
    response_model=Me,
    responses=responses(401, 429, 503),
)
async def who_am_i(reader: ReaderDep) -> OrjsonResponse:
    return OrjsonResponse(
        {"userName": reader.username, "role": reader.role.value, "subAccount": reader.sub_account}
    )
