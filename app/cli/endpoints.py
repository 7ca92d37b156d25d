"""wavy-webhooks endpoints: the downstream endpoints every reply and status change is pushed
to (the same service as /v1/endpoints, with an operator's authority over all of them)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api.schemas import EndpointIn, EndpointPatch
from app.cli.common import resolve_database_url, run_with_engine
from app.cli.root import endpoints_cli
from app.errors import EndpointNotFound, EndpointUrlRefused
from app.payloads import as_utc
from app.rules.forwarding import EVENT_TYPES
from app.rules.scope import Scope
from app.services import endpoints as service
from app.settings import Settings

OPERATOR = Scope(sub_account=None)
EndpointId = Annotated[int, typer.Argument(help="The endpoint's id (endpoints list)")]
CREATED_BY = "cli"


def _run(work: Any) -> Any:
    """``work(engine, settings)`` with one-line errors for what an operator can get wrong."""
    settings = Settings()

    async def call(engine: AsyncEngine) -> Any:
        return await work(engine, settings)

    try:
        return run_with_engine(settings, resolve_database_url(settings), call)
    except EndpointNotFound:
        typer.echo("no such endpoint", err=True)
        raise typer.Exit(1) from None
    except EndpointUrlRefused as error:
        typer.echo(f"refused: {error}", err=True)
        raise typer.Exit(2) from None


@endpoints_cli.command("add")
def endpoints_add(
    url: Annotated[str, typer.Argument(help="Where to POST each event")],
    sub_account: Annotated[
        str | None,
        typer.Option("--sub-account", help="Only this sub-account's data (default: everyone's)"),
    ] = None,
    events: Annotated[str, typer.Option(help="Comma-separated event types")] = ",".join(
        EVENT_TYPES
    ),
) -> None:
    """Register an endpoint and print its id and signing secret (shown only now)."""
    try:
        wanted = EndpointIn(
            url=url,
            subAccount=sub_account,
            events=[name.strip() for name in events.split(",") if name.strip()],
        )
    except ValidationError as error:
        typer.echo(f"invalid endpoint: {error.errors()[0]['msg']}", err=True)
        raise typer.Exit(2) from None

    async def add(engine: AsyncEngine, settings: Settings) -> dict[str, Any]:
        return await service.create_endpoint(
            engine, settings, OPERATOR, CREATED_BY, wanted.as_new()
        )

    created = _run(add)
    typer.echo(f"endpoint #{created['id']} created: {created['url']}")
    typer.echo(f"  receives: {', '.join(created['events'])}")
    typer.echo(f"  sub-account: {created['subAccount'] or '(all)'}")
    typer.echo(f"  signing secret: {created['secret']}")
    typer.echo("The secret is shown only now; verify each delivery with it (Standard Webhooks).")


@endpoints_cli.command("list")
def endpoints_list() -> None:
    """Every endpoint with its health."""

    async def listing(engine: AsyncEngine, _settings: Settings) -> list[dict[str, Any]]:
        return await service.list_endpoints(engine, OPERATOR)

    typer.echo(
        f"{'id':>4}  {'state':9}  {'backlog':>7}  {'retrying':>8}  {'failed':>6}  "
        f"{'sub-account':14}  {'last success':20}  {'failing since':20}  {'next retry':20}  url"
    )
    for item in _run(listing):
        state = f"disabled ({item['disabledReason']})" if item["disabled"] else "enabled"
        typer.echo(
            f"{item['id']:>4}  {state:9}  {item['backlog']:>7}  {item['retrying']:>8}  "
            f"{item['failed']:>6}  {item['subAccount'] or '(all)':14}  "
            f"{_short(item['lastSuccessAt']):20}  {_short(item['failingSince']):20}  "
            f"{_short(item['nextAttemptAt']):20}  {item['url']}"
        )


def _short(moment: str | None) -> str:
    return moment[:19] if moment else "-"


def _change(endpoint_id: int, patch: EndpointPatch) -> dict[str, Any]:
    async def change(engine: AsyncEngine, settings: Settings) -> dict[str, Any]:
        return await service.change_endpoint(
            engine, settings, OPERATOR, endpoint_id, patch.as_changes()
        )

    changed: dict[str, Any] = _run(change)
    return changed


@endpoints_cli.command("disable")
def endpoints_disable(
    endpoint_id: EndpointId,
) -> None:
    """Stop sending to it; what is stored meanwhile waits for enable."""
    _change(endpoint_id, EndpointPatch(disabled=True))
    typer.echo(f"endpoint #{endpoint_id} disabled")


@endpoints_cli.command("enable")
def endpoints_enable(endpoint_id: EndpointId) -> None:
    """Send to it again, from where it stopped."""
    _change(endpoint_id, EndpointPatch(disabled=False))
    typer.echo(f"endpoint #{endpoint_id} enabled")


@endpoints_cli.command("remove")
def endpoints_remove(endpoint_id: EndpointId) -> None:
    """Remove it, with its deliveries and attempts."""

    async def remove(engine: AsyncEngine, _settings: Settings) -> None:
        await service.remove_endpoint(engine, OPERATOR, endpoint_id)

    _run(remove)
    typer.echo(f"endpoint #{endpoint_id} removed")


@endpoints_cli.command("replay")
def endpoints_replay(
    endpoint_id: EndpointId,
    since: Annotated[
        str, typer.Option(help="ISO-8601 (UTC unless it says): every delivery made since then")
    ],
) -> None:
    """Send again everything delivered (or given up on) since a time, as new deliveries."""
    try:
        moment: datetime = as_utc(datetime.fromisoformat(since))
    except ValueError:
        typer.echo(f"--since: {since!r} is not an ISO-8601 time", err=True)
        raise typer.Exit(2) from None

    async def replay(engine: AsyncEngine, _settings: Settings) -> dict[str, Any]:
        return await service.replay(engine, OPERATOR, endpoint_id, moment)

    queued = _run(replay)["queued"]
    typer.echo(f"{queued} deliveries queued again for endpoint #{endpoint_id}")


@endpoints_cli.command("attempts")
def endpoints_attempts(
    endpoint_id: EndpointId,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
) -> None:
    """Its latest attempts, newest first."""

    async def attempts(engine: AsyncEngine, _settings: Settings) -> dict[str, Any]:
        return await service.list_attempts(engine, OPERATOR, endpoint_id, None, limit)

    typer.echo(f"{'attempted at':24}  {'webhook id':28}  {'result':>8}  {'ms':>6}  answer")
    for item in _run(attempts)["items"]:
        result = str(item["statusCode"]) if item["statusCode"] is not None else "error"
        answer = item["error"] or (item["response"] or "")
        typer.echo(
            f"{item['attemptedAt']:24}  {item['webhookId']:28}  {result:>8}  "
            f"{item['latencyMs']:>6}  {answer[:60]!r}"
        )


@endpoints_cli.command("rotate-secret")
def endpoints_rotate_secret(
    endpoint_id: EndpointId,
) -> None:
    """A new signing secret; the old one keeps signing too for WAVY_FORWARD_SECRET_OVERLAP."""

    async def rotate(engine: AsyncEngine, settings: Settings) -> dict[str, Any]:
        return await service.rotate_secret(engine, settings, OPERATOR, endpoint_id)

    rotated = _run(rotate)
    typer.echo(f"new signing secret: {rotated['secret']}")
    typer.echo(f"the previous one also signs until {rotated['previousSecretValidUntil']}")
