"""wavy-webhooks rejected: bodies the webhooks refused, listed, shown and replayed."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.cli.common import (
    resolve_database_url,
    run_with_connection,
    run_with_engine,
)
from app.cli.root import rejected_cli
from app.db import rejected
from app.settings import Settings


@rejected_cli.command("list")
def rejected_list(
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 50,
) -> None:
    """List refused bodies, newest first, with the reason and a preview."""
    settings = Settings()

    async def fetch(conn: AsyncConnection) -> list[rejected.RejectedRow]:
        return await rejected.list_rejected_bodies(conn, limit=limit)

    rows = run_with_connection(settings, resolve_database_url(settings), fetch)
    for row in rows:
        preview = row.body[:60].decode("utf-8", "replace").replace("\n", " ")
        more = "… (truncated)" if row.body_truncated else ("…" if len(row.body) > 60 else "")
        typer.echo(
            f"#{row.id} {row.received_at.isoformat(timespec='seconds')} {row.method} "
            f"/{row.endpoint} {row.status_code} {row.reason} "
            f"sub-account={row.sub_account or '-'} {len(row.body)}B  {preview}{more}"
            + (f" [refused {row.repeats} more time(s)]" if row.repeats else "")
            + (" [replayed]" if row.replayed_at else "")
        )
    if not rows:
        typer.echo("no rejected bodies")


@rejected_cli.command("show")
def rejected_show(
    rejected_id: Annotated[int, typer.Argument(help="Id from `rejected list`")],
) -> None:
    """Write one refused body, byte for byte, to standard output."""
    settings = Settings()

    async def fetch(conn: AsyncConnection) -> bytes | None:
        return await rejected.get_rejected_body(conn, rejected_id)

    body = run_with_connection(settings, resolve_database_url(settings), fetch)
    if body is None:
        typer.echo(f"no rejected body #{rejected_id}", err=True)
        raise typer.Exit(1)
    sys.stdout.buffer.write(body)


@rejected_cli.command("replay")
def rejected_replay(
    ids: Annotated[
        list[int] | None, typer.Argument(help="Ids from `rejected list`", show_default=False)
    ] = None,
    replay_all: Annotated[
        bool, typer.Option("--all", help="Every rejected body not replayed yet")
    ] = False,
) -> None:
    """Ingest refused bodies again (after a fix), as if they had just been accepted, with their
    original receive time. Bodies still refused stay where they are; exit code 1 if any."""
    if bool(ids) == replay_all:
        typer.echo("give rejected-body ids or --all (not both)", err=True)
        raise typer.Exit(2)
    settings = Settings()

    async def run(engine: AsyncEngine) -> list[rejected.ReplayResult]:
        chosen = ids or await rejected.pending_rejected_ids(engine)
        return [
            await rejected.replay_rejected(
                engine, rejected_id, max_items=settings.max_items, region=settings.default_region
            )
            for rejected_id in chosen
        ]

    results = run_with_engine(settings, resolve_database_url(settings), run)
    for result in results:
        if result.outcome == "stored":
            line = f"stored ({result.stored} new, {result.duplicates} already stored)"
        elif result.outcome == "still_refused":
            line = f"still refused: {result.reason}"
        elif result.outcome == "cut_off":
            line = "not replayable: only the start of the body was kept"
        else:
            line = "no such rejected body"
        typer.echo(f"#{result.rejected_id} {line}")
    if not results:
        typer.echo("nothing to replay")
    if any(result.outcome != "stored" for result in results):
        raise typer.Exit(1)
