"""The ``wavy-webhooks`` command itself: its groups of sub-commands and ``--version``.

Help is written in Markdown mode: a docstring's paragraph is one paragraph however its source
lines break, and a command's line in a list is its first sentence. A group run bare prints
its help and exits 0 (asking what a group does is no error)."""

from __future__ import annotations

from importlib.metadata import version
from typing import Annotated, Literal

import typer

HELP_MODE: Literal["markdown"] = "markdown"


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"wavy-webhooks {version('wavy-webhooks')}")
        raise typer.Exit()


def _help_when_bare(context: typer.Context) -> None:
    if context.invoked_subcommand is None:
        typer.echo(context.get_help())
        raise typer.Exit(0)


def group(help_text: str) -> typer.Typer:
    """A group of commands that prints its help when run bare."""
    made = typer.Typer(
        help=help_text,
        rich_markup_mode=HELP_MODE,
        invoke_without_command=True,
        add_completion=False,
    )
    made.callback()(_help_when_bare)
    return made


cli = typer.Typer(
    help="Receiver for Wavy SMS callbacks, DLRs and MOs, stored in PostgreSQL.",
    rich_markup_mode=HELP_MODE,
    invoke_without_command=True,
    add_completion=False,
)


@cli.callback()
def _options(
    context: typer.Context,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Receiver for Wavy SMS callbacks, DLRs and MOs, stored in PostgreSQL."""
    _help_when_bare(context)


keys_cli = group("Webhook keys (one per sub-account; pasted into Wavy's portal).")
rejected_cli = group("Rejected bodies: bodies the webhooks refused, kept raw.")
users_cli = group("Read-API users: admins see every sub-account, users their own.")
stats_cli = group("The delivery statistics' rollup, checked against the stored rows.")
endpoints_cli = group(
    "Downstream endpoints: every reply and status change pushed, signed, retried."
)
optouts_cli = group(
    "Opt-out lists: numbers that replied SAIR or STOP (or were added), and the keywords."
)
cli.add_typer(keys_cli, name="keys")
cli.add_typer(optouts_cli, name="optouts")
cli.add_typer(endpoints_cli, name="endpoints")
cli.add_typer(rejected_cli, name="rejected")
cli.add_typer(users_cli, name="users")
cli.add_typer(stats_cli, name="stats")
