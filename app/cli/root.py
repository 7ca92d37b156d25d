"""The ``wavy-webhooks`` command itself: its groups of sub-commands and ``--version``."""

from __future__ import annotations

from importlib.metadata import version
from typing import Annotated

import typer

cli = typer.Typer(
    help="Receiver for Wavy SMS callbacks, DLRs and MOs, stored in PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"wavy-webhooks {version('wavy-webhooks')}")
        raise typer.Exit()


@cli.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Receiver for Wavy SMS callbacks, DLRs and MOs, stored in PostgreSQL."""


keys_cli = typer.Typer(help="Webhook keys (one per sub-account; pasted into Wavy's portal).")
rejected_cli = typer.Typer(help="Rejected bodies: bodies the webhooks refused, kept raw.")
users_cli = typer.Typer(help="Read-API users: admins see every sub-account, users their own.")
stats_cli = typer.Typer(help="The delivery statistics' rollup, checked against the stored rows.")
endpoints_cli = typer.Typer(
    help="Downstream endpoints: every reply and status change pushed, signed, retried."
)
optouts_cli = typer.Typer(
    help="Opt-out lists: numbers that replied SAIR or STOP (or were added), and the keywords."
)
cli.add_typer(keys_cli, name="keys", no_args_is_help=True)
cli.add_typer(optouts_cli, name="optouts", no_args_is_help=True)
cli.add_typer(endpoints_cli, name="endpoints", no_args_is_help=True)
cli.add_typer(rejected_cli, name="rejected", no_args_is_help=True)
cli.add_typer(users_cli, name="users", no_args_is_help=True)
cli.add_typer(stats_cli, name="stats", no_args_is_help=True)
