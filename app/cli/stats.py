"""wavy-webhooks stats: the delivery statistics' rollup against the stored rows."""

from __future__ import annotations

from datetime import UTC
from typing import Annotated

import typer

from app.cli.common import (
    resolve_database_url,
    run_with_connection,
)
from app.cli.root import stats_cli
from app.db import stats
from app.settings import Settings


def _print_rollup_differences(differences: list[stats.RollupDifference], limit: int) -> None:
    typer.echo(
        f"{'sub-account':16}  {'hour':16}  {'campaign':12}  {'carrier':10}  {'metric':18}  "
        f"{'value':>6}  {'kept':>8}  {'counted':>8}"
    )
    for d in differences[:limit]:
        typer.echo(
            f"{d.sub_account or '-':16}  {d.hour.astimezone(UTC):%Y-%m-%dT%H:%M}  "
            f"{d.campaign_id or '-':12}  {d.carrier_name or '-':10}  {d.metric:18}  "
            f"{d.value:>6}  {d.kept:>8}  {d.counted:>8}"
        )
    if len(differences) > limit:
        typer.echo(f"... and {len(differences) - limit} more")


@stats_cli.command("verify")
def stats_verify(
    show: Annotated[int, typer.Option(help="List at most this many differences")] = 20,
) -> None:
    """Compare the stats rollup with a count of the stored messages and replies (reads them
    all; safe while the service runs). Exits 1 if any count differs."""
    settings = Settings()
    differences = run_with_connection(
        settings, resolve_database_url(settings), stats.rollup_differences
    )
    if not differences:
        typer.echo("the stats rollup equals a count of the stored rows")
        return
    typer.echo(f"{len(differences)} rollup count(s) differ from the stored rows:")
    _print_rollup_differences(differences, show)
    typer.echo("wavy-webhooks stats repair corrects them")
    raise typer.Exit(1)


@stats_cli.command("repair")
def stats_repair() -> None:
    """Correct every rollup count that differs from a count of the stored rows (safe while the
    service runs: no writer waits for it)."""
    settings = Settings()
    repaired = run_with_connection(settings, resolve_database_url(settings), stats.repair_rollup)
    typer.echo(f"{repaired} rollup count(s) corrected")
