"""wavy-webhooks reconcile: what reconciliation does now (whether Wavy is asked, overdue, given
up, recovered today), and one pass on demand."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from app.cli.common import reconciliation_line, resolve_database_url, run_with_engine
from app.cli.root import cli
from app.db.engine import writer_connector
from app.db.writer import BatchWriter
from app.outbound.reconciler import Pass
from app.rules.scope import Scope
from app.services import reconcile as service
from app.settings import Settings


@cli.command()
def reconcile(
    now: Annotated[
        bool,
        typer.Option(
            "--now",
            help="Run one pass first: look for what became overdue and, when the shared pace "
            "allows, ask Wavy about what is due",
        ),
    ] = False,
) -> None:
    """Reconciliation's state: whether Wavy is asked, the MTs whose callback or DLR is
    overdue, those given up, and the statuses recovered today (UTC). Safe while the service
    runs: a pass shares Wavy's pace with its workers."""
    settings = Settings()
    database_url = resolve_database_url(settings)

    async def run(engine: AsyncEngine) -> tuple[Pass | None, dict[str, Any]]:
        done = None
        if now:
            writer = BatchWriter.of(settings, writer_connector(settings, database_url))
            await writer.start()
            try:
                done = await service.run_now(engine, writer, settings)
            finally:
                await writer.stop()
        return done, await service.summary(engine, settings, Scope(None))

    done, summary = run_with_engine(settings, database_url, run)
    typer.echo(reconciliation_line(settings))
    if done is not None:
        typer.echo(
            f"pass: {done.added} newly overdue, {done.asked} asked of Wavy"
            + (f" (answered {done.wavy_status})" if done.wavy_status else "")
            + f", {done.recovered} recovered, {done.given_up} given up"
        )
        for problem in done.problems:
            typer.echo(f"  {problem}")
    typer.echo(f"{'':22}{'callback':>10}{'dlr':>10}")
    typer.echo(
        f"{'overdue, asked':22}{summary['overdue']['callback']:>10}{summary['overdue']['dlr']:>10}"
    )
    typer.echo(
        f"{'given up':22}{summary['givenUp']['callback']:>10}{summary['givenUp']['dlr']:>10}"
    )
    typer.echo(f"recovered today (UTC): {summary['recoveredToday']}")
    spared = ", ".join(settings.reconcile_no_dlr_carriers)
    typer.echo(
        f"overdue after: callback {settings.reconcile_callback_after:g} s, DLR "
        f"{settings.reconcile_dlr_after:g} s (not from {spared}); "
        f"given up after {settings.reconcile_window}"
    )
    if summary.get("backoffSeconds"):
        typer.echo(
            f"Wavy answered 429 or 5xx: backing off {summary['backoffSeconds']:g} s, no request "
            f"before {summary['nextAskAt']}"
        )
    typer.echo("the messages: GET /v1/sms/status/overdue?kind=callback|dlr")
